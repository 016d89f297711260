"""Measurements behind `aegaeon bench ...`; figures go to benchmarks/RESULTS.md."""
