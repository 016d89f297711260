"""Calibrating a profile's decode costs against serving quanta (aegaeon bench sim-vs-live)."""

import pytest

from aegaeon.bench.market_profile import (
    DecodeCalibration,
    MarketProfile,
    decode_scale,
    fit_calibration,
)
from aegaeon.profiles import H100_LINK
from aegaeon.sched.cost import ModelCost


def _cost(name, hidden):
    """Steps of a few ms, as on this machine: 2 ms and up fixed, 0.1-0.2 ms per sequence, more with context."""
    return ModelCost(
        name, hidden, 2 * hidden, 16, 10**6, 512, 4096, (1e-12, 0.0, 1e-3), (6e-8, 2e-9, 3e-9)
    )


MARKET = MarketProfile(
    {"synth_model_00": _cost("small", 64), "synth_model_01": _cost("large", 96)},
    H100_LINK,
    (),
    "test",
)


def _live(serving):
    """A live result whose quanta took serving(profiled step, batch) per step."""
    quanta = []
    for i, (batch, context, steps) in enumerate(
        [(1, 40, 30), (2, 300, 12), (4, 900, 20), (7, 2000, 5), (3, 150, 40), (5, 1200, 9)]
    ):
        model = f"synth_model_0{i % 2}"
        profiled = MARKET.costs[model].decode_time(batch, context)
        step = serving(profiled, batch)
        quanta.append(
            {
                "model": model,
                "steps": steps,
                "batch": batch,
                "context": context,
                "seconds": 0.9 * step * steps,
                "wall": step * steps,
            }
        )
    return {"trace": {"quanta": quanta}}


def test_the_fit_recovers_scale_and_overheads_and_rewrites_the_profile_with_them():
    live = _live(lambda profiled, batch: 1.3 * profiled + 2e-4 + 5e-5 * batch)
    calibration = fit_calibration([live], MARKET)
    assert calibration.scale == pytest.approx(1.3, rel=1e-6)
    assert calibration.per_step == pytest.approx(2e-4, rel=1e-6)
    assert calibration.per_sequence == pytest.approx(5e-5, rel=1e-6)
    calibrated = MARKET.cost_model(calibration)
    for name, cost in MARKET.costs.items():
        for batch, context in [(1, 10), (6, 3000)]:
            expected = 1.3 * cost.decode_time(batch, context) + 2e-4 + 5e-5 * batch
            assert calibrated.decode_time(name, batch, context) == pytest.approx(expected, rel=1e-9)


def test_a_negative_overhead_is_dropped_rather_than_fitted():
    live = _live(lambda profiled, batch: 1.2 * profiled - 1e-5 * batch)
    calibration = fit_calibration([live], MARKET)
    assert (
        calibration.per_sequence == 0.0 and calibration.per_step >= 0.0 and calibration.scale > 1.0
    )


def test_no_quanta_leave_the_profile_as_it_is_and_the_ratio_uses_wall_time():
    assert fit_calibration([{"trace": {"quanta": []}}], MARKET) == DecodeCalibration()
    live = _live(
        lambda profiled, batch: 1.5 * profiled
    )  # the steps alone took 0.9 of the wall time
    assert decode_scale(live, MARKET) == pytest.approx(1.5)


def test_each_run_is_predicted_from_a_calibration_on_the_other_runs_only(monkeypatch, tmp_path):
    import aegaeon.bench.sim_vs_live as svl
    from aegaeon.bench.e2e import E2ERun

    scales = {(1.0, 0): 1.1, (1.0, 1): 1.3, (2.0, 0): 1.5, (2.0, 1): 1.7}
    lives = {}

    def fake_run(run, models_root, workloads_dir, progress):
        live = _live(lambda profiled, batch: scales[(run.arrival_rate, run.seed)] * profiled)
        live["key"] = (run.arrival_rate, run.seed)
        lives[live["key"]] = live
        return live

    predicted = {}

    def fake_predict(run, requests, live, market, calibration):
        predicted[live["key"]] = calibration
        return svl.Comparison(live, {}, {}, {}, 1.0)

    monkeypatch.setattr(svl, "run_e2e", fake_run)
    monkeypatch.setattr(svl, "load_requests", lambda run, workloads_dir: [])
    monkeypatch.setattr(svl, "predict", fake_predict)

    class Quiet:
        def __enter__(self):
            return lambda done, total: None

        def __exit__(self, *exc):
            return False

    rows = svl.compare_points(
        E2ERun(num_models=2),
        [(2, 1.0), (2, 2.0)],
        [0, 1],
        tmp_path,
        tmp_path,
        MARKET,
        [],
        lambda label: Quiet(),
        lambda seed, comparison: None,
    )
    assert [(r.num_models, r.rate) for r in rows] == [(2, 1.0), (2, 2.0)]
    assert all(len(r.comparisons) == 2 for r in rows)
    for key, calibration in predicted.items():
        others = [live for other, live in lives.items() if other != key]
        assert calibration == fit_calibration(others, MARKET)
        assert calibration != fit_calibration(list(lives.values()), MARKET)


