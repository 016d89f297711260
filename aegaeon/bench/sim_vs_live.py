"""Does the simulator predict the live system? Same workload, same device, both scored by the same SLO code.

1. Profile each market shape on this machine with `aegaeon profile`'s code
   (`aegaeon.profiler.measure_profile`), with the thread count each live worker gets
   (`aegaeon.bench.market_profile`, as is the calibration of step 3).
2. Replay each workload live (`aegaeon.bench.e2e.run_e2e`, token-level policy),
   for each number of models, each rate and each seed.
3. Calibrate, leaving one out: for each run, the decode steps of every *other*
   run (and of optional extra runs on workloads of their own) are timed while
   serving (the wall time of each decode quantum per step, token reports
   included) against the profile's prediction for the same batch and context.
   A least-squares fit gives serving step = a x profile + b + c x batch, and
   the profile's decode coefficients are rewritten accordingly
   (`DecodeCalibration`). No run is predicted from its own measurements.
4. Simulate the run's requests with the Aegaeon system of `aegaeon.sim`, fed
   with that calibrated profile (and, for reference, the bare one), on as
   many instances with the same prefill/decode split, batch limit and arena size.
   When the live node runs behind the emulated link (`E2ERun.link_gbps`), the
   simulated link is that link: weight copies and KV swaps at exactly G, since
   the pacing, not the CPU's memcpy, is what the live transfers take then.

The figure is the difference in SLO attainment, in points, of the means over
the seeds: on a shared VM whose speed drifts, one live run past the knee can
land 15-30 points from another of the same rate. To tell the
simulator's policy model apart from its cost inputs, each run is simulated
once more with the decode costs scaled to what that run's own quanta took:
the "in-situ" prediction. It is a diagnostic, not a prediction (it reads the
run it predicts).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from aegaeon.bench.e2e import E2ERun, load_requests, node_config, run_e2e
from aegaeon.bench.market_profile import (
    DecodeCalibration,
    MarketProfile,
    decode_scale,
    fit_calibration,
)
from aegaeon.config.sim import SimConfig
from aegaeon.sched.cost import LinkCost
from aegaeon.sched.request import RequestSpec
from aegaeon.sim.runner import result_record, simulate

log = logging.getLogger(__name__)

CALIBRATION_SEED_OFFSET = 1000

# label -> a context whose value is a `progress(done, total)` callback
ProgressFactory = Callable[[str], AbstractContextManager[Callable[[int, int], None]]]


@dataclass(frozen=True)
class Comparison:
    live: dict
    sim: dict  # the prediction: the profile calibrated on the other runs (its JSON records the calibration)
    bare: dict  # the profile as measured, uncalibrated
    in_situ: dict  # the simulator with decode costs scaled to the run's measured quanta
    decode_scale: float  # this run's quanta / the bare profile


def emulated_link(measured: LinkCost, gbps: float) -> LinkCost:
    """The link a node paced at `gbps` has: every copy at exactly that rate (aegaeon.device_link)."""
    return replace(
        measured,
        h2d_bandwidth=gbps * 1e9,
        switch_efficiency=1.0,
        swap_efficiency=1.0,
        fast_switch_efficiency=1.0,
    )


def simulate_like_live(
    run: E2ERun,
    requests: list[RequestSpec],
    market: MarketProfile,
    calibration: DecodeCalibration = DecodeCalibration(),
    source: str = "sim-cpu",
) -> dict:
    """The simulator's prediction for `run`, on a system shaped like the live node, with calibrated decode costs."""
    if run.link_gbps:
        market = replace(market, link=emulated_link(market.link, run.link_gbps))
    cost = market.cost_model(calibration)
    node = node_config(run, {})
    largest = max(c.weight_bytes for c in market.costs.values())
    # the live decode workers' arena (largest weights + KV, and with prefetch the staging slot of the
    # largest model's size beside it, unless residency makes prefetches copy into the KV's free slabs),
    # batch cap and quota cap
    staging = run.prefetch and not run.residency
    config = SimConfig(
        num_gpus=run.instances,
        device_memory_bytes=largest * (2 if staging else 1) + node.engine.kv_bytes,
        prefill_instances=run.prefill_instances,
        max_batch=node.max_batch,
        max_quota=node.max_quota,
        replay_seconds=None,  # the live run replays all of its workload
        prefetch=run.prefetch,  # live --prefetch: decode workers and prefill workers both prefetch
        prefill_prefetch=run.prefetch,
        residency=run.residency,
        layerwise=run.layerwise,
        slo_aware_rounds=run.slo_aware_rounds,
    )
    states, extra = simulate("aegaeon", requests, cost, run.slo, config, run.duration)
    extra = {
        **extra,
        "instances": run.instances,
        "prefill_instances": run.prefill_instances,
        "device": "cpu",
        "profiles": list(market.paths),
        "decode_calibration": asdict(calibration),
        "link_gbps": run.link_gbps,
    }
    return result_record(
        "aegaeon", run.label, states, run.slo, run.duration, run.instances, extra, source=source
    )


