"""KV blocks of live sequences in the arena, and their swap to host memory.

Each model's sequences take blocks of that model's size from the shared slab
pool. When the pool is short, or a larger model's weights need the slabs a
block sits in, whole sequences are swapped out to host memory and swapped
back in before they next run. Each swap is one `BlockSwapper` copy of all the
sequence's blocks (a worker thread on CPU, one kernel on a side stream on GPU),
ordered before any later use of the blocks or the host copy.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from aegaeon.arena import Arena
from aegaeon.device_link import DeviceLink
from aegaeon.errors import OutOfBlocksError
from aegaeon.kv.layout import KVLayout
from aegaeon.kv.swap import BlockSwapper, SwapTicket
from aegaeon.sequence import SeqStatus, Sequence

log = logging.getLogger(__name__)

SWAP_LOG_LENGTH = 4096  # swaps kept for whoever reads them (benchmarks); older ones are dropped


@dataclass(frozen=True)
class SwapRecord:
    """One finished KV swap: `kind` is out/in (preemption) or export/import (host KV cache handoff)."""

    kind: str
    seq_id: int
    model: str
    nbytes: int
    seconds: float


class KVCacheManager:
    def __init__(self, arena: Arena, link: DeviceLink | None = None):
        self.arena = arena
        self.swapper = BlockSwapper(arena.device, link)
        self.owner: dict[int, Sequence] = {}  # block handle -> sequence
        self.swapped_bytes = 0
        self._in_flight: list[tuple[str, Sequence, SwapTicket]] = []
        self._finished: deque[SwapRecord] = deque(maxlen=SWAP_LOG_LENGTH)
        # with residency (aegaeon.engine.runner): frees slabs held by resident weights when no block is free,
        # returning False when nothing more can go; KV has priority over resident models
        self.reclaim: Callable[[], bool] | None = None

    def finished_swaps(self) -> list[SwapRecord]:
        """Swaps whose copies have completed since the last call, with their measured copy times."""
        self._collect()
        done = list(self._finished)
        self._finished.clear()
        return done

    def _collect(self) -> None:
        still = []
        for kind, seq, ticket in self._in_flight:
            if ticket.done():
                self._finished.append(
                    SwapRecord(kind, seq.seq_id, seq.model, ticket.nbytes, ticket.seconds() or 0.0)
                )
            else:
                still.append((kind, seq, ticket))
        self._in_flight = still

    def _copy(
        self,
        kind: str,
        seq: Sequence,
        src: torch.Tensor,
        src_offsets: list[int],
        dst: torch.Tensor,
        dst_offsets: list[int],
        block_bytes: int,
    ) -> SwapTicket:
        self._collect()
        ticket = self.swapper.copy(src, src_offsets, dst, dst_offsets, block_bytes)
        self._in_flight.append((kind, seq, ticket))
        self.swapped_bytes += ticket.nbytes
        return ticket

    def grow(self, seq: Sequence, num_tokens: int, layout: KVLayout) -> None:
        """Give `seq` blocks for `num_tokens` tokens; raises OutOfBlocksError (nothing taken) when short."""
        needed = layout.blocks_needed(num_tokens) - len(seq.blocks)
        taken: list[int] = []
        try:
            while len(taken) < needed:
                try:
                    taken.append(self.arena.allocate_block(layout.block_bytes))
                except OutOfBlocksError:
                    if self.reclaim is None or not self.reclaim():
                        raise
        except OutOfBlocksError:
            for handle in taken:
                self.arena.free_block(handle)
            raise
        seq.blocks.extend(taken)
        self.owner.update({handle: seq for handle in taken})

    def release(self, seq: Sequence) -> None:
        for handle in seq.blocks:
            self.arena.free_block(handle)
            del self.owner[handle]
        seq.blocks = []
        seq.host_kv = None

    def swap_out(self, seq: Sequence, layout: KVLayout) -> None:
        """Copy the sequence's blocks to host memory and free them."""
        if not seq.blocks:
            seq.status = SeqStatus.SWAPPED if seq.num_cached else seq.status
            return
        block = layout.block_bytes
        host = torch.empty(
            len(seq.blocks) * block, dtype=torch.uint8, pin_memory=self.arena.device.type == "cuda"
        )
        ticket = self._copy(
            "out",
            seq,
            self.arena.buffer,
            seq.blocks,
            host,
            [i * block for i in range(len(seq.blocks))],
            block,
        )
        ticket.wait()
        if ticket.event is not None:
            ticket.event.synchronize()  # the host copy may be read by the CPU next
        self.release(seq)
        seq.host_kv = host
        seq.status = SeqStatus.SWAPPED
        log.debug("swapped out seq %d (%d bytes)", seq.seq_id, host.numel())

    def swap_in(self, seq: Sequence, layout: KVLayout) -> None:
        """Bring a swapped sequence's KV back into fresh blocks (OutOfBlocksError when short)."""
        host = seq.host_kv
        if host is None:
            seq.status = SeqStatus.RUNNING
            return
        block = layout.block_bytes
        self.grow(seq, host.numel() // block * layout.block_size, layout)
        self._copy(
            "in",
            seq,
            host,
            [i * block for i in range(len(seq.blocks))],
            self.arena.buffer,
            seq.blocks,
            block,
        ).wait()
        seq.host_kv = None
        seq.status = SeqStatus.RUNNING

    def export_blocks(
        self, seq: Sequence, layout: KVLayout, host: torch.Tensor, host_offsets: list[int]
    ) -> None:
        """Copy the sequence's blocks to `host` (a 1-D uint8 buffer) at `host_offsets`; keeps its blocks.

        Returns once the bytes are in host memory: another process reads them next."""
        ticket = self._copy(
            "export", seq, self.arena.buffer, seq.blocks, host, host_offsets, layout.block_bytes
        )
        ticket.wait()
        if ticket.event is not None:
            ticket.event.synchronize()

    def import_blocks(
        self,
        seq: Sequence,
        layout: KVLayout,
        host: torch.Tensor,
        host_offsets: list[int],
        num_tokens: int,
    ) -> None:
        """Give `seq` blocks for `num_tokens` tokens and fill them from `host` (OutOfBlocksError when short)."""
        self.grow(seq, num_tokens, layout)
        self._copy(
            "import", seq, host, host_offsets, self.arena.buffer, seq.blocks, layout.block_bytes
        ).wait()

    def apply_moves(self, moved: dict[int, int]) -> None:
        """Re-point sequences at blocks the arena relocated (their bytes were copied)."""
        for old, new in moved.items():
            seq = self.owner.pop(old)
            seq.blocks[seq.blocks.index(old)] = new
            self.owner[new] = seq

    def owners_of(self, handles: tuple[int, ...]) -> list[Sequence]:
        seen: dict[int, Sequence] = {}
        for handle in handles:
            seq = self.owner[handle]
            seen[seq.seq_id] = seq
        return list(seen.values())
