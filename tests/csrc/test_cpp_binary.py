"""Builds and runs the C++ test binary of the slab allocator (csrc/tests/)."""

import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[2] / "csrc"


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_cpp_slab_allocator_tests_pass(tmp_path):
    binary = tmp_path / "test_slab_allocator"
    subprocess.run(
        [
            "g++",
            "-std=c++17",
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
            str(CSRC / "tests" / "test_slab_allocator.cpp"),
            str(CSRC / "slab_allocator.cpp"),
            "-o",
            str(binary),
        ],
        check=True,
    )
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("passed, 0 failed")
