"""Prefetch in the policies and the simulator: quotas planned on the exposed switch, what to prefetch, and
the switch a prefetched turn pays (exact numbers on a hand-made cost model)."""

import pytest

from aegaeon.config.sim import SimConfig
from aegaeon.sched.decode import DecodeBatch, DecodeCandidate, compute_prefetch_quotas, plan_round
from aegaeon.sched.request import RequestSpec, RequestState
from aegaeon.sched.rounds import RoundConfig, WeightedRoundRobin
from aegaeon.sim.core import EventLoop
from aegaeon.sim.decode_instance import SimDecodeInstance
from tests.sched.fixed_cost import FixedCost


def test_prefetch_quotas_are_the_shortest_round_that_hides_every_copy():
    # steps 0.01 and 0.02 s at TPOT 0.1: n = 10 and 5; the copy of b (1 s) is hidden by a's turn, and
    # a's (1 s, at the next round's start) by b's: s = max(1 * 10, 1 * 5) = 10
    quotas, load = compute_prefetch_quotas([0.01, 0.02], [1.0, 1.0], 0.1, 4.0)
    assert quotas == pytest.approx((1.0, 2.0)) and load == pytest.approx(0.3)
    # capped: no quota above Q, so copies longer than that are partly exposed
    # capped: no quota above Q (s <= Q * min n = 20), so a 10 s copy is partly exposed
    quotas, _ = compute_prefetch_quotas([0.01, 0.02], [10.0, 0.0], 0.1, 4.0)
    assert quotas == pytest.approx((2.0, 4.0))
    assert compute_prefetch_quotas([0.01], [0.0], 0.1, 4.0)[0] == (4.0,)


def test_a_prefetched_round_exposes_only_what_a_turn_cannot_hide():
    cost = FixedCost()
    batches = [DecodeBatch("a", (1,), 10), DecodeBatch("b", (2,), 10), DecodeBatch("c", (3,), 10)]
    plain = plan_round(batches, "a", cost, 0.1, 4.0)
    assert plain.exposed == (0.0, 1.0, 1.0)
    fetched = plan_round(batches, "a", cost, 0.1, 4.0, prefetch=True)
    # n = 10, 5, 2: s = max(1 * 10, 1 * 5, 0 * 2) = 10, capped at Q * 2 = 8 -> quotas 0.8, 1.6, 4; a's
    # 0.8 s turn hides 0.8 s of b's 1 s copy, b's turn all of c's
    assert fetched.quotas == pytest.approx((0.8, 1.6, 4.0))
    assert fetched.exposed == pytest.approx((0.0, 0.2, 0.0))
    assert sum(fetched.quotas) < sum(plain.quotas) + plain.switch_cost  # the round is shorter


def test_the_policy_prefetches_the_next_turns_model_only_when_asked():
    cost = FixedCost()
    live = [DecodeCandidate(1, "a", 10), DecodeCandidate(2, "b", 10), DecodeCandidate(3, "c", 10)]
    for prefetch, expected in ((False, None), (True, "b")):
        policy = WeightedRoundRobin(cost, RoundConfig(0.1, 4.0, prefetch=prefetch))
        assert policy.next_turn(live).model == "a"
        assert policy.prefetch_target(live) == expected
    policy = WeightedRoundRobin(cost, RoundConfig(0.1, 4.0, prefetch=True))
    for _ in range(3):
        policy.next_turn(live)
    # the round's last turn (c): the next round runs c again, then a, the first other model waiting
    assert policy.prefetch_target(live) == "a"
    assert policy.prefetch_target([DecodeCandidate(3, "c", 10)]) is None


def _run_two_models(prefetch: bool, memory: int | None):
    loop, cost = EventLoop(), FixedCost()
    policy = WeightedRoundRobin(cost, RoundConfig(0.1, 4.0, prefetch=prefetch))
    instance = SimDecodeInstance(loop, cost, policy, device_memory_bytes=memory)
    for i, model in enumerate("ab"):
        state = RequestState(RequestSpec(i, model, 0.0, 10, 400))
        state.token_times.append(0.0)  # prefilled elsewhere
        loop.at(0.0, lambda s=state: instance.arrive(s))
    loop.run(until=1000)
    return instance


