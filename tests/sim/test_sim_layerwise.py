"""Layer-wise readiness in the simulator: a switch exposes what the rule of aegaeon.sched.layerwise says,
on decode and prefill instances, and the variant is tagged."""

from dataclasses import dataclass

import pytest

from aegaeon.config.sim import SimConfig
from aegaeon.sched.layerwise import StageShares, switch_exposure
from aegaeon.sched.request import RequestSpec, RequestState
from aegaeon.sched.rounds import RoundConfig, WeightedRoundRobin
from aegaeon.sim.core import EventLoop
from aegaeon.sim.decode_instance import SimDecodeInstance
from tests.sched.fixed_cost import FixedCost

FOUR = StageShares((0.25,) * 4, (0.25,) * 4)


@dataclass
class StagedCost(FixedCost):
    def stage_shares(self, model):
        return FOUR


def _decode(layerwise: bool):
    loop, cost = EventLoop(), StagedCost(step={"a": 0.5, "b": 0.5})
    instance = SimDecodeInstance(
        loop, cost, WeightedRoundRobin(cost, RoundConfig(0.1, 4.0)), layerwise=layerwise
    )
    instance.states = [RequestState(RequestSpec(i, m, 0.0, 10, 40)) for i, m in enumerate("ab")]
    for state in instance.states:
        state.token_times.append(0.0)
        loop.at(0.0, lambda s=state: instance.arrive(s))
    loop.run(until=10_000)
    return instance


def test_a_decode_switch_exposes_the_rule_and_its_tokens_come_sooner():
    whole, layered = _decode(False), _decode(True)
    # a 1 s copy under a 0.5 s first step in 4 equal stages: max(1/4, 1 - 0.5 * 3/4) = 0.625
    expected = switch_exposure(1.0, 1.0, 0.5, FOUR)
    assert expected == pytest.approx(0.625)
    copies = [t for t in whole.exposed_switches if t > 0]
    assert copies and set(copies) == {1.0}
    assert [t for t in layered.exposed_switches if t > 0] == [pytest.approx(expected)] * len(copies)
    assert max(s.token_times[-1] for s in layered.states) < max(
        s.token_times[-1] for s in whole.states
    )


def test_a_prefill_switch_overlaps_the_first_prompt_and_the_variant_is_tagged():
    from aegaeon.profiles import cost_model_for_workload
    from aegaeon.sched.slo import SLO
    from aegaeon.sim.runner import simulate

    specs = [RequestSpec(i, f"synth_model_{i % 3:02d}", 2.0 * i, 4000, 20) for i in range(12)]
    cost = cost_model_for_workload({s.model for s in specs})
    plain_states, plain = simulate("aegaeon", specs, cost, SLO(), SimConfig(num_gpus=2), 40.0)
    states, layered = simulate(
        "aegaeon", specs, cost, SLO(), SimConfig(num_gpus=2, layerwise=True), 40.0
    )
    assert plain["variant"] == "" and layered["variant"] == "layerwise"
    # each group is one long prompt of a new model: its first token comes sooner by what the prefill
    # overlapped, never later
    gains = [p.token_times[0] - s.token_times[0] for p, s in zip(plain_states, states)]
    assert min(gains) > 0
    for spec, gain in zip(specs, gains):
        whole_copy = cost.switch_time(None, spec.model)
        forward = cost.prefill_time(spec.model, [spec.input_len])
        exposed = switch_exposure(whole_copy, whole_copy, forward, cost.stage_shares(spec.model))
        assert gain == pytest.approx(whole_copy - exposed, rel=1e-6)


@pytest.mark.parametrize("layerwise", [False, True])
def test_a_switch_to_another_model_waits_for_the_copy_in_flight(layerwise):
    loop, cost = EventLoop(), StagedCost(step={"a": 0.5, "b": 0.5, "c": 0.5})
    instance = SimDecodeInstance(
        loop, cost, WeightedRoundRobin(cost, RoundConfig(0.1, 4.0)), layerwise=layerwise
    )
    instance.loaded = "a"
    instance.prefetching = ("b", -0.3)  # b's 1 s copy began 0.3 s ago: 0.7 s left
    state = RequestState(RequestSpec(0, "c", 0.0, 10, 3))
    state.token_times.append(0.0)
    instance.states = [state]
    loop.at(0.0, lambda: instance.arrive(state))
    loop.run(until=100)
    own = switch_exposure(1.0, 1.0, 0.5, FOUR) if layerwise else 1.0
    assert instance.exposed_switches[0] == pytest.approx(0.7 + own)
    assert state.token_times[1] == pytest.approx(0.7 + own + 0.5)
