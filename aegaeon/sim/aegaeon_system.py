"""Aegaeon in the simulator: disaggregated prefill/decode with token-level scaling.

Prefill instances run grouped FCFS (aegaeon.sched.prefill); each request's KV
then moves to a decode instance (its swap overlaps compute, so it only delays
that request). Decode instances run weighted round-robin rounds
(aegaeon.sched.decode): regroup, plan quotas, then per batch switch and decode.
A request that reaches a decode instance while its model's turn is running
joins the running batch at the next step, as the live decode worker admits it
between steps (continuous batching within a turn).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field

from aegaeon.sched.cost import CostModel
from aegaeon.sched.decode import (DecodeCandidate, RoundPlan, choose_decode_instance, form_batches, plan_round,
                                  rotate_to_loaded)
from aegaeon.sched.prefill import GroupedFCFS
from aegaeon.sched.request import RequestState
from aegaeon.sched.slo import SLO
from aegaeon.sim.core import EventLoop, SimConfig, decode_for


@dataclass
class _PrefillInstance:
    busy_until: float = 0.0
    loaded: str | None = None
    running: bool = False


@dataclass
class _Segment:
    """Decoding in progress: `batch` decodes from `start` for up to `left` seconds of the turn's quota."""

    batch: list[RequestState]
    start: float
    left: float


@dataclass
class _DecodeInstance:
    requests: list[RequestState] = field(default_factory=list)
    loaded: str | None = None
    running: bool = False
    turns: list[tuple[str, float]] = field(default_factory=list)  # (model, quota) left in this round
    round_models: list[str] = field(default_factory=list)
    turn_model: str | None = None  # the model whose turn runs now (switching or decoding)
    segment: _Segment | None = None
    epoch: int = 0  # bumped when a segment is cut short, so its pending end event is ignored


