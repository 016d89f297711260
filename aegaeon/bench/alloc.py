"""Slab allocator throughput: C++ loop, Python calls into C++, plain Python free list.

Each variant keeps `live` blocks allocated and replaces one per pair (free then
allocate), so every pair does the same bookkeeping work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class AllocBenchResult:
    pairs: int
    cpp_pairs_per_s: float
    python_binding_pairs_per_s: float
    python_freelist_pairs_per_s: float

    @property
    def binding_vs_freelist(self) -> float:
        return self.python_binding_pairs_per_s / self.python_freelist_pairs_per_s

    @property
    def cpp_vs_freelist(self) -> float:
        return self.cpp_pairs_per_s / self.python_freelist_pairs_per_s


class PythonFreeList:
    """The baseline: one list of free block offsets for a single block size."""

    def __init__(self, num_blocks: int, block_bytes: int):
        self.free = [i * block_bytes for i in reversed(range(num_blocks))]

    def allocate(self) -> int:
        return self.free.pop()

    def release(self, handle: int) -> None:
        self.free.append(handle)


def _pairs_per_s(pairs: int, seconds: float) -> float:
    return pairs / max(seconds, 1e-12)


def run_alloc_bench(
    pairs: int = 1_000_000,
    live: int = 1024,
    block_bytes: int = 16384,
    slab_bytes: int = 2 * 1024 * 1024,
    num_slabs: int = 256,
) -> AllocBenchResult:
    from aegaeon.native import _C

    allocator = _C.SlabAllocator(num_slabs, slab_bytes)
    cpp_s = _C.bench_alloc_free_pairs(allocator, block_bytes, pairs, live)

    handles = [allocator.allocate(block_bytes) for _ in range(live)]
    allocate, release = allocator.allocate, allocator.free
    start = time.perf_counter()
    for i in range(pairs):
        slot = i % live
        release(handles[slot])
        handles[slot] = allocate(block_bytes)
    binding_s = time.perf_counter() - start
    for h in handles:
        release(h)

    freelist = PythonFreeList(num_slabs * (slab_bytes // block_bytes), block_bytes)
    handles = [freelist.allocate() for _ in range(live)]
    allocate_fl, release_fl = freelist.allocate, freelist.release
    start = time.perf_counter()
    for i in range(pairs):
        slot = i % live
        release_fl(handles[slot])
        handles[slot] = allocate_fl()
    freelist_s = time.perf_counter() - start

    return AllocBenchResult(
        pairs,
        _pairs_per_s(pairs, cpp_s),
        _pairs_per_s(pairs, binding_s),
        _pairs_per_s(pairs, freelist_s),
    )
