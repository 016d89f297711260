"""The simulator and the live node execute the same decisions.

The same arrivals and the same per-step, per-switch and per-prefill times go to (a) the live side's
scheduling path with its executor replaced by a recorded-time stub at the executor seam (the decode worker's
`DecodeLoop`; the proxy's `Router`) and (b) the simulator with those times as its cost model. The decode
turns (model, request ids, quota) and the prefill groups must come out identical.
"""

import heapq
import random
from dataclasses import dataclass

import pytest

from aegaeon.config.sim import SimConfig
from aegaeon.engine.executor import SeqUpdate
from aegaeon.engine.runner import SwitchRecord
from aegaeon.ipc.messages import StepDone
from aegaeon.sched.cost import MeasuredCost
from aegaeon.sched.request import RequestSpec, RequestState
from aegaeon.sched.rounds import RoundConfig, WeightedRoundRobin
from aegaeon.sched.slo import SLO, next_token_deadline
from aegaeon.serve.links import WorkerLink
from aegaeon.serve.requests import RequestTable
from aegaeon.serve.router import Router
from aegaeon.sim.aegaeon_system import AegaeonSystem
from aegaeon.sim.core import EventLoop
from aegaeon.sim.decode_instance import SimDecodeInstance
from aegaeon.worker.decode_loop import DecodeLoop

STEPS = {"a": 0.0137, "b": 0.0211, "c": 0.0319}  # seconds per decode step, whatever the batch
SWITCHES = {"a": 0.153, "b": 0.271, "c": 0.389}


@dataclass
class RecordedCost:
    """The recorded times as a cost model (the simulator's) and as what the stub executor takes."""

    prefill_per_token: float = 0.0007

    def decode_time(self, model, batch, context_tokens):
        return STEPS[model]

    def switch_time(self, from_model, to_model):
        return 0.0 if from_model == to_model else SWITCHES[to_model]

    def prefill_time(self, model, input_lens):
        return self.prefill_per_token * sum(input_lens)

    def swap_time(self, nbytes):
        return 0.0

    def weight_bytes(self, model):
        return 1000

    def kv_bytes_per_token(self, model):
        return 1


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class RecordedExecutor:
    """The executor seam of a decode worker, stubbed: each step and switch advances the clock by its recorded
    time; requests end after their output length."""

    def __init__(self, clock: FakeClock, cost: RecordedCost):
        self.clock, self.cost = clock, cost
        self.bound = None
        self.requests: dict[int, list] = {}  # id -> [spec, tokens made]

    def add(self, spec: RequestSpec):
        self.requests[spec.request_id] = [spec, 1]  # its first token came from prefill

    def switch_to(self, model):
        if model == self.bound:
            return None
        seconds = self.cost.switch_time(self.bound, model)
        self.clock.now += seconds
        self.bound = model
        return SwitchRecord(model, seconds, 0, 0, 0)

    def set_upcoming(self, models):
        self.upcoming = list(models)  # no residency here: every switch costs its recorded time

    def take_weight_wait(self):
        return 0.0  # switches are whole before the first step here

    def wait_landed(self):
        pass

    def step(self, model, request_ids):
        self.clock.now += self.cost.decode_time(model, len(request_ids), 0)
        updates = []
        for i in request_ids:
            entry = self.requests[i]
            entry[1] += 1
            done = entry[1] >= entry[0].output_len
            updates.append(SeqUpdate(i, (0,), "length" if done else None))
            if done:
                del self.requests[i]
        return updates

    def context_len(self, request_id):
        spec, made = self.requests[request_id]
        return spec.input_len + made

    def fail_model(self, model, reason):
        raise AssertionError("no model fails here")


class Arrivals:
    """DecodeHooks of the stubbed worker: requests reach it at their recorded times (seen between steps)."""

    def __init__(self, specs, clock, executor, slo=None):
        self.pending = sorted(specs, key=lambda s: s.arrival)
        self.clock, self.executor, self.loop, self.slo = clock, executor, None, slo

    def poll(self):
        while self.pending and self.pending[0].arrival <= self.clock.now:
            spec = self.pending.pop(0)
            self.executor.add(spec)
            # with SLO-aware rounds the worker is told when the first decode token is due (its first
            # token came at arrival here, as the simulator's requests have it)
            due = None
            if self.slo is not None:
                due = next_token_deadline(spec.arrival, [spec.arrival], self.slo)
            self.loop.arrive(spec.request_id, spec.model, due)

    def turn_started(self, turn):
        pass

    def switched(self, turn, record):
        pass

    def switch_landed(self, turn, record):
        pass

    def stepped(self, model, batch, context, seconds, updates):
        pass

    def turn_done(self, turn, steps, seconds, switch_seconds):
        pass


def decode_workload(seed, count=60, span=20.0):
    rng = random.Random(seed)
    specs = [
        RequestSpec(
            i, rng.choice("abc"), rng.uniform(0, span), rng.randrange(8, 200), rng.randrange(2, 400)
        )
        for i in range(count)
    ]
    return sorted(specs, key=lambda s: s.arrival)


def live_turns(specs, rounds, capacity, slo=None):
    clock, cost = FakeClock(), RecordedCost()
    executor = RecordedExecutor(clock, cost)
    measured = MeasuredCost(
        prior=cost
    )  # learns from the recorded steps; the same times the simulator has
    hooks = Arrivals(specs, clock, executor, slo)
    loop = DecodeLoop(
        executor,
        WeightedRoundRobin(measured, rounds, capacity),
        measured,
        clock,
        hooks,
        record_turns=True,
    )
    hooks.loop = loop
    while hooks.pending or loop.live:
        if not loop.live:
            clock.now = max(clock.now, hooks.pending[0].arrival)  # idle until the next arrival
        hooks.poll()
        loop.run_next_turn()
    return loop.turn_log


