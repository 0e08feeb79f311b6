"""Data loading and the embedded synthetic gem dataset."""
