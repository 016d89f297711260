"""Resident models in the simulator: which switches cost nothing, what is evicted, and that KV always wins
(exact numbers on a hand-made cost model: every model's weights are 100 bytes, one byte of KV a token)."""

import pytest

from aegaeon.config.sim import SimConfig
from aegaeon.sched.request import RequestSpec, RequestState
from aegaeon.sched.rounds import RoundConfig, WeightedRoundRobin
from aegaeon.sim.core import EventLoop
from aegaeon.sim.decode_instance import SimDecodeInstance
from aegaeon.sim.resident import SimResidentSet
from tests.sched.fixed_cost import FixedCost


def _run(
    models: str,
    memory: int | None,
    residency: bool,
    input_len: int = 10,
    output_len: int = 400,
    kv_per_token: int = 1,
    probe=None,
):
    """One request per letter of `models`, all there at 0; `probe(instance)` runs as each segment starts."""
    loop, cost = EventLoop(), FixedCost(kv_per_token=kv_per_token)
    policy = WeightedRoundRobin(cost, RoundConfig(0.1, 4.0))
    instance = SimDecodeInstance(
        loop, cost, policy, device_memory_bytes=memory, residency=residency
    )
    if probe is not None:
        decode = instance._decode

        def probed():
            decode()
            probe(instance)

        instance._decode = probed
    instance.states = [
        RequestState(RequestSpec(i, model, 0.0, input_len, output_len))
        for i, model in enumerate(models)
    ]
    for state in instance.states:
        state.token_times.append(0.0)  # prefilled elsewhere
        loop.at(0.0, lambda s=state: instance.arrive(s))
    loop.run(until=10_000)
    return instance


def test_a_round_revisiting_resident_models_pays_only_their_first_copies():
    plain = _run("abc", None, residency=False)
    resident = _run("abc", None, residency=True)
    # each round starts with the loaded model (no switch), then copies the other two
    assert plain.exposed_switches[:6] == [1.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    # the first load of each model is paid; every later turn re-binds
    assert resident.exposed_switches[:3] == [1.0, 1.0, 1.0]
    assert len(resident.exposed_switches) > 6 and set(resident.exposed_switches[3:]) == {0.0}
    assert resident.resident.evictions == 0
    # every token made, and the last ones sooner than when each turn copies
    assert all(len(s.token_times) == 400 for s in resident.states)
    assert max(s.token_times[-1] for s in resident.states) < max(
        s.token_times[-1] for s in plain.states
    )


def test_memory_for_two_models_keeps_the_one_needed_sooner():
    # 3 models of 100 bytes (no KV) in 250 bytes: two stay. The first round's last turn (c) evicts b, since a
    # comes first in the next round (c, a, b); b's turn then evicts c, needed after a
    instance = _run("abc", 250, residency=True, kv_per_token=0)
    assert instance.exposed_switches[:6] == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    assert instance.resident.evictions >= 2
    # never more resident than fits beside the bound model (KV is never displaced)
    assert instance.resident.resident_bytes() <= 250


def test_kv_evicts_resident_models_first():
    # two models of 100 bytes in 260: both stay while the two requests' KV is at most 60 bytes; past that
    # the one not bound is evicted, and each switch copies again
    seen = []

    def probe(instance):
        seen.append((instance._kv_in_use(), sorted(instance.resident.last_used)))

    instance = _run("ab", 260, residency=True, input_len=10, output_len=400, probe=probe)
    for kv, resident in seen:
        assert kv + 100 * len(resident) <= 260 or len(resident) == 1, (kv, resident)
    assert any(len(resident) == 2 for _, resident in seen)  # small KV: both resident
    assert any(kv > 60 and len(resident) == 1 for kv, resident in seen)  # large KV: one evicted
    assert instance.resident.evictions > 0
    assert {0.0, 1.0} <= set(instance.exposed_switches[2:])  # re-binds, then copies again


def test_eviction_takes_the_model_not_coming_back_then_the_furthest():
    resident = SimResidentSet(300, lambda model: 100)
    for model in "abc":
        resident.touch(model)
    resident.set_upcoming(["c", "a"])
    assert resident.make_room(0, {"c"}, 100)  # b is not coming back: it goes
    assert sorted(resident.last_used) == ["a", "c"]
    resident.touch("b")
    resident.set_upcoming(["b", "c", "a"])
    assert resident.make_room(50, {"b"}, 0)  # all coming back: a's next use is furthest
    assert sorted(resident.last_used) == ["b", "c"]
    assert not resident.make_room(250, {"b", "c"})  # only protected models left
    assert resident.evictions == 2


def test_residency_is_a_tagged_variant_and_cuts_the_exposed_switch():
    from aegaeon.profiles import cost_model_for_workload
    from aegaeon.sched.slo import SLO
    from aegaeon.sim.runner import simulate

    specs = [RequestSpec(i, f"synth_model_{i % 3:02d}", 0.5 * i, 200, 300) for i in range(30)]
    cost = cost_model_for_workload({s.model for s in specs})
    _, plain = simulate("aegaeon", specs, cost, SLO(), SimConfig(num_gpus=2), 30.0)
    states, kept = simulate(
        "aegaeon", specs, cost, SLO(), SimConfig(num_gpus=2, residency=True), 30.0
    )
    assert plain["variant"] == "" and kept["variant"] == "resident"
    assert kept["decode_exposed_switch_mean"] < 0.5 * plain["decode_exposed_switch_mean"]
    assert kept["resident_evictions"] == 0  # three small models fit an 80 GiB device
    assert all(s.finished for s in states)


@pytest.mark.parametrize("prefetch", [False, True])
def test_prefill_instances_keep_their_models_resident(prefetch):
    from aegaeon.profiles import cost_model_for_workload
    from aegaeon.sched.slo import SLO
    from aegaeon.sim.aegaeon_system import AegaeonSystem

    specs = [RequestSpec(i, f"synth_model_{i % 3:02d}", 2.0 * i, 200, 20) for i in range(12)]
    cost = cost_model_for_workload({s.model for s in specs})
    models = sorted({s.model for s in specs})

    def prefill_switches(residency: bool) -> list[float]:
        loop = EventLoop()
        config = SimConfig(num_gpus=2, residency=residency, prefill_prefetch=prefetch)
        system = AegaeonSystem(loop, cost, SLO(), config, models)
        for spec in specs:
            loop.at(spec.arrival, lambda s=spec: system.submit(RequestState(s)))
        loop.run(until=1000)
        return system.prefill[0].exposed_switches

    plain, resident = prefill_switches(False), prefill_switches(True)
    assert len(plain) == len(resident) == 12
    assert min(plain) > 0  # one request per group, a new model each time
    assert all(t > 0 for t in resident[:3]) and set(resident[3:]) == {0.0}
