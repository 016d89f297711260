"""One partition of a node's host KV cache: a byte range of the shared segment with its own slab allocator.

The node's host KV segment (`/dev/shm`) is cut into partitions: one per prefill worker (its prefilled
requests' KV waits there for a decode worker) and, in a multi-node cluster, one for KV arriving over the
TCP link. Only the partition's owner allocates from it; a handle is a byte offset into the whole segment,
so any process of the node that maps the segment can read the blocks. Allocation is all-or-nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np

from aegaeon.errors import InvalidHandleError, OutOfBlocksError
from aegaeon.native import _C

T = TypeVar("T")


class HostKvPartition:
    def __init__(self, segment_bytes: np.ndarray, span: tuple[int, int], slab_bytes: int):
        """`segment_bytes`: the whole segment as uint8; `span`: [start, end) of this partition in it."""
        self.bytes = segment_bytes
        self.start, self.end = span
        if not 0 <= self.start <= self.end <= len(segment_bytes):
            raise InvalidHandleError(
                f"partition {span} lies outside the {len(segment_bytes)}-byte segment"
            )
        self.allocator = _C.SlabAllocator((self.end - self.start) // slab_bytes, slab_bytes)

    def owns(self, handle: int) -> bool:
        return self.start <= handle < self.end

    def allocate(self, count: int, block_bytes: int) -> tuple[int, ...]:
        """`count` blocks of `block_bytes`, as segment offsets; OutOfBlocksError (nothing kept) when short."""
        taken: list[int] = []
        try:
            for _ in range(count):
                taken.append(self.allocator.allocate(block_bytes))
        except OutOfBlocksError:
            for handle in taken:
                self.allocator.free(handle)
            raise
        return tuple(self.start + h for h in taken)

    def free(self, handles: tuple[int, ...] | list[int]) -> None:
        for handle in handles:
            if not self.owns(handle):
                raise InvalidHandleError(
                    f"host KV handle {handle} is not in partition [{self.start}, {self.end})"
                )
            self.allocator.free(handle - self.start)

    def read(self, handles: tuple[int, ...], block_bytes: int) -> bytes:
        """The blocks at `handles` (anywhere in the segment), concatenated."""
        return b"".join(self.bytes[h : h + block_bytes].tobytes() for h in handles)

    def write(self, data: bytes, block_bytes: int) -> tuple[int, ...]:
        """Store `data` as blocks of `block_bytes`; OutOfBlocksError (nothing kept) when the partition is full."""
        count = len(data) // block_bytes
        handles = self.allocate(count, block_bytes)
        blocks = np.frombuffer(data, dtype=np.uint8, count=count * block_bytes).reshape(
            count, block_bytes
        )
        for block, handle in zip(blocks, handles):
            self.bytes[handle : handle + block_bytes] = block
        return handles


def store_in_order(
    partition: HostKvPartition,
    pending: list[T],
    wanted: Callable[[T], bool],
    data_of: Callable[[T], tuple[bytes, int]],
) -> Iterator[tuple[T, tuple[int, ...]]]:
    """Write pending payloads into `partition`, oldest first, while it has room; yields each with its handles.
    Payloads no longer `wanted` are dropped; the rest stay in `pending` until room is freed (back-pressure)."""
    while pending:
        item = pending[0]
        if not wanted(item):
            pending.pop(0)
            continue
        data, block_bytes = data_of(item)
        try:
            handles = partition.write(data, block_bytes)
        except OutOfBlocksError:
            return
        pending.pop(0)
        yield item, handles
