"""The model the engine benchmarks use when none is given."""

from __future__ import annotations

from pathlib import Path

BENCH_CONFIG = dict(
    arch="llama", layers=4, hidden=512, heads=8, kv_heads=4, intermediate=1408, vocab=8192
)


def default_bench_model(root: Path) -> Path:
    """A ~20M-parameter model, big enough that copies dominate fixed costs on a CPU."""
    from aegaeon.models.maker import config_for, make_model

    path = root / "bench-llama-20m"
    if not (path / "config.json").is_file():
        make_model(path, config_for(**BENCH_CONFIG), seed=0)
    return path
