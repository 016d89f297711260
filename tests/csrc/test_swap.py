"""KV block gather/scatter (`_C.copy_blocks`) against a plain torch reference, byte for byte."""

import random
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

from aegaeon._build import find_cuda_include, find_nvcc
from aegaeon.kv.swap import BlockSwapper
from aegaeon.native import _C

CSRC = Path(__file__).resolve().parents[2] / "csrc"


def _reference(src, src_off, dst, dst_off, block):
    out = dst.clone()
    for s, d in zip(src_off, dst_off):
        out[d : d + block] = src[s : s + block]
    return out


@pytest.mark.parametrize("block", [1, 7, 256, 4096, 65536 + 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_cpu_copy_blocks_equals_the_torch_reference(block, seed):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(0, 256, (block * 40,), dtype=torch.uint8, generator=gen)
    dst = torch.randint(0, 256, (block * 50,), dtype=torch.uint8, generator=gen)
    count = 17
    src_off = [s * block for s in rng.sample(range(40), count)]
    dst_off = [s * block for s in rng.sample(range(50), count)]
    expected = _reference(src, src_off, dst, dst_off, block)
    _C.copy_blocks(src, torch.tensor(src_off), dst, torch.tensor(dst_off), block)
    assert torch.equal(dst, expected)


def test_unaligned_offsets_copy_exactly():
    src = torch.arange(1000, dtype=torch.int64).to(torch.uint8)
    dst = torch.zeros(1000, dtype=torch.uint8)
    _C.copy_blocks(src, torch.tensor([3, 501]), dst, torch.tensor([10, 777]), 13)
    assert torch.equal(
        dst, _reference(src, [3, 501], torch.zeros(1000, dtype=torch.uint8), [10, 777], 13)
    )


def test_bad_arguments_name_the_value_and_leave_the_destination_untouched():
    src = torch.zeros(100, dtype=torch.uint8)
    dst = torch.ones(100, dtype=torch.uint8)
    with pytest.raises(
        IndexError, match="destination offset 90 .* exceeds the buffer of 100 bytes"
    ):
        _C.copy_blocks(src, torch.tensor([0, 10]), dst, torch.tensor([0, 90]), 20)
    with pytest.raises(IndexError, match="source offset -1"):
        _C.copy_blocks(src, torch.tensor([-1]), dst, torch.tensor([0]), 4)
    assert torch.equal(dst, torch.ones(100, dtype=torch.uint8))
    with pytest.raises(ValueError, match="block_bytes must be positive, got 0"):
        _C.copy_blocks(src, torch.tensor([0]), dst, torch.tensor([0]), 0)
    with pytest.raises(ValueError, match="equal length"):
        _C.copy_blocks(src, torch.tensor([0, 4]), dst, torch.tensor([0]), 4)
    with pytest.raises(ValueError, match="1-D uint8"):
        _C.copy_blocks(src.float(), torch.tensor([0]), dst, torch.tensor([0]), 4)


def test_cpu_swapper_copies_asynchronously_and_wait_orders_the_caller():
    src = torch.randint(0, 256, (1 << 20,), dtype=torch.uint8)
    dst = torch.zeros(1 << 20, dtype=torch.uint8)
    swapper = BlockSwapper("cpu")
    offsets = [i * 4096 for i in range(256)]
    ticket = swapper.copy(src, offsets, dst, list(reversed(offsets)), 4096)
    ticket.wait()
    assert ticket.done() and ticket.nbytes == 256 * 4096
    assert torch.equal(
        dst,
        _reference(
            src, offsets, torch.zeros(1 << 20, dtype=torch.uint8), list(reversed(offsets)), 4096
        ),
    )
    swapper.close()


@pytest.mark.skipif(_C.built_with_cuda(), reason="CUDA build: registration works there")
def test_page_locking_without_cuda_says_what_is_missing():
    with pytest.raises(RuntimeError, match="needs a CUDA build"):
        _C.register_host_memory(torch.zeros(10, dtype=torch.uint8).data_ptr(), 10)


@pytest.mark.skipif(
    not torch.cuda.is_available() or not _C.built_with_cuda(), reason="needs a GPU and a CUDA build"
)
def test_gpu_gather_and_scatter_equal_the_cpu_path_byte_for_byte():
    rng = random.Random(3)
    block = 16384 + 48
    arena_cpu = torch.randint(0, 256, (block * 64,), dtype=torch.uint8)
    arena = arena_cpu.cuda()
    handles = [s * block for s in rng.sample(range(64), 20)]
    host_offsets = [i * block for i in range(20)]
    host = torch.zeros(20 * block, dtype=torch.uint8).pin_memory()
    swapper = BlockSwapper("cuda")
    ticket = swapper.copy(arena, handles, host, host_offsets, block)
    ticket.wait()
    ticket.event.synchronize()
    expected = torch.zeros(20 * block, dtype=torch.uint8)
    _C.copy_blocks(arena_cpu, torch.tensor(handles), expected, torch.tensor(host_offsets), block)
    assert torch.equal(host, expected)
    back = torch.zeros_like(arena)
    swapper.copy(host, host_offsets, back, handles, block).wait()
    torch.cuda.synchronize()
    ref = torch.zeros_like(arena_cpu)
    _C.copy_blocks(expected, torch.tensor(host_offsets), ref, torch.tensor(handles), block)
    assert torch.equal(back.cpu(), ref)


@pytest.mark.skipif(
    find_nvcc() is None or shutil.which("g++") is None, reason="needs nvcc's CUDA headers and g++"
)
def test_the_cuda_branch_of_swap_cpp_compiles(tmp_path):
    from torch.utils.cpp_extension import include_paths

    cuda_include = find_cuda_include()
    if cuda_include is None:
        pytest.skip("CUDA toolkit headers not found")
    # The CPU wheel of torch ships the c10/cuda headers but not the one header CMake
    # generates for CUDA builds; it only declares that c10_cuda is a shared library.
    generated = tmp_path / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    generated.parent.mkdir(parents=True)
    generated.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    includes = [f"-I{p}" for p in include_paths()] + [
        f"-I{tmp_path}",
        f"-I{cuda_include}",
        f"-I{sysconfig.get_paths()['include']}",
    ]
    subprocess.run(
        [
            "g++",
            "-std=c++17",
            "-fsyntax-only",
            "-DAEGAEON_WITH_CUDA=1",
            *includes,
            str(CSRC / "swap.cpp"),
        ],
        check=True,
        timeout=600,
    )
