"""The models the engine benchmarks use when none is given, made on first use."""

from __future__ import annotations

from pathlib import Path

BENCH_CONFIG = dict(
    arch="llama", layers=4, hidden=512, heads=8, kv_heads=4, intermediate=1408, vocab=8192
)
# a decoder deep enough that one layer is a small share of a copy, as in a real checkpoint (16 layers; the
# embedding and head are 12 % of the bytes): what `bench layerwise` measures on
DEEP_CONFIG = dict(
    arch="llama", layers=16, hidden=256, heads=8, kv_heads=4, intermediate=768, vocab=4096
)


def _made(path: Path, config: dict) -> Path:
    from aegaeon.models.maker import config_for, make_model

    if not (path / "config.json").is_file():
        make_model(path, config_for(**config), seed=0)
    return path


def default_bench_model(root: Path) -> Path:
    """A ~20M-parameter model, big enough that copies dominate fixed costs on a CPU."""
    return _made(root / "bench-llama-20m", BENCH_CONFIG)


def deep_bench_model(root: Path) -> Path:
    """A 15M-parameter, 16-layer model (layer-wise readiness)."""
    return _made(root / "bench-llama-deep", DEEP_CONFIG)
