"""Resident models in the simulator: which models' weights an instance still holds in device memory.

The live engine keeps models' weights in arena slabs the KV cache is not using (aegaeon.engine.resident);
this is the same book in bytes: the resident models' weights plus the KV in use must fit the device's
memory, KV has priority, and the model to evict is `aegaeon.sched.residency.choose_eviction`'s choice on the
instance's upcoming models. The live arena also rounds each model's weights up to whole slabs and needs
each run of slabs to be contiguous; the simulator models neither, so it can keep a model resident where the
live engine would have to evict one more.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from aegaeon.sched.residency import choose_eviction


class SimResidentSet:
    def __init__(self, capacity_bytes: int | None, weight_bytes: Callable[[str], int]):
        self.capacity_bytes = capacity_bytes  # None: unlimited
        self.weight_bytes = weight_bytes
        self.last_used: dict[str, int] = {}
        self.upcoming: tuple[str, ...] = ()
        self.evictions = 0
        self._clock = 0

    def __contains__(self, model: str) -> bool:
        return model in self.last_used

    def set_upcoming(self, models: Sequence[str]) -> None:
        self.upcoming = tuple(models)

    def resident_bytes(self) -> int:
        return sum(self.weight_bytes(m) for m in self.last_used)

    def touch(self, model: str) -> None:
        self._clock += 1
        self.last_used[model] = self._clock

    def drop(self, model: str) -> None:
        self.last_used.pop(model, None)

    def fits(self, kv_bytes: int, extra_bytes: int = 0) -> bool:
        if self.capacity_bytes is None:
            return True
        return kv_bytes + self.resident_bytes() + extra_bytes <= self.capacity_bytes

    def make_room(self, kv_bytes: int, protected: Collection[str], extra_bytes: int = 0) -> bool:
        """Evict resident models (never those in `protected`) until `kv_bytes` of KV and `extra_bytes` more
        weights fit beside the rest; False when they cannot, even with every unprotected model evicted."""
        while not self.fits(kv_bytes, extra_bytes):
            victim = choose_eviction(self.last_used, self.upcoming, protected)
            if victim is None:
                return False
            self.drop(victim)
            self.evictions += 1
        return True
