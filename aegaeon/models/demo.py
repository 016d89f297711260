"""The embedded demo pool: three tiny models of two shapes, made on first use.

They live under `$AEGAEON_HOME/demo-models` (default `~/.cache/aegaeon`) and
are never downloaded. A directory is written under a temporary name and
renamed when complete, so an interrupted first run never leaves a half model.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from aegaeon.config.env import aegaeon_home
from aegaeon.models.config import ArchConfig
from aegaeon.models.maker import config_for, make_model

log = logging.getLogger(__name__)

DEMO_MODELS: dict[str, tuple[ArchConfig, int]] = {
    "demo-llama-a": (
        config_for("llama", layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=512),
        1,
    ),
    "demo-llama-b": (
        config_for("llama", layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=512),
        2,
    ),
    "demo-qwen": (
        config_for("qwen2", layers=3, hidden=96, heads=6, kv_heads=2, intermediate=192, vocab=640),
        3,
    ),
}
DEMO_PROMPTS = ("the model serves many requests", "hot and cold models share one pool")


def demo_models(root: Path | None = None) -> dict[str, Path]:
    """Paths of the demo models, making any that are missing."""
    root = root or aegaeon_home() / "demo-models"
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (config, seed) in DEMO_MODELS.items():
        path = root / name
        if not (path / "config.json").is_file():
            partial = root / f".{name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            make_model(partial, config, seed=seed)
            shutil.rmtree(path, ignore_errors=True)
            partial.rename(path)
            log.info("made demo model %s in %s", name, path)
        paths[name] = path
    return paths
