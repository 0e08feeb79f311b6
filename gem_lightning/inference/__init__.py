"""Inference from a trained checkpoint: the Python API and export."""
