"""Build-time decisions for the C++/CUDA extension, importable without torch.

setup.py loads this file by path; tests import it to check the switch.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

CSRC = Path(__file__).resolve().parent.parent / "csrc"
CPP_SOURCES = ("slab_allocator.cpp", "arena.cpp", "swap.cpp", "bindings.cpp")
CUDA_SOURCES = ("cuda_probe.cu", "swap_kernels.cu")


@dataclass(frozen=True)
class BuildPlan:
    with_cuda: bool
    sources: tuple[str, ...]
    reason: str


def find_nvcc(cuda_home: str | None = None) -> str | None:
    """Path of nvcc under CUDA_HOME, else on PATH, else None."""
    home = (
        cuda_home
        if cuda_home is not None
        else os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    )
    if home and (Path(home) / "bin" / "nvcc").is_file():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def find_cuda_include(nvcc: str | None = None) -> Path | None:
    """The CUDA toolkit's include folder (CUDA_HOME, beside nvcc, or /usr/local/cuda), None if absent."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = nvcc or find_nvcc()
    if nvcc:
        homes.append(str(Path(nvcc).resolve().parents[1]))
    homes.append("/usr/local/cuda")
    for home in filter(None, homes):
        if (Path(home) / "include" / "cuda_runtime_api.h").is_file():
            return Path(home) / "include"
    return None


def plan_build(
    torch_cuda_version: str | None, nvcc: str | None, force: str | None = None
) -> BuildPlan:
    """Decide whether the CUDA sources are compiled.

    CUDA is built when torch was built with CUDA and nvcc exists, unless
    AEGAEON_BUILD_CUDA (`force`) says "0" or "1". Forcing "1" without both is
    an error, because the result could not load.
    """
    cpp = tuple(f"csrc/{s}" for s in CPP_SOURCES)
    cuda = tuple(f"csrc/{s}" for s in CUDA_SOURCES)
    if force not in (None, "", "0", "1"):
        raise ValueError(f"AEGAEON_BUILD_CUDA={force!r} is invalid: use 0, 1 or leave it unset")
    if force == "0":
        return BuildPlan(False, cpp, "AEGAEON_BUILD_CUDA=0")
    have_both = torch_cuda_version is not None and nvcc is not None
    if force == "1" and not have_both:
        missing = "torch without CUDA" if torch_cuda_version is None else "no nvcc found"
        raise ValueError(
            f"AEGAEON_BUILD_CUDA=1 but {missing}: install a CUDA torch and the CUDA toolkit"
        )
    if have_both:
        return BuildPlan(True, cpp + cuda, f"torch CUDA {torch_cuda_version}, nvcc at {nvcc}")
    why = "torch has no CUDA" if torch_cuda_version is None else "nvcc not found"
    return BuildPlan(False, cpp, f"CPU-only build: {why}")
