"""Callbacks: cross-cutting concerns of a run (predictions, reports, timing, backbone freezing)."""
