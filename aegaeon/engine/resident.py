"""Resident models: weights kept in arena slabs the KV cache is not using (beyond the paper).

Each resident model's packed weights lie in one run of contiguous slabs claimed from the arena's free pool
(`Arena.claim_run`), so binding a resident model only re-points its parameter views at the run. Runs come
from the lowest free slabs and KV blocks from the highest, so the two meet only when memory is short; then
KV wins: `make_room_for_kv` evicts a resident model before any request's KV would be swapped out. Which
model goes is `aegaeon.sched.residency.choose_eviction`'s decision, on the executor's hint of the models
it will run next.

This class only keeps the books (which run holds which model, recency, the hint); the runner decides
when weights are copied and bound.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from aegaeon.arena import Arena
from aegaeon.errors import IntegrityError, OutOfBlocksError
from aegaeon.sched.residency import choose_eviction

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    first_slab: int
    nbytes: int


class ResidentWeights:
    def __init__(self, arena: Arena):
        self.arena = arena
        self.runs: dict[str, Run] = {}
        self.intact: set[str] = set()  # runs whose bytes are a whole copy of the model's weights
        self.last_used: dict[str, int] = {}
        self.upcoming: tuple[str, ...] = ()
        self.evictions = 0
        self._clock = 0

    def __contains__(self, model: str) -> bool:
        return model in self.intact

    def view(self, model: str) -> torch.Tensor:
        run = self.runs[model]
        return self.arena.run_view(run.first_slab, run.nbytes)

    def touch(self, model: str) -> None:
        self._clock += 1
        self.last_used[model] = self._clock

    def mark_intact(self, model: str) -> None:
        """The copy into `model`'s run has landed: it can be bound."""
        self.intact.add(model)
        self.touch(model)

    def claim(self, model: str, nbytes: int, protected: Collection[str]) -> torch.Tensor | None:
        """A run for `model`'s `nbytes` of weights (not yet copied), evicting the resident models the policy
        gives up first (never those in `protected`), as few as make a run of contiguous slabs; None, with
        nothing evicted, when no eviction can (KV blocks between the runs). KV blocks are never moved for it."""
        self.drop(model)
        try:
            first = self.arena.claim_run(nbytes)
        except OutOfBlocksError:
            victims = self._victims_for(nbytes, protected)
            if victims is None:
                return None
            for victim in victims:
                log.debug("evicting resident model %s for %s", victim, model)
                self.drop(victim)
                self.evictions += 1
            try:
                first = self.arena.claim_run(nbytes)
            except OutOfBlocksError as err:
                raise IntegrityError(
                    f"evicting {victims} should have made a run for {model}: {err}"
                ) from err
        self.runs[model] = Run(first, nbytes)
        return self.arena.run_view(first, nbytes)

    def _victims_for(self, nbytes: int, protected: Collection[str]) -> list[str] | None:
        """The shortest prefix of the policy's eviction order whose runs, released, make room for `nbytes`."""
        remaining = {m: self.last_used.get(m, 0) for m in self.runs}
        order: list[str] = []
        while True:
            victim = choose_eviction(remaining, self.upcoming, protected)
            if victim is None:
                return None
            order.append(victim)
            del remaining[victim]
            released = [(self.runs[m].first_slab, self.runs[m].nbytes) for m in order]
            if self.arena.run_fits_after_release(nbytes, released):
                return order

    def adopt(self, model: str, first_slab: int, nbytes: int) -> None:
        """`model`'s weights already lie in the run at `first_slab` (claimed by the caller)."""
        self.runs[model] = Run(first_slab, nbytes)
        self.mark_intact(model)

    def evict_one(self, protected: Collection[str]) -> bool:
        """Evict the resident model the policy needs last; False when all are protected."""
        victim = choose_eviction(
            {m: self.last_used.get(m, 0) for m in self.runs}, self.upcoming, protected
        )
        if victim is None:
            return False
        log.debug("evicting resident model %s", victim)
        self.drop(victim)
        self.evictions += 1
        return True

    def drop(self, model: str) -> None:
        run = self.runs.pop(model, None)
        self.intact.discard(model)
        self.last_used.pop(model, None)
        if run is not None:
            self.arena.release_run(run.first_slab, run.nbytes)

    def drop_all(self, keep: Collection[str] = ()) -> None:
        for model in [m for m in self.runs if m not in keep]:
            self.drop(model)

    def set_upcoming(self, models: Sequence[str]) -> None:
        self.upcoming = tuple(models)

    def resident_models(self) -> list[str]:
        return sorted(self.intact)