def test_behind_an_emulated_link_the_simulator_copies_at_exactly_its_rate(monkeypatch):
    import aegaeon.bench.sim_vs_live as svl
    from aegaeon.bench.e2e import E2ERun
    from aegaeon.sched.request import RequestSpec

    seen = {}

    def fake_simulate(policy, requests, cost, slo, config, duration):
        seen["cost"] = cost
        return [], {}

    monkeypatch.setattr(svl, "simulate", fake_simulate)
    monkeypatch.setattr(
        svl, "result_record", lambda *args, source: args[6]
    )  # the run's extra fields
    requests = [RequestSpec(0, "synth_model_00", 0.0, 8, 4)]
    record = svl.simulate_like_live(
        E2ERun(num_models=2, instances=2, link_gbps=0.02), requests, MARKET
    )
    cost = seen["cost"]
    assert record["link_gbps"] == 0.02
    # a weight copy of 10**6 bytes and a swap of 4 MB at 0.02 GB/s, whatever share the measured link had
    assert cost.switch_time(None, "synth_model_00") == pytest.approx(10**6 / 0.02e9, rel=1e-12)
    fast = cost.with_switch_efficiency(cost.link.fast_switch_efficiency)
    assert fast.switch_time("synth_model_01", "synth_model_00") == pytest.approx(
        10**6 / 0.02e9, rel=1e-12
    )
    assert cost.swap_time(4 * 10**6) == pytest.approx(4 * 10**6 / 0.02e9, rel=1e-12)
    svl.simulate_like_live(E2ERun(num_models=2, instances=2), requests, MARKET)
    assert seen["cost"].link == MARKET.link  # without the option, the measured link


@pytest.mark.parametrize(
    "prefetch, residency, kv_mib, slots",
    [(False, False, 32, 1), (True, False, 32, 2), (True, True, 8, 1), (False, True, 32, 1)],
)
def test_the_simulated_device_is_the_live_workers_arena(
    monkeypatch, prefetch, residency, kv_mib, slots
):
    """Largest weights plus the KV room, and a second weight slot only with prefetch without residency
    (residency copies prefetches into the KV's free slabs); the simulator runs what the node runs."""
    import aegaeon.bench.sim_vs_live as svl
    from aegaeon.bench.e2e import E2ERun
    from aegaeon.sched.request import RequestSpec

    seen = {}

    def fake_simulate(policy, requests, cost, slo, config, duration):
        seen["config"] = config
        return [], {}

    monkeypatch.setattr(svl, "simulate", fake_simulate)
    monkeypatch.setattr(svl, "result_record", lambda *args, source: args[6])
    run = E2ERun(num_models=2, instances=2, prefetch=prefetch, residency=residency, kv_mib=kv_mib)
    svl.simulate_like_live(run, [RequestSpec(0, "synth_model_00", 0.0, 8, 4)], MARKET)
    config = seen["config"]
    largest = max(c.weight_bytes for c in MARKET.costs.values())
    assert config.device_memory_bytes == slots * largest + kv_mib * 2**20
    assert (config.prefetch, config.prefill_prefetch, config.residency) == (
        prefetch,
        prefetch,
        residency,
    )


def test_a_run_without_kv_room_is_refused():
    from aegaeon.bench.e2e import E2ERun
    from aegaeon.errors import ConfigError

    with pytest.raises(ConfigError, match="--kv-mib"):
        E2ERun(kv_mib=0).validate()