class AegaeonSystem:
    name = "aegaeon"

    def __init__(self, loop: EventLoop, cost: CostModel, slo: SLO, config: SimConfig):
        self.loop, self.cost, self.slo, self.config = loop, cost, slo, config
        num_prefill = config.prefill_instances or max(1, config.num_gpus // 4)
        if num_prefill >= config.num_gpus:
            num_prefill = max(1, config.num_gpus - 1)
        self.prefill_sched = GroupedFCFS(num_prefill, config.max_group_size)
        self.prefill = [_PrefillInstance() for _ in range(num_prefill)]
        self.decode = [_DecodeInstance() for _ in range(max(1, config.num_gpus - num_prefill))]
        self.switches = 0
        self.busy_seconds = {"prefill": 0.0, "decode": 0.0}  # switching + computing, summed over instances
        self._states: dict[int, RequestState] = {}

    def instance_load(self, duration: float) -> dict[str, float]:
        """Busy seconds per instance per second of workload, by role. Decode instances decode ahead of the
        TPOT schedule whenever they hold requests, so only the prefill share tracks how much work there is."""
        return {"prefill": self.busy_seconds["prefill"] / (len(self.prefill) * duration),
                "decode": self.busy_seconds["decode"] / (len(self.decode) * duration)}

    # -- prefill ---------------------------------------------------------
    def submit(self, state: RequestState) -> None:
        self._states[state.spec.request_id] = state
        busy = [p.busy_until for p in self.prefill]
        loaded = [p.loaded for p in self.prefill]
        placement = self.prefill_sched.submit(state.spec, busy, loaded, self.loop.now, self.cost)
        if not self.prefill[placement.instance].running:
            self._start_group(placement.instance)

    def _start_group(self, index: int) -> None:
        instance = self.prefill[index]
        group = self.prefill_sched.next_group(index)
        if group is None:
            instance.running = False
            return
        instance.running = True
        t = self.loop.now + self.cost.switch_time(instance.loaded, group.model)
        self.switches += instance.loaded != group.model
        instance.loaded = group.model
        for spec in group.requests:  # one by one: each first token as early as possible
            state = self._states[spec.request_id]
            t += self.cost.prefill_time(spec.model, [spec.input_len])
            state.token_times.append(t)
            if not state.finished:
                handoff = self.cost.swap_time(spec.input_len * self.cost.kv_bytes_per_token(spec.model))
                self.loop.at(t + handoff, lambda s=state: self._to_decode(s))
        instance.busy_until = t
        self.busy_seconds["prefill"] += t - self.loop.now
        self.loop.at(t, lambda: self._start_group(index))

    # -- decode ----------------------------------------------------------
    def _to_decode(self, state: RequestState) -> None:
        index = self._choose_decode(state.model)
        instance = self.decode[index]
        instance.requests.append(state)
        if instance.running:
            self._join_round(index, state)
        else:
            self._start_round(index)

    def _live(self, state: RequestState) -> bool:
        """Not finished by now. A running segment lays its token times out ahead, so a request in it can look
        finished before its last token's time."""
        return not state.finished or state.token_times[-1] > self.loop.now

    def _choose_decode(self, model: str) -> int:
        loads = [Counter(s.model for s in d.requests if self._live(s)) for d in self.decode]
        return choose_decode_instance(model, loads, self.config.max_batch)

    def _start_round(self, index: int) -> None:
        """Top of a round: regroup every request into per-model batches and plan quotas."""
        instance = self.decode[index]
        instance.requests = [s for s in instance.requests if not s.finished]
        if not instance.requests:
            instance.running, instance.turns, instance.round_models = False, [], []
            return
        instance.running = True
        plan = self._plan(instance, instance.requests)
        instance.turns = list(zip((b.model for b in plan.batches), plan.quotas))
        instance.round_models = [b.model for b in plan.batches]
        self._next_turn(index)

    def _plan(self, instance: _DecodeInstance, requests: list[RequestState]) -> RoundPlan:
        candidates = [DecodeCandidate(s.spec.request_id, s.model, s.context_len) for s in requests]
        largest = max(self.cost.weight_bytes(c.model) for c in candidates)
        batches, _waiting = form_batches(candidates, self.cost, self.config.device_memory_bytes - largest,
                                         self.config.max_batch)
        if not batches:  # the first request alone overflows memory: run it anyway, it cannot wait forever
            batches, _ = form_batches(candidates[:1], self.cost, 2**62, self.config.max_batch)
        batches = rotate_to_loaded(batches, instance.loaded)
        return plan_round(batches, instance.loaded, self.cost, self.slo.tpot, self.config.max_quota)

    def _join_round(self, index: int, state: RequestState) -> None:
        """A request arriving mid-round joins its model's running batch at the next step or its model's coming
        turn; otherwise it gets a turn at the round's end."""
        instance = self.decode[index]
        if instance.turn_model == state.model and self._join_running_batch(index):
            return
        if any(model == state.model for model, _ in instance.turns):
            return  # the batch is formed when the turn starts, so it joins then
        models = instance.round_models + [state.model]
        members = [s for s in instance.requests if self._live(s) and s.model in models]
        plan = self._plan(instance, members)
        quota = dict(zip((b.model for b in plan.batches), plan.quotas)).get(state.model)
        if quota is not None:
            instance.turns.append((state.model, quota))
            instance.round_models.append(state.model)

    def _join_running_batch(self, index: int) -> bool:
        """Make room for a new member of the running turn's batch; False when the batch is full.

        The segment's token times were laid out ahead of time; those after the step in flight are taken back
        and the segment restarts, with the newcomer, when that step ends.
        """
        instance = self.decode[index]
        segment = instance.segment
        if segment is None:
            return True  # still switching: the batch forms when decoding starts
        if len(segment.batch) >= self.config.max_batch:
            return False
        now = self.loop.now
        in_flight = [s.token_times[i] for s in segment.batch
                     if (i := bisect_right(s.token_times, now)) < len(s.token_times)]
        if not in_flight:
            return True  # the segment ends now; the next one forms its batch afresh
        cut = min(in_flight)
        for member in segment.batch:
            del member.token_times[bisect_right(member.token_times, cut):]
        instance.epoch += 1
        instance.segment = None
        self.busy_seconds["decode"] += cut - segment.start
        left = segment.left - (cut - segment.start)
        self.loop.at(cut, lambda: self._decode_segment(index, left))
        return True

    def _next_turn(self, index: int) -> None:
        instance = self.decode[index]
        instance.turn_model, instance.segment = None, None
        if not instance.turns:
            self._start_round(index)
            return
        model, quota = instance.turns.pop(0)
        if not self._turn_batch(instance, model):
            self.loop.at(self.loop.now, lambda: self._next_turn(index))
            return
        instance.turn_model = model
        switch = self.cost.switch_time(instance.loaded, model)
        self.switches += instance.loaded != model
        instance.loaded = model
        self.busy_seconds["decode"] += switch
        self.loop.at(self.loop.now + switch, lambda: self._decode_segment(index, quota))

    def _turn_batch(self, instance: _DecodeInstance, model: str) -> list[RequestState]:
        return [s for s in instance.requests if s.model == model and not s.finished][: self.config.max_batch]

    def _decode_segment(self, index: int, left: float) -> None:
        """Decode the turn's batch, formed now, for what is left of its quota."""
        instance = self.decode[index]
        batch = self._turn_batch(instance, instance.turn_model)
        if not batch or left <= 0:
            self._next_turn(index)
            return
        start = self.loop.now
        end = decode_for(self.cost, instance.turn_model, batch, start, left)
        instance.segment = _Segment(batch, start, left)
        epoch = instance.epoch
        self.loop.at(end, lambda: self._segment_done(index, epoch))

    def _segment_done(self, index: int, epoch: int) -> None:
        instance = self.decode[index]
        if epoch != instance.epoch:
            return  # cut short by a newcomer; a new segment is under way
        segment, instance.segment = instance.segment, None
        spent = self.loop.now - segment.start
        self.busy_seconds["decode"] += spent
        self._decode_segment(index, segment.left - spent)  # others of the model may be left to decode
