"""Builds aegaeon and its extension aegaeon._C (pybind11 + torch cpp_extension, ninja).

Install with `pip install --no-build-isolation -e .` after torch is installed, so
the build uses the torch already present (the CPU wheel on CI) and never pulls
another one.
"""

import importlib.util
import os
import sys
from pathlib import Path

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).resolve().parent
# one place for the version: aegaeon/__init__.py (what `aegaeon --version` prints)
_version = next(
    line.split('"')[1]
    for line in (ROOT / "aegaeon" / "__init__.py").read_text().splitlines()
    if line.startswith("__version__")
)
_spec = importlib.util.spec_from_file_location("aegaeon_build", ROOT / "aegaeon" / "_build.py")
_build = importlib.util.module_from_spec(_spec)
sys.modules["aegaeon_build"] = _build  # dataclasses look their module up here
_spec.loader.exec_module(_build)

plan = _build.plan_build(
    torch.version.cuda, _build.find_nvcc(), os.environ.get("AEGAEON_BUILD_CUDA")
)
print(f"aegaeon: building the extension with CUDA={plan.with_cuda} ({plan.reason})")

# -g0: Python's own CFLAGS carry -g, which made the objects 10x larger and the link slower; AEGAEON_DEBUG=1
# keeps debug info for gdb.
cxx_flags = ["-O3", "-std=c++17"] + ([] if os.environ.get("AEGAEON_DEBUG") == "1" else ["-g0"])
# The extension links this torch's C++ ABI: the package asks for the same release (aegaeon.native checks it
# again at import, for a torch changed after the install).
torch_release = ".".join(torch.__version__.split("+")[0].split(".")[:2])
if plan.with_cuda:
    extension = CUDAExtension(
        "aegaeon._C",
        list(plan.sources),
        define_macros=[("AEGAEON_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17"]},
    )
else:
    extension = CppExtension(
        "aegaeon._C", list(plan.sources), extra_compile_args={"cxx": cxx_flags}
    )

SHIPPED_DEVICES = ("H100", "H800", "H20", "A100", "A10")  # profiles/<device>/ in version control

setup(
    name="aegaeon",
    version=_version,
    description="Serve many LLMs on a shared GPU pool with token-level auto-scaling",
    packages=find_packages(include=["aegaeon", "aegaeon.*"]) + ["aegaeon._profiles"],
    # the top-level profiles/ ships inside the package as aegaeon/_profiles (aegaeon.profiles finds either);
    # only the devices in version control, not the cpu-* profiles benchmarks write on the building machine
    package_dir={"aegaeon._profiles": "profiles"},
    package_data={
        "aegaeon": ["data/*.csv"],
        "aegaeon._profiles": [f"{d}/*.json" for d in SHIPPED_DEVICES],
    },
    python_requires=">=3.10",
    install_requires=[
        f"torch=={torch_release}.*",
        "numpy>=1.24",
        "click>=8.1",
        "safetensors>=0.4",
        "posix_ipc>=1.1",
        "msgpack>=1.0",
        "tokenizers>=0.21",  # encode_batch_fast (releases the GIL, skips offsets)
        "fastapi>=0.110",
        "pydantic>=2",  # the API's request schema (aegaeon/serve/api_schema.py)
        "httpx>=0.27",  # aegaeon bench http / stall / chaos drive the API as a client does
        "uvicorn>=0.29",
        "pyyaml>=6",  # pool files (aegaeon serve --config)
        "jinja2>=3.1",
        "pyzmq>=25",
        "prometheus_client>=0.20",  # /metrics: the exposition format, HELP text and label escaping
    ],
    extras_require={
        "plot": ["matplotlib>=3.7"],
        "test": [
            "pytest>=7",
            "transformers>=4.40",
            "openai>=1.0",
            "hypothesis>=6",
            "matplotlib>=3.7",
        ],
    },
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    entry_points={
        "console_scripts": [
            "aegaeon=aegaeon.cli:main",
            "aegaeon-launch=aegaeon.launch:main",
        ]
    },
)
