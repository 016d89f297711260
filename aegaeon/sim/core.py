"""Event loop and batch execution shared by every simulated system."""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from aegaeon.sched.cost import CostModel
from aegaeon.sched.decode import DEFAULT_MAX_QUOTA
from aegaeon.sched.request import RequestState

DEFAULT_DEVICE_MEMORY = 80 * 2**30


@dataclass(frozen=True)
class SimConfig:
    num_gpus: int = 16
    device_memory_bytes: int = DEFAULT_DEVICE_MEMORY
    prefill_instances: int | None = None  # aegaeon: None -> a quarter of the GPUs
    max_group_size: int = 8  # aegaeon prefill groups
    max_quota: float = DEFAULT_MAX_QUOTA  # aegaeon decode Q
    max_batch: int = 64
    queue_size: int = 4  # sllm / sllm+ QS
    muxserve_kv_reserve_bytes: int = 20 * 2**30  # KV room each MuxServe model is placed with
    horizon_factor: float = 4.0  # stop simulating at this multiple of the workload span


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


def decode_segment(cost: CostModel, model: str, batch: Sequence[RequestState], start: float,
                   budget: float | None) -> float:
    """Decode until `budget` seconds are spent (at least one step) or a request finishes.

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
    if budget is not None:
        steps = max(1, int(np.searchsorted(times - start, budget, side="right")))
        times = times[:steps]
    stamps = times.tolist()
    for state in batch:
        state.token_times.extend(stamps)
    return stamps[-1]


def decode_for(cost: CostModel, model: str, batch: Sequence[RequestState], start: float,
               budget: float | None) -> float:
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
