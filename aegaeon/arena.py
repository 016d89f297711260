"""Memory unification: one arena per device for weights and the KV cache.

The arena is one byte buffer (CPU or GPU). Its first slabs hold the weights of
the model in place; the rest are handed out as KV blocks by the C++ slab
allocator, one block size per slab, so KV caches of models of different shapes
share the buffer. Parameters and blocks are tensor views into the buffer:
switching models copies bytes and re-points views; nothing is reallocated.

Placing a model larger than the last one moves the weight boundary up. KV
blocks in the way are moved to free slabs when there is room; the rest are
reported in `WeightPlacement.needs_swap` so the caller can swap them out to
host memory, free them and place again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from aegaeon.config.serving import DEFAULT_SLAB_BYTES
from aegaeon.errors import ArenaTooSmallError, InvalidHandleError
from aegaeon.native import _C


@dataclass(frozen=True)
class WeightPlacement:
    """Outcome of placing a weight region of `weight_bytes` bytes."""

    weight_bytes: int
    moved: dict[int, int] = field(default_factory=dict)  # old -> new handle of relocated KV blocks
    needs_swap: tuple[int, ...] = ()  # live KV handles still inside the weight region

    @property
    def ready(self) -> bool:
        return not self.needs_swap


@dataclass(frozen=True)
class ArenaUsage:
    """What /metrics reports about one device arena (bytes unless named)."""

    device: str
    total_bytes: int
    slab_bytes: int
    weight_bytes: int
    weight_region_bytes: int
    kv_used_bytes: int
    # includes resident_bytes: resident weights give way to KV on demand (KV has priority)
    kv_free_bytes: int
    resident_bytes: int  # slabs holding resident models' weights
    internal_fragmentation_bytes: int
    external_fragmentation_bytes: int
    slabs_per_block_size: dict[int, int]


class Arena:
    """A device buffer shared by the weights in place and the KV blocks."""

    def __init__(
        self,
        total_bytes: int,
        slab_bytes: int = DEFAULT_SLAB_BYTES,
        device: str | torch.device = "cpu",
    ):
        if slab_bytes <= 0 or slab_bytes % 256:
            raise ArenaTooSmallError(
                f"slab_bytes={slab_bytes} is invalid: use a positive multiple of 256 bytes"
            )
        self.device = torch.device(device)
        self._core = _C.Arena(int(total_bytes), int(slab_bytes), str(self.device))

    @property
    def allocator(self) -> "_C.SlabAllocator":
        return self._core.allocator

    @property
    def buffer(self) -> torch.Tensor:
        return self._core.buffer

    @property
    def total_bytes(self) -> int:
        return self._core.total_bytes

    @property
    def weight_bytes(self) -> int:
        """The size the weight region was last placed at (its slabs may hold more)."""
        return self._core.weight_bytes

    @property
    def slab_bytes(self) -> int:
        return self.allocator.slab_bytes

    def place_weights(self, weight_bytes: int) -> WeightPlacement:
        """Size the weight region for a model of `weight_bytes` bytes.

        Idempotent: after swapping out and freeing the blocks in `needs_swap`,
        call it again with the same size to finish the placement.
        """
        self._core.reserve_weights(int(weight_bytes))
        moved = dict(self._core.relocate_draining())
        return WeightPlacement(int(weight_bytes), moved, tuple(self.allocator.draining_handles()))

    def weight_view(self, offset: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        """A typed view of the weight region starting at byte `offset`."""
        nbytes = math.prod(shape) * _itemsize(dtype)
        return _typed(
            self._core.weight_bytes_view(int(offset), nbytes),
            dtype,
            shape,
            f"weight at offset {offset}",
        )

    def slabs_for(self, nbytes: int) -> int:
        return max(1, -(-int(nbytes) // self.slab_bytes))

    def claim_run(self, nbytes: int) -> int:
        """Claim contiguous free slabs for `nbytes` of resident weights; returns the run's first slab.
        Raises OutOfBlocksError (nothing claimed) when no such run is free."""
        return self.allocator.claim_run(self.slabs_for(nbytes))

    def run_fits_after_release(self, nbytes: int, runs: list[tuple[int, int]]) -> bool:
        """Whether a run for `nbytes` could be claimed once the resident runs `(first_slab, nbytes)` were
        released (nothing is released)."""
        return self.allocator.run_fits_after_release(
            self.slabs_for(nbytes),
            [int(first) for first, _ in runs],
            [self.slabs_for(size) for _, size in runs],
        )

    def release_run(self, first_slab: int, nbytes: int) -> None:
        self.allocator.release_run(int(first_slab), self.slabs_for(nbytes))

    def run_view(self, first_slab: int, nbytes: int) -> torch.Tensor:
        """A byte view of the first `nbytes` of the resident run at `first_slab`."""
        return self._core.run_bytes_view(int(first_slab), int(nbytes))

    def allocate_block(self, block_bytes: int) -> int:
        return self._core.allocate_block(int(block_bytes))

    def free_block(self, handle: int) -> None:
        self._core.free_block(int(handle))

    def block_view(
        self, handle: int, dtype: torch.dtype, shape: tuple[int, ...] | None = None
    ) -> torch.Tensor:
        """A typed view of one live KV block (the whole block when shape is None)."""
        raw = self._core.block_bytes_view(int(handle))
        if shape is None:
            shape = (raw.numel() // _itemsize(dtype),)
        if math.prod(shape) * _itemsize(dtype) != raw.numel():
            raise InvalidHandleError(
                f"block {handle} has {raw.numel()} bytes, not the {math.prod(shape) * _itemsize(dtype)} "
                f"bytes of shape {tuple(shape)} in {dtype}"
            )
        return _typed(raw, dtype, shape, f"block {handle}")

    def usage(self) -> ArenaUsage:
        st = self.allocator.stats()
        region = self.allocator.reserved_boundary * st["slab_bytes"]
        kv_capacity = self.total_bytes - region
        return ArenaUsage(
            device=str(self.device),
            total_bytes=self.total_bytes,
            slab_bytes=st["slab_bytes"],
            weight_bytes=self._core.weight_bytes,
            weight_region_bytes=region,
            kv_used_bytes=st["used_bytes"],
            kv_free_bytes=kv_capacity - st["used_bytes"],
            resident_bytes=st["resident_slabs"] * st["slab_bytes"],
            internal_fragmentation_bytes=st["internal_fragmentation_bytes"],
            external_fragmentation_bytes=st["external_fragmentation_bytes"],
            slabs_per_block_size={
                size: entry["slabs"] for size, entry in st["per_block_size"].items()
            },
        )


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _typed(
    raw: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...], what: str
) -> torch.Tensor:
    if raw.storage_offset() % _itemsize(dtype):
        raise InvalidHandleError(
            f"{what} is not aligned for {dtype}: use sizes that are multiples of its item size"
        )
    return raw.view(dtype).view(tuple(shape))
