"""Prefill policy: grouped FCFS.

A new request joins a waiting group of its model, on any instance, if that group
has room; otherwise it opens a new group on the instance predicted to finish
its queue first. Each instance serves its groups in FCFS order, so it switches
models at most once per group. A group that has started takes no new members.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

from aegaeon.errors import ConfigError
from aegaeon.sched.cost import CostModel
from aegaeon.sched.request import RequestSpec

DEFAULT_MAX_GROUP_SIZE = 8


@dataclass
class PrefillGroup:
    model: str
    requests: list[RequestSpec] = field(default_factory=list)


@dataclass(frozen=True)
class PrefillPlacement:
    instance: int
    new_group: bool


class GroupedFCFS:
    """Per-instance FCFS queues of same-model groups."""

    def __init__(self, num_instances: int, max_group_size: int = DEFAULT_MAX_GROUP_SIZE):
        if num_instances < 0 or max_group_size < 1:  # 0 instances: they join later (add_instance)
            raise ConfigError(f"grouped FCFS needs >= 0 instances and a group size >= 1, got {num_instances}, "
                              f"{max_group_size}")
        self.max_group_size = max_group_size
        self.queues: list[deque[PrefillGroup]] = [deque() for _ in range(num_instances)]

    def add_instance(self) -> int:
        """One more instance (a node joined); returns its index."""
        self.queues.append(deque())
        return len(self.queues) - 1

    def submit(self, request: RequestSpec, busy_until: Sequence[float], loaded: Sequence[str | None],
               now: float, cost: CostModel) -> PrefillPlacement:
        """Queue `request`; busy_until/loaded describe each instance's running work."""
        if not self.queues:
            raise ConfigError("no prefill instance to queue the request on")
        for index, queue in enumerate(self.queues):
            for group in queue:
                if group.model == request.model and len(group.requests) < self.max_group_size:
                    group.requests.append(request)
                    return PrefillPlacement(index, new_group=False)
        finish = [self.predicted_finish(i, busy_until[i], loaded[i], now, cost) for i in range(len(self.queues))]
        target = min(range(len(self.queues)), key=lambda i: (finish[i], i))
        self.queues[target].append(PrefillGroup(request.model, [request]))
        return PrefillPlacement(target, new_group=True)

    def predicted_finish(self, instance: int, busy_until: float, loaded: str | None, now: float,
                         cost: CostModel) -> float:
        """When `instance` would finish everything queued on it."""
        t, model = max(now, busy_until), loaded
        for group in self.queues[instance]:
            t += cost.switch_time(model, group.model) + cost.prefill_time(group.model, [r.input_len for r in group.requests])
            model = group.model
        return t

    def next_group(self, instance: int) -> PrefillGroup | None:
        """The group `instance` runs next (it leaves the queue and takes no new members)."""
        queue = self.queues[instance]
        return queue.popleft() if queue else None

    def upcoming_model(self, instance: int) -> str | None:
        """The model of the group after the running one: what to prefetch."""
        queue = self.queues[instance]
        return queue[0].model if queue else None

    def queued(self, instance: int) -> int:
        return sum(len(g.requests) for g in self.queues[instance])
