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
            raise ConfigError(
                f"grouped FCFS needs >= 0 instances and a group size >= 1, got {num_instances}, "
                f"{max_group_size}"
            )
        self.max_group_size = max_group_size
        self.queues: list[deque[PrefillGroup]] = [deque() for _ in range(num_instances)]

    def add_instance(self) -> int:
        """One more instance (a node joined); returns its index."""
        self.queues.append(deque())
        return len(self.queues) - 1

    def submit(
        self,
        request: RequestSpec,
        busy_until: Sequence[float],
        loaded: Sequence[str | None],
        now: float,
        cost: CostModel,
    ) -> PrefillPlacement:
        """Queue `request`; busy_until/loaded describe each instance's running work."""
        if not self.queues:
            raise ConfigError("no prefill instance to queue the request on")
        for index, queue in enumerate(self.queues):
            for group in queue:
                if group.model == request.model and len(group.requests) < self.max_group_size:
                    group.requests.append(request)
                    return PrefillPlacement(index, new_group=False)
        finish = [
            self.predicted_finish(i, busy_until[i], loaded[i], now, cost)
            for i in range(len(self.queues))
        ]
        target = min(range(len(self.queues)), key=lambda i: (finish[i], i))
        self.queues[target].append(PrefillGroup(request.model, [request]))
        return PrefillPlacement(target, new_group=True)

    def predicted_finish(
        self, instance: int, busy_until: float, loaded: str | None, now: float, cost: CostModel
    ) -> float:
        """When `instance` would finish everything queued on it."""
        t, model = max(now, busy_until), loaded
        for group in self.queues[instance]:
            t += cost.switch_time(model, group.model) + cost.prefill_time(
                group.model, [r.input_len for r in group.requests]
            )
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


@dataclass(frozen=True)
class GroupStart:
    """Decision: `instance` runs this group now (switching to `model` first), its prompts one after another
    so that each first token comes as early as possible; `busy_until` is when the policy predicts it ends."""

    instance: int
    model: str
    requests: tuple[RequestSpec, ...]
    busy_until: float

    @property
    def request_ids(self) -> tuple[int, ...]:
        return tuple(r.request_id for r in self.requests)


@dataclass
class _InstanceState:
    busy_until: float = 0.0
    loaded: str | None = None
    running: bool = False
    alive: bool = True


class PrefillDispatcher:
    """Grouped FCFS over a set of prefill instances, as a state machine both executors drive.

    The executor calls `submit` when a request arrives and `group_done` when an instance finishes its group;
    each may answer with a `GroupStart` to execute. The instance states it keeps (running, loaded model,
    predicted busy-until from the cost model) are what grouped FCFS compares instances by.
    """

    def __init__(
        self, num_instances: int, cost: CostModel, max_group_size: int = DEFAULT_MAX_GROUP_SIZE
    ):
        self.grouped = GroupedFCFS(num_instances, max_group_size)
        self.cost = cost
        self.instances = [_InstanceState() for _ in range(num_instances)]

    @property
    def alive(self) -> int:
        return sum(i.alive for i in self.instances)

    def add_instance(self) -> int:
        self.instances.append(_InstanceState())
        return self.grouped.add_instance()

    def submit(self, request: RequestSpec, now: float) -> GroupStart | None:
        if not self.alive:
            raise ConfigError("no prefill instance is alive to queue the request on")
        busy = [i.busy_until if i.alive else float("inf") for i in self.instances]
        loaded = [i.loaded for i in self.instances]
        placement = self.grouped.submit(request, busy, loaded, now, self.cost)
        return (
            None
            if self.instances[placement.instance].running
            else self._start(placement.instance, now)
        )

    def group_done(self, instance: int, now: float) -> GroupStart | None:
        self.instances[instance].running = False
        return self._start(instance, now) if self.instances[instance].alive else None

    def instance_lost(self, instance: int) -> list[RequestSpec]:
        """`instance` is gone: it is never chosen again; returns the requests queued on it (not started)."""
        state = self.instances[instance]
        state.alive, state.running, state.loaded = False, False, None
        queued = [r for group in self.grouped.queues[instance] for r in group.requests]
        self.grouped.queues[instance].clear()
        return queued

    def instance_back(self, instance: int, now: float) -> None:
        """A replacement for a lost instance is up: it takes groups again."""
        self.instances[instance] = _InstanceState(busy_until=now)

    def prefetch_target(self, instance: int) -> str | None:
        """The model `instance` should copy while its running group computes: its next group's (the paper's
        prefetched-model slot), unless it is the loaded one. A queued group exists only behind a running one."""
        upcoming = self.grouped.upcoming_model(instance)
        return None if upcoming == self.instances[instance].loaded else upcoming

    def _start(self, instance: int, now: float) -> GroupStart | None:
        group = self.grouped.next_group(instance)
        if group is None:
            return None
        state = self.instances[instance]
        t = now + self.cost.switch_time(state.loaded, group.model)
        for request in group.requests:
            t += self.cost.prefill_time(group.model, [request.input_len])
        state.running, state.loaded, state.busy_until = True, group.model, t
        return GroupStart(instance, group.model, tuple(group.requests), t)
