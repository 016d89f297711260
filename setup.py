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
_spec = importlib.util.spec_from_file_location("aegaeon_build", ROOT / "aegaeon" / "_build.py")
_build = importlib.util.module_from_spec(_spec)
sys.modules["aegaeon_build"] = _build  # dataclasses look their module up here
_spec.loader.exec_module(_build)

plan = _build.plan_build(torch.version.cuda, _build.find_nvcc(), os.environ.get("AEGAEON_BUILD_CUDA"))
print(f"aegaeon: building the extension with CUDA={plan.with_cuda} ({plan.reason})")

cxx_flags = ["-O3", "-std=c++17"]
if plan.with_cuda:
    extension = CUDAExtension(
        "aegaeon._C",
        list(plan.sources),
        define_macros=[("AEGAEON_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17"]},
    )
else:
    extension = CppExtension("aegaeon._C", list(plan.sources), extra_compile_args={"cxx": cxx_flags})

setup(
    name="aegaeon",
    version="0.1.0",
    description="Serve many LLMs on a shared GPU pool with token-level auto-scaling",
    packages=find_packages(include=["aegaeon", "aegaeon.*"]),
    package_data={"aegaeon": ["data/*.csv", "data/profiles/*.json"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "numpy>=1.24",
        "click>=8.1",
        "safetensors>=0.4",
        "posix_ipc>=1.1",
        "msgpack>=1.0",
        "pybind11>=2.12",
        "ninja>=1.11",
        "matplotlib>=3.7",
        "tokenizers>=0.21",  # encode_batch_fast (releases the GIL, skips offsets)
        "fastapi>=0.110",
        "uvicorn>=0.29",
        "pyyaml>=6",  # pool files (aegaeon serve --config)
        "jinja2>=3.1",
        "pyzmq>=25",
    ],
    extras_require={"test": ["pytest>=7", "transformers>=4.40", "openai>=1.0", "httpx>=0.27", "hypothesis>=6"]},
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    entry_points={
        "console_scripts": [
            "aegaeon=aegaeon.cli:main",
            "aegaeon-launch=aegaeon.launch:main",
        ]
    },
)
