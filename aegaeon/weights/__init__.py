"""Checkpoints: validation, the packed weight layout and the host weight cache."""