def calibration_runs(
    run: E2ERun,
    rates: list[float],
    models_root: Path,
    workloads_dir: Path,
    runs: int,
    progress: ProgressFactory,
) -> list[dict]:
    """`runs` extra live runs of `run`'s shape for the calibration alone, at `rates` in turn (highest first).

    Their workloads have seeds of their own (from CALIBRATION_SEED_OFFSET on).
    """
    order = sorted(set(rates), reverse=True)
    lives = []
    for index in range(runs):
        seed, rate = run.seed + CALIBRATION_SEED_OFFSET + index, order[index % len(order)]
        with progress(f"calibration at rate {rate:g} (seed {seed})") as advance:
            lives.append(
                run_e2e(
                    replace(run, policy="aegaeon", seed=seed, arrival_rate=rate),
                    models_root,
                    workloads_dir,
                    advance,
                )
            )
    return lives


def predict(
    run: E2ERun,
    requests: list[RequestSpec],
    live: dict,
    market: MarketProfile,
    calibration: DecodeCalibration,
) -> Comparison:
    """One live run against the simulator: with the calibrated profile, the bare profile and in situ."""
    scale = decode_scale(live, market)
    return Comparison(
        live,
        simulate_like_live(run, requests, market, calibration),
        simulate_like_live(run, requests, market, source="sim-cpu-bare"),
        simulate_like_live(
            run, requests, market, DecodeCalibration(scale), source="sim-cpu-insitu"
        ),
        scale,
    )


@dataclass(frozen=True)
class PointSummary:
    """Every seed's comparison at one (number of models, rate), and their means (run-to-run noise is large
    on a shared VM)."""

    num_models: int
    rate: float
    comparisons: tuple[Comparison, ...]

    def mean(self, which: str) -> float:
        """Mean SLO attainment of "live", "sim", "bare" or "in_situ" over the seeds."""
        return sum(getattr(c, which)["slo_attainment"] for c in self.comparisons) / len(
            self.comparisons
        )

    def gap_points(self, which: str) -> float:
        return 100.0 * (self.mean(which) - self.mean("live"))

    @property
    def live_range(self) -> tuple[float, float]:
        values = [c.live["slo_attainment"] for c in self.comparisons]
        return min(values), max(values)

    @property
    def requests(self) -> float:
        return sum(c.live["num_requests"] for c in self.comparisons) / len(self.comparisons)

    @property
    def decode_scale(self) -> float:
        return sum(c.decode_scale for c in self.comparisons) / len(self.comparisons)


def compare_points(
    base: E2ERun,
    points: list[tuple[int, float]],
    seeds: list[int],
    models_root: Path,
    workloads_dir: Path,
    market: MarketProfile,
    extra_lives: list[dict],
    progress: ProgressFactory,
    written: Callable[[int, Comparison], None],
) -> list[PointSummary]:
    """Each (number of models, rate) with each seed's workload, live first; then each run is predicted with the
    profile calibrated on every other run (leave one out) and `extra_lives`."""
    runs = []
    for num_models, rate in points:
        for seed in seeds:
            run = replace(
                base, num_models=num_models, arrival_rate=rate, seed=seed, policy="aegaeon"
            )
            with progress(f"live {num_models} models rate {rate:g} seed {seed}") as advance:
                runs.append((run, run_e2e(run, models_root, workloads_dir, advance)))
    comparisons = []
    for index, (run, live) in enumerate(runs):
        others = [other for j, (_, other) in enumerate(runs) if j != index] + extra_lives
        comparison = predict(
            run, load_requests(run, workloads_dir), live, market, fit_calibration(others, market)
        )
        written(run.seed, comparison)
        comparisons.append(comparison)
    per_point = len(seeds)
    return [
        PointSummary(num_models, rate, tuple(comparisons[i * per_point : (i + 1) * per_point]))
        for i, (num_models, rate) in enumerate(points)
    ]


def default_instances() -> int:
    """One worker per core: the simulator does not model processes contending for a core."""
    return max(2, os.cpu_count() or 2)
