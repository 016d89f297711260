"""The build switch that decides whether CUDA sources are compiled."""

import shutil
import subprocess
from pathlib import Path

import pytest

from aegaeon._build import CUDA_SOURCES, find_nvcc, plan_build

CSRC = Path(__file__).resolve().parents[2] / "csrc"


def test_cpu_torch_builds_cpp_only():
    plan = plan_build(None, "/usr/local/bin/nvcc")
    assert not plan.with_cuda
    assert not any(s.endswith(".cu") for s in plan.sources)
    assert "torch has no CUDA" in plan.reason


def test_cuda_torch_with_nvcc_adds_the_cuda_sources():
    plan = plan_build("13.0", "/usr/local/cuda/bin/nvcc")
    assert plan.with_cuda
    assert {f"csrc/{s}" for s in CUDA_SOURCES} <= set(plan.sources)


def test_cuda_torch_without_nvcc_falls_back_to_cpu():
    assert not plan_build("13.0", None).with_cuda


def test_forcing_cuda_without_a_toolchain_is_an_error():
    with pytest.raises(ValueError, match="AEGAEON_BUILD_CUDA=1"):
        plan_build(None, None, force="1")
    with pytest.raises(ValueError, match="invalid"):
        plan_build("13.0", "nvcc", force="yes")
    assert not plan_build("13.0", "nvcc", force="0").with_cuda


def test_every_listed_source_exists():
    for source in plan_build("13.0", "nvcc").sources:
        assert (CSRC.parent / source).is_file(), source


@pytest.mark.skipif(find_nvcc() is None, reason="nvcc not installed")
def test_cuda_sources_compile_with_nvcc(tmp_path):
    for source in CUDA_SOURCES:
        subprocess.run(
            [find_nvcc(), "-std=c++17", "-c", str(CSRC / source), "-o", str(tmp_path / "probe.o")],
            check=True,
            timeout=300,
        )
        assert (tmp_path / "probe.o").stat().st_size > 0


def test_nvcc_lookup_prefers_cuda_home(tmp_path):
    fake = tmp_path / "bin" / "nvcc"
    fake.parent.mkdir()
    fake.write_text("")
    assert find_nvcc(str(tmp_path)) == str(fake)
    assert find_nvcc(str(tmp_path / "missing")) == shutil.which("nvcc")
