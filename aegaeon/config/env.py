"""Every environment variable aegaeon reads, in one place (flags override them; they override defaults).

| variable | meaning |
| --- | --- |
| AEGAEON_TTFT_SLO, AEGAEON_TPOT_SLO | the SLOs in seconds (default 10 and 0.1) |
| AEGAEON_HOME | where demo and benchmark models are made (default ~/.cache/aegaeon) |
| AEGAEON_PROFILES | the profiles folder (default: the shipped one) |
| AEGAEON_LOG_FILE | send the log there instead of stderr |
| AEGAEON_TOKEN | the cluster token of `--head` / `--join` |
| AEGAEON_API_KEY | the API key of `aegaeon serve` |
| HF_HUB_CACHE, HF_HOME | where hub-style model ids are looked up (never downloaded) |

Build time only (read by setup.py and aegaeon/_build.py, before the package exists): AEGAEON_BUILD_CUDA
(1/0: force or skip the CUDA sources), AEGAEON_DEBUG=1 (keep debug info in the extension), CUDA_HOME or
CUDA_PATH (where nvcc is).
"""

from __future__ import annotations

import os
from pathlib import Path

from aegaeon.errors import ConfigError

VARIABLES = (
    "AEGAEON_TTFT_SLO",
    "AEGAEON_TPOT_SLO",
    "AEGAEON_HOME",
    "AEGAEON_PROFILES",
    "AEGAEON_LOG_FILE",
    "AEGAEON_TOKEN",
    "AEGAEON_API_KEY",
    "HF_HUB_CACHE",
    "HF_HOME",
)


def env_str(name: str) -> str | None:
    if name not in VARIABLES:
        raise ConfigError(f"{name} is not a documented aegaeon variable (aegaeon.config.env)")
    value = os.environ.get(name)
    return value if value else None


def env_float(name: str, default: float) -> float:
    raw = env_str(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a number") from exc


def aegaeon_home() -> Path:
    return Path(env_str("AEGAEON_HOME") or Path.home() / ".cache" / "aegaeon")


def hub_cache() -> Path:
    """The local Hugging Face hub cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else ~/.cache/huggingface/hub)."""
    explicit = env_str("HF_HUB_CACHE")
    if explicit:
        return Path(explicit)
    home = env_str("HF_HOME")
    return Path(home) / "hub" if home else Path.home() / ".cache" / "huggingface" / "hub"
