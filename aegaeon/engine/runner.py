"""The model runner: one arena, one model bound at a time, switched in place.

Every registered model keeps its model object (aegaeon.models.registry), weight layout and KV
layout for the life of the runner (component reuse). Switching to a model
sizes the arena's weight region, moves or swaps out KV blocks in the way,
copies the model's packed weights from the host cache in one contiguous copy
and re-binds the parameter views. Nothing is re-initialised.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from aegaeon.arena import Arena
from aegaeon.device_link import DeviceLink
from aegaeon.errors import IntegrityError
from aegaeon.kv.batch import SeqChunk, build_step
from aegaeon.kv.layout import KVLayout
from aegaeon.kv.manager import KVCacheManager
from aegaeon.models.registry import build_model
from aegaeon.sequence import Sequence
from aegaeon.weights.checkpoint import Checkpoint
from aegaeon.weights.host_cache import HostWeightCache
from aegaeon.weights.layout import WeightLayout

log = logging.getLogger(__name__)


@dataclass
class ModelEntry:
    name: str
    checkpoint: Checkpoint
    weights: WeightLayout
    kv: KVLayout
    model: Any  # the family's implementation (aegaeon.models.registry.build_model)
    kv_units: torch.Tensor  # the arena as units of this model's KV rows

    @property
    def max_position(self) -> int:
        return self.checkpoint.config.max_position


@dataclass
class SwitchRecord:
    model: str
    seconds: float
    bytes_copied: int
    kv_moved: int
    kv_swapped_out: int
    # Where the time went (seconds): waiting for the host cache to hold the weights (not part of `seconds`),
    # moving or swapping KV out of the weight region, the weight copy, re-binding the parameter views.
    # On a GPU the copy is asynchronous, so its stage is the time to queue it; it completes before the next
    # forward on the same stream.
    stages: dict[str, float] = field(default_factory=dict)


class ModelRunner:
    def __init__(
        self,
        arena: Arena,
        host_cache: HostWeightCache,
        kv: KVCacheManager,
        link: DeviceLink | None = None,
    ):
        self.arena = arena
        self.link = link or DeviceLink()
        self.host_cache = host_cache
        self.kv = kv
        self.entries: dict[str, ModelEntry] = {}
        self.active: str | None = None
        self.switches: list[SwitchRecord] = []
        self.ragged_decode = (
            True  # False: decode steps padded to the longest context (`bench attention` compares)
        )

    def register(self, checkpoint: Checkpoint, block_size: int) -> ModelEntry:
        cached = self.host_cache.models[checkpoint.name]
        cfg = checkpoint.config
        kv = KVLayout(
            cfg.num_layers, block_size, cfg.kv_size, cached.layout.dtype, self.arena.slab_bytes
        )
        kv.check_fits(checkpoint.name)
        entry = ModelEntry(
            checkpoint.name,
            checkpoint,
            cached.layout,
            kv,
            build_model(cfg),
            kv.units_view(self.arena.buffer),
        )
        self.entries[checkpoint.name] = entry
        return entry

    def switch_to(self, name: str) -> SwitchRecord | None:
        """Make `name` the bound model (no-op when it already is)."""
        if self.active == name:
            return None
        entry = self.entries[name]
        waited = time.perf_counter()
        self.host_cache.wait(name)
        start = time.perf_counter()
        self.active = None  # the old model's views are about to be overwritten
        placement = self.arena.place_weights(entry.weights.total_bytes)
        self.kv.apply_moves(placement.moved)
        swapped = 0
        if not placement.ready:
            for seq in self.kv.owners_of(placement.needs_swap):
                self.kv.swap_out(seq, self.entries[seq.model].kv)
                swapped += 1
            placement = self.arena.place_weights(entry.weights.total_bytes)
            if not placement.ready:
                raise IntegrityError(
                    f"switch to {name}: KV blocks remain in the weight region after swap-out"
                )
        evicted = time.perf_counter()
        region = self.arena.weight_view(0, torch.uint8, (entry.weights.total_bytes,))
        # From the page-locked host cache this is one DMA on the compute stream: the
        # forward kernels queued after it are ordered behind it without a device sync.
        source = self.host_cache.region(name)
        self.link.transfer(
            entry.weights.total_bytes,
            lambda: region.copy_(source, non_blocking=self.arena.device.type == "cuda"),
        )
        copied = time.perf_counter()
        entry.model.bind(entry.weights.views(region))
        self.active = name
        bound = time.perf_counter()
        stages = {
            "wait_weights": start - waited,
            "evict_kv": evicted - start,
            "copy_weights": copied - evicted,
            "bind": bound - copied,
        }
        record = SwitchRecord(
            name, bound - start, entry.weights.total_bytes, len(placement.moved), swapped, stages
        )
        self.switches.append(record)
        log.debug(
            "switched to %s in %.4f s (%d bytes, %d blocks moved, %d seqs swapped out)",
            name,
            record.seconds,
            record.bytes_copied,
            record.kv_moved,
            swapped,
        )
        return record

    def forward(self, name: str, seqs: list[Sequence], all_logits: bool = False) -> torch.Tensor:
        """Run one step for `seqs` (their pending tokens) and return last-token logits [B, V], or with
        `all_logits` every pending token's [B, Q, V]."""
        if self.active != name:
            raise IntegrityError(f"forward for {name} while {self.active} is bound: switch first")
        entry = self.entries[name]
        chunks = [
            SeqChunk(
                seq.pending_tokens(), seq.num_cached, [entry.kv.block_unit(h) for h in seq.blocks]
            )
            for seq in seqs
        ]
        step = build_step(
            chunks,
            entry.kv.block_size,
            entry.kv.units_per_row,
            self.arena.device,
            self.ragged_decode,
        )
        return entry.model.forward(step, entry.kv_units, entry.kv, all_logits=all_logits)
