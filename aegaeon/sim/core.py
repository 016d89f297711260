"""Event loop and batch execution shared by every simulated system."""

from __future__ import annotations

import heapq
import itertools
from typing import Callable, Sequence

import numpy as np

from aegaeon.config.sim import DEFAULT_DEVICE_MEMORY, SimConfig  # noqa: F401 (re-exported)
from aegaeon.sched.cost import CostModel
from aegaeon.sched.request import RequestState


class EventLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def at(self, time: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (max(time, self.now), next(self._order), action))

    def run(self, until: float) -> None:
        while self._heap and self._heap[0][0] <= until:
            self.now, _, action = heapq.heappop(self._heap)
            action()


def decode_segment(
    cost: CostModel, model: str, batch: Sequence[RequestState], start: float, budget: float | None
) -> float:
    """Decode while fewer than `budget` seconds have been spent (`aegaeon.sched.rounds.quota_allows_step`: at
    least one step, the last may end past the budget), or until a request finishes.

    The cost model's step time is linear in the context, so with step j taking
    base + slope*j the k-th token lands at start + k*base + slope*k*(k-1)/2.
    Appends the token times to every request; returns the end time.
    """
    size = len(batch)
    context = sum(s.context_len for s in batch)
    steps = min(s.remaining for s in batch)
    base = cost.decode_time(model, size, context)
    slope = cost.decode_time(model, size, context + size) - base
    k = np.arange(1, steps + 1, dtype=np.float64)
    times = start + k * base + slope * k * (k - 1) / 2
    if (
        budget is not None
    ):  # step k+1 starts when step k ends, if that is before the budget runs out
        steps = min(steps, int(np.searchsorted(times - start, budget, side="left")) + 1)
        times = times[:steps]
    stamps = times.tolist()
    for state in batch:
        state.token_times.extend(stamps)
    return stamps[-1]


def decode_for(
    cost: CostModel, model: str, batch: Sequence[RequestState], start: float, budget: float | None
) -> float:
    """Decode the batch for `budget` seconds (None: until all finish); returns the end time."""
    t, active = start, [s for s in batch if not s.finished]
    while active and (budget is None or t - start < budget):
        left = None if budget is None else budget - (t - start)
        t = decode_segment(cost, model, active, t, left)
        active = [s for s in active if not s.finished]
    return t


def prefill(cost: CostModel, model: str, batch: Sequence[RequestState], start: float) -> float:
    """Prefill the batch together; each request's first token comes at the end."""
    end = start + cost.prefill_time(model, [s.spec.input_len for s in batch])
    for state in batch:
        state.token_times.append(end)
    return end
