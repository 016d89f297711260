"""Layer-wise readiness of a weight copy: a layer is usable once its bytes have landed.

The packed layout (aegaeon.weights.layout) lies in the order a forward reads it: the embedding, then each
decoder layer, then the final norm and the head. A copy made in that order, one chunk per *stage*, lets the
first forward after a switch start once the embedding is there and wait before each layer only for what is
not yet copied: the rest of the copy overlaps that forward's compute. Stage 0 is what the embedding needs,
stage i + 1 decoder layer i, stage L + 1 the rest (the final norm and the head).

On CPU the copy thread reports each chunk as it lands and a forward blocks on a condition until its stage's
bytes are there. On a GPU each chunk's copy on the copy stream records an event, and a forward makes the
compute stream wait for the event of its stage: the host never blocks, the device orders the kernels.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import torch

from aegaeon.errors import IntegrityError
from aegaeon.sched.layerwise import StageShares
from aegaeon.weights.layout import WeightLayout

_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def stage_of(tensor_name: str, num_layers: int) -> int:
    """The forward stage that first reads `tensor_name` (a Hugging Face checkpoint name)."""
    if tensor_name.startswith("model.embed_tokens."):
        return 0
    match = _LAYER.match(tensor_name)
    if match is not None:
        return int(match.group(1)) + 1
    return num_layers + 1


def stage_ends(layout: WeightLayout, num_layers: int) -> list[int]:
    """For each stage, the bytes of the packed copy that must have landed before it runs (non-decreasing;
    the last is the whole copy)."""
    itemsize = torch.empty((), dtype=layout.dtype).element_size()
    ends = [0] * (num_layers + 2)
    for name, slot in layout.slots.items():
        stage = stage_of(name, num_layers)
        ends[stage] = max(ends[stage], slot.offset + slot.nbytes(itemsize))
    for stage in range(1, len(ends)):
        ends[stage] = max(ends[stage], ends[stage - 1])
    ends[-1] = layout.total_bytes
    return ends


def copy_chunks(ends: list[int]) -> list[tuple[int, int]]:
    """The byte ranges to copy one after another, one per stage that adds bytes."""
    chunks, start = [], 0
    for end in ends:
        if end > start:
            chunks.append((start, end))
            start = end
    return chunks


class CopyProgress:
    """How far one weight copy has come, and the wait for a stage's bytes."""

    def __init__(self, ends: list[int], device: torch.device | None = None):
        self.ends = ends
        self.device = device  # the GPU whose compute stream waits for the events
        self.copied = 0  # bytes landed, in layout order
        self.error: BaseException | None = None
        self.events: list[tuple[int, Any]] = []  # (chunk end, CUDA event) on a GPU
        self.waited = 0.0  # seconds forwards blocked for bytes not yet copied (CPU)
        self.reached = -1  # the furthest stage a forward has waited for
        self._cond = threading.Condition()

    @property
    def total(self) -> int:
        return self.ends[-1]

    def landed(self, end: int) -> None:
        """The copy thread: every byte below `end` is in place."""
        with self._cond:
            self.copied = max(self.copied, end)
            self._cond.notify_all()

    def failed(self, error: BaseException) -> None:
        with self._cond:
            self.error = error
            self._cond.notify_all()

    def complete(self) -> bool:
        """Every byte landed (on a GPU: every chunk's copy and event queued)."""
        return self.copied >= self.total

    def awaited(self) -> bool:
        """Nothing can read the weights before the whole copy any more: on CPU every byte has landed, on a
        GPU a forward has ordered the compute stream behind the last chunk."""
        if self.events:
            return self.reached == len(self.ends) - 1
        return self.complete()

    def wait_stage(self, stage: int) -> None:
        """Block (CPU), or order the compute stream (GPU), until stage `stage`'s bytes have landed."""
        need = self.ends[stage]
        self.reached = max(self.reached, stage)
        if self.events:
            event = next(event for end, event in self.events if end >= need)
            torch.cuda.current_stream(self.device).wait_event(event)
            return
        if self.copied >= need:
            return
        began = time.perf_counter()
        with self._cond:
            while self.copied < need and self.error is None:
                self._cond.wait()
        self.waited += time.perf_counter() - began
        if self.copied < need:
            raise IntegrityError(
                f"the weight copy failed before stage {stage} landed: {self.error}"
            ) from self.error


def stage_shares(layout: WeightLayout, num_layers: int, tied_embeddings: bool) -> StageShares:
    """The stages' shares of the copy (bytes, in layout order) and of the compute (the weights each stage
    multiplies by: none for the embedding lookup, the embedding's rows for a tied head)."""
    ends = stage_ends(layout, num_layers)
    sizes = [end - start for start, end in zip([0] + ends[:-1], ends)]
    work = [0.0] + [float(size) for size in sizes[1:]]
    if tied_embeddings:
        work[-1] += sizes[0]
    return StageShares(tuple(size / ends[-1] for size in sizes), tuple(w / sum(work) for w in work))
