"""The compiled extension aegaeon._C, imported after torch (it links libtorch)."""

import torch  # noqa: F401  -- loads libc10/libtorch before the extension

from aegaeon import _C  # noqa: E402

__all__ = ["_C"]
