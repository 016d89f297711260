"""The compiled extension aegaeon._C, imported after torch (it links libtorch).

The extension is tied to the torch it was compiled against (C++ ABI and symbols). A different torch either
fails to load it (missing symbols) or loads it and misbehaves, so both cases stop here with one instruction.
"""

import torch

from aegaeon.errors import ConfigError

_REBUILD = "reinstall aegaeon against the torch you have: pip install --no-build-isolation -e . (or the wheel for it)"

try:
    from aegaeon import _C
except ImportError as err:
    raise ImportError(
        f"aegaeon._C does not load with torch {torch.__version__} ({err}): {_REBUILD}"
    ) from err


def check_torch_release(built_with: str, running: str) -> None:
    """ConfigError unless both versions are the same major.minor release (local tags such as +cpu aside)."""

    def release(version: str) -> tuple[str, ...]:
        return tuple(version.split("+")[0].split(".")[:2])

    if release(built_with) != release(running):
        raise ConfigError(
            f"aegaeon._C was built against torch {built_with}, but torch {running} is installed: "
            f"{_REBUILD}"
        )


check_torch_release(_C.built_with_torch, torch.__version__)

__all__ = ["_C"]