def test_a_prefetched_switch_costs_nothing_and_without_room_it_costs_the_copy():
    plain = _run_two_models(prefetch=False, memory=None)
    fetched = _run_two_models(prefetch=True, memory=None)
    # turns alternate a and b; a round starts with the loaded model (0: no switch)
    assert plain.exposed_switches[:6] == [1.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    # the first load is exposed; b's copy runs during a's first turn (0.25 s: planned when a was alone),
    # and from then on every copy is hidden behind the turn before it
    assert fetched.exposed_switches[0] == 1.0
    assert fetched.exposed_switches[1] == pytest.approx(0.75)
    assert max(fetched.exposed_switches[2:]) == 0.0 and len(fetched.exposed_switches) > 6
    tight = _run_two_models(prefetch=True, memory=150)  # one model's weights (100) and KV, not two
    assert tight.exposed_switches[:6] == [1.0, 1.0, 0.0, 1.0, 0.0, 1.0]


def test_prefetch_is_a_tagged_variant_of_the_simulated_system():
    from aegaeon.profiles import cost_model_for_workload
    from aegaeon.sched.slo import SLO
    from aegaeon.sim.runner import simulate

    specs = [RequestSpec(i, f"synth_model_{i % 3:02d}", 0.5 * i, 200, 300) for i in range(30)]
    cost = cost_model_for_workload({s.model for s in specs})
    _, plain = simulate("aegaeon", specs, cost, SLO(), SimConfig(num_gpus=2), 30.0)
    _, fetched = simulate("aegaeon", specs, cost, SLO(), SimConfig(num_gpus=2, prefetch=True), 30.0)
    assert plain["variant"] == "" and fetched["variant"] == "prefetch"
    assert fetched["decode_exposed_switch_mean"] < 0.5 * plain["decode_exposed_switch_mean"]


def test_prefill_prefetch_hides_the_next_groups_load_in_the_simulator():
    from aegaeon.profiles import cost_model_for_workload
    from aegaeon.sched.slo import SLO
    from aegaeon.sim.aegaeon_system import AegaeonSystem
    from aegaeon.sim.core import EventLoop

    # one prefill instance; four long prompts of each of six models arrive together, model by model, so
    # groups queue behind each other and each computes longer than the next one's load takes
    specs = [RequestSpec(i, f"synth_model_{i // 4:02d}", 0.001 * i, 8000, 2) for i in range(24)]
    cost = cost_model_for_workload({s.model for s in specs}).with_switch_efficiency(1 / 1.2)
    paid = {}
    for prefill_prefetch in (False, True):
        loop = EventLoop()
        config = SimConfig(num_gpus=2, prefill_instances=1, prefill_prefetch=prefill_prefetch)
        system = AegaeonSystem(loop, cost, SLO(), config, sorted({s.model for s in specs}))
        for spec in specs:
            loop.at(spec.arrival, lambda s=spec: system.submit(RequestState(s)))
        loop.run(until=1000)
        paid[prefill_prefetch] = system.prefill[0].exposed_switches
    # groups: model 0's first request alone (it started at once), the rest of model 0 (no switch), then
    # one group per model
    assert len(paid[False]) == len(paid[True]) == 7 and paid[False][1] == paid[True][1] == 0.0
    assert paid[True][0] == paid[False][0]  # the first load has nothing to hide behind
    assert max(paid[True][2:]) == 0.0 and min(paid[False][2:]) > 0.2


def test_a_prefill_instance_prefetches_its_next_groups_model_unless_it_is_loaded():
    from aegaeon.sched.prefill import PrefillDispatcher

    dispatcher = PrefillDispatcher(1, FixedCost(), max_group_size=2)
    spec = lambda i, model: RequestSpec(i, model, 0.0, 8, 4)  # noqa: E731
    start = dispatcher.submit(spec(0, "a"), 0.0)
    assert start is not None and start.model == "a"
    assert dispatcher.prefetch_target(0) is None  # nothing queued behind the running group
    assert dispatcher.submit(spec(1, "a"), 0.0) is None
    assert dispatcher.prefetch_target(0) is None  # the next group's model is the loaded one
    dispatcher.submit(spec(2, "a"), 0.0)  # joins the queued a group
    dispatcher.submit(spec(3, "b"), 0.0)
    assert dispatcher.prefetch_target(0) is None  # a's queued group comes first
    nxt = dispatcher.group_done(0, 1.0)
    assert nxt.model == "a" and dispatcher.prefetch_target(0) == "b"
    assert dispatcher.group_done(0, 2.0).model == "b" and dispatcher.prefetch_target(0) is None
