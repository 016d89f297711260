"""The packed byte layout of one model's weights.

The host cache and the device arena use the same layout, so switching a model
in is one contiguous copy of `total_bytes`, and parameters are views at fixed
offsets. Every tensor starts on a 256-byte boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aegaeon.models.config import ArchConfig

ALIGN = 256


@dataclass(frozen=True)
class TensorSlot:
    offset: int
    shape: tuple[int, ...]

    def nbytes(self, itemsize: int) -> int:
        n = itemsize
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class WeightLayout:
    dtype: torch.dtype
    slots: dict[str, TensorSlot]
    total_bytes: int

    @classmethod
    def for_config(cls, config: ArchConfig, dtype: torch.dtype) -> "WeightLayout":
        itemsize = torch.empty((), dtype=dtype).element_size()
        slots, offset = {}, 0
        for name, shape in config.parameter_shapes().items():
            slots[name] = TensorSlot(offset, shape)
            offset = _align(offset + slots[name].nbytes(itemsize))
        return cls(dtype, slots, offset)

    def views(self, region: torch.Tensor) -> dict[str, torch.Tensor]:
        """Typed parameter views of a uint8 region laid out by this layout."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        out = {}
        for name, slot in self.slots.items():
            raw = region[slot.offset : slot.offset + slot.nbytes(itemsize)]
            out[name] = raw.view(self.dtype).view(slot.shape)
        return out


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN
