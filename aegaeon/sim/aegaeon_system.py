"""Aegaeon in the simulator: disaggregated prefill/decode with token-level scaling.

The decisions are the live node's: prefill instances take groups from the grouped-FCFS dispatcher
(`aegaeon.sched.prefill.PrefillDispatcher`, the proxy's), each request's KV then moves to the decode
instance `aegaeon.sched.decode.choose_decode_instance` picks (its swap overlaps compute, so it only delays
that request), and each decode instance runs the policy's turns (`aegaeon.sched.rounds`, the decode
workers'). This module only advances the clock by the cost model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aegaeon.config.sim import SimConfig
from aegaeon.sched.cost import CostModel, kv_capacity_bytes
from aegaeon.sched.decode import choose_decode_instance
from aegaeon.sched.layerwise import switch_exposure
from aegaeon.sched.prefill import GroupStart, PrefillDispatcher
from aegaeon.sched.request import RequestState
from aegaeon.sched.rounds import RoundConfig, WeightedRoundRobin
from aegaeon.sched.slo import SLO
from aegaeon.sim.core import EventLoop
from aegaeon.sim.decode_instance import SimDecodeInstance
from aegaeon.sim.resident import SimResidentSet


def split_instances(config: SimConfig) -> tuple[int, int]:
    """(prefill, decode) instances: `prefill_instances` or a quarter of the GPUs, leaving at least one decode."""
    prefill = config.prefill_instances or max(1, config.num_instances // 4)
    if prefill >= config.num_instances:
        prefill = max(1, config.num_instances - 1)
    return prefill, max(1, config.num_instances - prefill)


@dataclass
class _PrefillExecutor:
    loaded: str | None = None  # the model in this instance's memory
    prefetching: tuple[str, float] | None = None  # (model, when its copy began), with prefetch
    copy_free_at: float = (
        0.0  # when the instance's own switch copy ends (a prefetch starts after it)
    )
    exposed_switches: list[float] = field(default_factory=list)
    resident: SimResidentSet | None = (
        None  # with residency: the models whose weights it still holds
    )
    group_kv: int = (
        0  # bytes of KV the running group's prompts fill (resident weights leave room for it)
    )


class AegaeonSystem:
    name = "aegaeon"

    def __init__(
        self,
        loop: EventLoop,
        cost: CostModel,
        slo: SLO,
        config: SimConfig,
        models: list[str],
        policy: str = "aegaeon",
    ):
        self.loop, self.cost, self.slo, self.config = loop, cost, slo, config
        num_prefill, num_decode = split_instances(config)
        self.dispatcher = PrefillDispatcher(num_prefill, cost, config.max_group_size)
        self.prefill = [
            _PrefillExecutor(
                resident=SimResidentSet(config.device_memory_bytes, cost.weight_bytes)
                if config.residency
                else None
            )
            for _ in range(num_prefill)
        ]
        capacity = kv_capacity_bytes(
            config.device_memory_bytes, [cost.weight_bytes(m) for m in models]
        )
        rounds = RoundConfig(
            slo.tpot, config.max_quota, config.max_batch, config.prefetch, config.slo_aware_rounds
        )
        self.decode = [
            SimDecodeInstance(
                loop,
                cost,
                WeightedRoundRobin(cost, rounds, capacity),
                config.record_turns,
                config.device_memory_bytes,
                slo if config.slo_aware_rounds else None,
                config.residency,
                config.layerwise,
            )
            for _ in range(num_decode)
        ]
        self.prefill_switches = 0
        self.prefill_busy = 0.0
        self.groups: list[tuple[float, GroupStart]] = []  # with config.record_turns
        self._states: dict[int, RequestState] = {}

    @property
    def switches(self) -> int:
        return self.prefill_switches + sum(d.switches for d in self.decode)

    def exposed_switches(self) -> list[float]:
        """The switch time every decode turn paid (all of its copy, or what prefetch left exposed)."""
        return [t for d in self.decode for t in d.exposed_switches]

    def resident_evictions(self) -> int:
        """Resident models evicted, over every instance (with residency)."""
        return sum(p.resident.evictions for p in self.prefill) + sum(
            d.resident.evictions for d in self.decode
        )

    def instance_load(self, duration: float) -> dict[str, float]:
        """Busy seconds per instance per second of workload, by role. Decode instances decode ahead of the
        TPOT schedule whenever they hold requests, so only the prefill share tracks how much work there is."""
        return {
            "prefill": self.prefill_busy / (len(self.prefill) * duration),
            "decode": sum(d.busy_seconds for d in self.decode) / (len(self.decode) * duration),
        }

    # -- prefill ---------------------------------------------------------
    def submit(self, state: RequestState) -> None:
        self._states[state.spec.request_id] = state
        start = self.dispatcher.submit(state.spec, self.loop.now)
        if start is not None:
            self._run_group(start)
        elif self.config.prefill_prefetch:
            for instance in range(len(self.prefill)):
                self._maybe_prefetch(instance)

    def _maybe_prefetch(self, instance: int) -> None:
        """With prefetch: a busy prefill instance copies the model of the group after its running one (the
        paper's prefetched-model slot), once its own switch is done and when both models' weights fit."""
        executor = self.prefill[instance]
        upcoming = self.dispatcher.prefetch_target(instance)
        if executor.prefetching is not None or upcoming is None:
            return
        if executor.resident is not None:
            if upcoming in executor.resident:
                executor.prefetching = (upcoming, float("-inf"))  # nothing to copy
            elif executor.resident.make_room(
                executor.group_kv, {executor.loaded}, self.cost.weight_bytes(upcoming)
            ):
                executor.resident.touch(upcoming)
                executor.prefetching = (upcoming, max(self.loop.now, executor.copy_free_at))
            return
        weights = self.cost.weight_bytes(executor.loaded) + self.cost.weight_bytes(upcoming)
        if weights <= self.config.device_memory_bytes:
            executor.prefetching = (upcoming, max(self.loop.now, executor.copy_free_at))

    def _run_group(self, start: GroupStart) -> None:
        if self.config.record_turns:
            self.groups.append((self.loop.now, start))
        executor = self.prefill[start.instance]
        switch = self.cost.switch_time(executor.loaded, start.model)
        if executor.prefetching is not None and executor.prefetching[0] == start.model:
            switch = max(0.0, switch - max(0.0, self.loop.now - executor.prefetching[1]))
        elif executor.resident is not None and start.model in executor.resident:
            switch = 0.0  # resident: re-bind only
        queued = 0.0
        if (
            switch > 0
            and executor.prefetching is not None
            and executor.prefetching[0] != start.model
        ):
            # a copy of another model is in flight: live, this switch's copy waits for it (one link)
            model, began = executor.prefetching
            queued = max(0.0, began + self.cost.switch_time(None, model) - self.loop.now)
        if executor.resident is not None:
            self._keep_resident(executor, start)
        executor.prefetching = None
        executor.copy_free_at = self.loop.now + queued + switch
        if self.config.layerwise and switch > 0:
            first = start.requests[0]
            switch = switch_exposure(
                self.cost.switch_time(None, start.model),
                switch,
                self.cost.prefill_time(start.model, [first.input_len]),
                self.cost.stage_shares(start.model),
            )
        switch += queued
        executor.exposed_switches.append(switch)
        t = self.loop.now + switch
        self.prefill_switches += executor.loaded != start.model
        executor.loaded = start.model
        if self.config.prefill_prefetch:
            self._maybe_prefetch(start.instance)
        for spec in start.requests:  # one after another: each first token as early as possible
            state = self._states[spec.request_id]
            t += self.cost.prefill_time(spec.model, [spec.input_len])
            state.token_times.append(t)
            if not state.finished:
                handoff = self.cost.swap_time(
                    spec.input_len * self.cost.kv_bytes_per_token(spec.model)
                )
                self.loop.at(t + handoff, lambda s=state: self._to_decode(s))
        self.prefill_busy += t - self.loop.now
        self.loop.at(t, lambda: self._group_done(start.instance))

    def _keep_resident(self, executor: _PrefillExecutor, start: GroupStart) -> None:
        """The group's model takes a run of free memory beside its prompts' KV, evicting the models used
        longest ago (prefill instances have no round to predict from); none left if even that is short."""
        resident = executor.resident
        pending = executor.prefetching
        if pending is not None and pending[0] != start.model:
            if self.loop.now < pending[1] + self.cost.switch_time(None, pending[0]):
                resident.drop(pending[0])  # its copy never completed
        kv = executor.group_kv = sum(
            spec.input_len * self.cost.kv_bytes_per_token(spec.model) for spec in start.requests
        )
        extra = 0 if start.model in resident else self.cost.weight_bytes(start.model)
        if not resident.make_room(kv, {start.model}, extra):
            resident.last_used.clear()
        resident.touch(start.model)

    def _group_done(self, instance: int) -> None:
        start = self.dispatcher.group_done(instance, self.loop.now)
        if start is not None:
            self._run_group(start)

    # -- decode ----------------------------------------------------------
    def _to_decode(self, state: RequestState) -> None:
        loads = [d.load() for d in self.decode]
        self.decode[choose_decode_instance(state.model, loads, self.config.max_batch)].arrive(state)
