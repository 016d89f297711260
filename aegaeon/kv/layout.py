"""Where a model's KV cache lives inside the arena.

One KV block holds `block_size` tokens of every layer of one model:
`[layer][key|value][slot][kv_heads * head_dim]`. A "row" is one token's keys
(or values) of one layer. Blocks start at a slab boundary plus a multiple of
the block size, so every block handle (a byte offset) is a multiple of
`unit_bytes = gcd(slab_bytes, row_bytes)`. The arena buffer is read as one
matrix of such units and a row is `units_per_row` consecutive units; gathering
a batch's context is one indexing op per layer and kind, whatever the mix of
blocks and slabs, and models of different shapes share the buffer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from aegaeon.errors import ArenaTooSmallError

DEFAULT_BLOCK_SIZE = 16


@dataclass(frozen=True)
class KVLayout:
    num_layers: int
    block_size: int
    kv_size: int  # kv_heads * head_dim
    dtype: torch.dtype
    slab_bytes: int

    @property
    def unit_bytes(self) -> int:
        return math.gcd(self.slab_bytes, self.row_bytes)

    @property
    def units_per_row(self) -> int:
        return self.row_bytes // self.unit_bytes

    @property
    def row_bytes(self) -> int:
        return self.kv_size * torch.empty((), dtype=self.dtype).element_size()

    @property
    def block_bytes(self) -> int:
        return self.num_layers * 2 * self.block_size * self.row_bytes

    def unit_offset(self, layer: int, value: bool) -> int:
        """Units from a block's first unit to the first slot of (layer, key|value)."""
        return (2 * layer + int(value)) * self.block_size * self.units_per_row

    def block_unit(self, handle: int) -> int:
        return handle // self.unit_bytes

    def check_fits(self, model: str) -> None:
        if self.block_bytes > self.slab_bytes:
            raise ArenaTooSmallError(
                f"model {model}: a KV block of {self.block_bytes} bytes exceeds the slab of {self.slab_bytes} "
                f"bytes: use a larger slab or a smaller block size"
            )
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        if self.unit_bytes % itemsize:
            raise ArenaTooSmallError(
                f"model {model}: the slab of {self.slab_bytes} bytes does not align its KV rows"
            )

    def units_view(self, buffer: torch.Tensor) -> torch.Tensor:
        """The arena's byte buffer as a [units, unit_bytes / itemsize] matrix of this dtype (no copy)."""
        usable = buffer.numel() // self.unit_bytes * self.unit_bytes
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return buffer[:usable].view(self.dtype).view(-1, self.unit_bytes // itemsize)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)