def sim_turns(specs, rounds, capacity, slo=None):
    loop, cost = EventLoop(), RecordedCost()
    instance = SimDecodeInstance(
        loop, cost, WeightedRoundRobin(cost, rounds, capacity), record_turns=True, slo=slo
    )
    for spec in specs:
        state = RequestState(spec, token_times=[spec.arrival])
        loop.at(spec.arrival, lambda s=state: instance.arrive(s))
    loop.run(until=1e9)
    return instance.turn_log


def assert_same_turns(live, sim):
    assert len(live) == len(sim) and len(live) > 10
    for (t_live, a), (t_sim, b) in zip(live, sim):
        assert (a.model, a.request_ids) == (b.model, b.request_ids), (t_live, t_sim)
        assert a.quota == pytest.approx(b.quota, abs=1e-3)
        assert t_live == pytest.approx(t_sim, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decode_turns_of_the_live_worker_loop_and_the_simulator_are_identical(seed):
    specs = decode_workload(seed)
    rounds = RoundConfig(
        tpot_slo=0.1, max_quota=4.0, max_batch=8
    )  # a small cap: batches fill and refill
    assert_same_turns(live_turns(specs, rounds, 10**9), sim_turns(specs, rounds, 10**9))


@pytest.mark.parametrize("seed,ttft", [(0, 5.0), (1, 2.0)])
def test_slo_aware_turns_of_the_live_worker_loop_and_the_simulator_are_identical(seed, ttft):
    specs = decode_workload(seed)
    slo = SLO(ttft=ttft, tpot=0.1)  # first decode deadlines a few quotas away: some turns get cut
    rounds = RoundConfig(tpot_slo=0.1, max_quota=4.0, max_batch=8, slo_aware=True)
    live = live_turns(specs, rounds, 10**9, slo)
    assert_same_turns(live, sim_turns(specs, rounds, 10**9, slo))
    plain = RoundConfig(tpot_slo=0.1, max_quota=4.0, max_batch=8)
    cut = [a.quota for (_, a) in live]
    paper = [a.quota for (_, a) in live_turns(specs, plain, 10**9)]
    assert cut != paper  # deadlines were at risk: some turns were shortened


def test_decode_turns_agree_when_kv_capacity_limits_the_rounds():
    specs = decode_workload(3, count=40, span=5.0)
    rounds = RoundConfig(tpot_slo=0.05, max_quota=2.0, max_batch=64)
    assert_same_turns(live_turns(specs, rounds, 1500), sim_turns(specs, rounds, 1500))


def live_groups(specs, instances):
    """The proxy's router, its workers stubbed: a group's StepDone comes back after its recorded time."""
    clock, cost = FakeClock(), RecordedCost()
    table = RequestTable()
    links = [WorkerLink(i, "prefill", None, None) for i in range(instances)]
    router = Router(links, [], table.get, clock, cost=MeasuredCost(prior=cost))
    router.group_log = []
    events = [(s.arrival, 0, s.request_id, s) for s in specs]
    heapq.heapify(events)
    seen = 0
    while events:
        clock.now, kind, _, item = heapq.heappop(events)
        if kind == 0:
            request = table.admit(
                dict(
                    model=item.model, prompt_ids=(1,) * item.input_len, max_tokens=item.output_len
                ),
                item.arrival,
            )
            router.dispatch(request)
        else:
            router.group_done(
                links[item.instance],
                StepDone(item.model, 1, item.busy_until - item.started, item.switch),
            )
        for start_time, start in router.group_log[
            seen:
        ]:  # groups started now: their completion is recorded
            loaded = _loaded_before(router.group_log[:seen], start.instance)
            switch = cost.switch_time(loaded, start.model)
            heapq.heappush(
                events, (start.busy_until, 1, -start.instance, _Done(start, start_time, switch))
            )
        seen = len(router.group_log)
    return router.group_log


@dataclass
class _Done:
    start: object
    started: float
    switch: float

    @property
    def instance(self):
        return self.start.instance

    @property
    def model(self):
        return self.start.model

    @property
    def busy_until(self):
        return self.start.busy_until


def _loaded_before(log, instance):
    models = [s.model for _, s in log if s.instance == instance]
    return models[-1] if models else None


def sim_groups(specs, instances):
    loop = EventLoop()
    config = SimConfig(num_gpus=instances + 1, prefill_instances=instances, record_turns=True)
    system = AegaeonSystem(loop, RecordedCost(), SLO(), config, list(STEPS))
    for spec in specs:
        state = RequestState(spec)
        loop.at(spec.arrival, lambda s=state: system.submit(s))
    loop.run(until=1e9)
    return system.groups


@pytest.mark.parametrize("seed", [0, 1])
def test_prefill_groups_of_the_proxy_router_and_the_simulator_are_identical(seed):
    rng = random.Random(seed)
    specs = sorted(
        (
            RequestSpec(i, rng.choice("abc"), rng.uniform(0, 8), rng.randrange(100, 2000), 1)
            for i in range(80)
        ),
        key=lambda s: s.arrival,
    )
    specs = [
        RequestSpec(i, s.model, s.arrival, s.input_len, s.output_len) for i, s in enumerate(specs)
    ]
    live, sim = live_groups(specs, 3), sim_groups(specs, 3)
    assert len(live) == len(sim) and any(len(g.requests) > 1 for _, g in live)
    for (t_live, a), (t_sim, b) in zip(live, sim):
        assert (a.instance, a.model, a.request_ids) == (b.instance, b.model, b.request_ids)
        assert t_live == pytest.approx(t_sim, abs=1e-6)
