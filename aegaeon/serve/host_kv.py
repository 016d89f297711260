"""The share of a node's host KV cache that receives KV blocks from other nodes.

Prefill workers each own a partition of the node's host KV segment (they
allocate from it; decode workers release back to it). In a multi-node cluster
the node keeps one more partition for imports: KV blocks that arrive over the
TCP link are written here, from a slab allocator of their block size, before a
local decode worker swaps them in, and freed when that worker releases them.
Exports read a local prefill worker's blocks into bytes for the link.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np

from aegaeon.errors import OutOfBlocksError
from aegaeon.ipc.messages import KvPayload, SwapIn
from aegaeon.ipc.shm import SharedSegment
from aegaeon.native import _C

log = logging.getLogger(__name__)


class HostKvArea:
    def __init__(self, segment: SharedSegment, imports: tuple[int, int], slab_bytes: int):
        self.segment = segment
        self.start, self.end = imports
        self.allocator = _C.SlabAllocator((self.end - self.start) // slab_bytes, slab_bytes)
        self.bytes = segment.as_numpy("uint8", (segment.size,))

    def owns(self, handle: int) -> bool:
        return self.start <= handle < self.end

    def read(self, handles: tuple[int, ...], block_bytes: int) -> bytes:
        """The blocks at `handles` (anywhere in the segment), concatenated."""
        return b"".join(self.bytes[h:h + block_bytes].tobytes() for h in handles)

    def write(self, data: bytes, block_bytes: int) -> tuple[int, ...]:
        """Store `data` as blocks of `block_bytes` in the import partition; OutOfBlocksError (nothing kept) when full."""
        count = len(data) // block_bytes
        taken: list[int] = []
        try:
            for _ in range(count):
                taken.append(self.allocator.allocate(block_bytes))
        except OutOfBlocksError:
            for handle in taken:
                self.allocator.free(handle)
            raise
        handles = tuple(self.start + h for h in taken)
        blocks = np.frombuffer(data, dtype=np.uint8, count=count * block_bytes).reshape(count, block_bytes)
        for block, handle in zip(blocks, handles):
            self.bytes[handle:handle + block_bytes] = block
        return handles

    def free(self, handles: tuple[int, ...]) -> None:
        for handle in handles:
            self.allocator.free(handle - self.start)


def store_arrivals(area: HostKvArea, pending: list[KvPayload],
                   wanted: Callable[[KvPayload], bool]) -> Iterator[tuple[KvPayload, SwapIn]]:
    """Write KV that arrived over the link into the import partition, oldest first, while it has room; yields
    each stored payload with the SwapIn that hands it to its decode worker. Payloads no longer `wanted`
    (request or worker gone) are dropped; the rest wait in `pending` for room (back-pressure)."""
    while pending:
        payload = pending[0]
        if not wanted(payload):
            pending.pop(0)
            continue
        try:
            handles = area.write(payload.data, payload.block_bytes)
        except OutOfBlocksError:
            log.info("host KV import partition full: %d handoffs wait for room", len(pending))
            return
        pending.pop(0)
        yield payload, SwapIn(payload.request_id, payload.model, handles, payload.num_tokens, payload.generated,
                              payload.sampler_state, payload.block_bytes)
