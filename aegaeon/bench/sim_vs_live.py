"""Does the simulator predict the live system? Same workload, same device, both scored by the same SLO code.

1. Profile each market shape on this machine with `aegaeon profile`'s code
   (`aegaeon.profiler.measure_profile`), with the thread count each live worker gets.
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

import numpy as np
import torch

from aegaeon.bench.e2e import E2ERun, load_requests, market_models, node_config, run_e2e
from aegaeon.config.sim import SimConfig
from aegaeon.profiler import ProfileRequest, measure_profile
from aegaeon.profiles import load_profile, write_profile
from aegaeon.sched.cost import LinkCost, ModelCost, TableCostModel
from aegaeon.sched.request import RequestSpec
from aegaeon.sim.runner import result_record, simulate
from aegaeon.worker.spec import default_threads

log = logging.getLogger(__name__)

PROFILE_INPUT_LENS = (8, 16, 32, 64, 128, 256, 384)
PROFILE_BATCHES = (1, 2, 4, 8)
PROFILE_DECODE_STEPS = 16  # per repeat: this VM's step times swing by ~20%, so average more of them
PROFILE_REPEATS = 3
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


@dataclass(frozen=True)
class DecodeCalibration:
    """Serving step time = scale x the profile's step + per_step + per_sequence x batch (seconds)."""

    scale: float = 1.0
    per_step: float = 0.0
    per_sequence: float = 0.0

    def describe(self) -> str:
        return (
            f"{self.scale:.2f} x profile + {self.per_step * 1e3:.3f} ms + {self.per_sequence * 1e3:.3f} ms "
            f"x batch"
        )

    def apply(self, cost: ModelCost) -> ModelCost:
        """The same terms in the profile's own form (constant, context and batch coefficients)."""
        dense = cost.decode_features(0, 0)[0]
        constant, context, batch = (c * self.scale for c in cost.decode_coefficients)
        return replace(
            cost,
            decode_coefficients=(
                constant + self.per_step / dense,
                context,
                batch + self.per_sequence / dense,
            ),
        )


@dataclass(frozen=True)
class MarketProfile:
    """This machine's profiles of the market shapes, read once: costs per synth model name."""

    costs: dict[str, ModelCost]
    link: LinkCost
    paths: tuple[str, ...]  # the profile files written
    device: str  # their folder under profiles/

    def cost_model(self, calibration: DecodeCalibration = DecodeCalibration()) -> TableCostModel:
        return TableCostModel(
            {name: calibration.apply(cost) for name, cost in self.costs.items()}, self.link
        )


def _quanta(live: dict, market: MarketProfile) -> list[tuple[float, float, float, int]]:
    """(profiled step, batch, serving step, steps) of each decode quantum of a live run.

    The serving step is the quantum's wall time per step: it counts what serving
    adds around each step (token reports, bookkeeping), not the forward alone.
    """
    rows = []
    for quantum in live["trace"].get("quanta", []):
        cost = market.costs.get(quantum["model"])
        if cost is None:
            continue
        profiled = cost.decode_time(max(1, round(quantum["batch"])), round(quantum["context"]))
        rows.append(
            (profiled, quantum["batch"], quantum["wall"] / quantum["steps"], quantum["steps"])
        )
    return rows


def decode_scale(live: dict, market: MarketProfile) -> float:
    """Serving / profiled decode step time over a live run's decode quanta (1.0 when it has none)."""
    rows = _quanta(live, market)
    predicted = sum(profiled * steps for profiled, _, _, steps in rows)
    return (
        sum(serving * steps for _, _, serving, steps in rows) / predicted if predicted > 0 else 1.0
    )


def fit_calibration(lives: list[dict], market: MarketProfile) -> DecodeCalibration:
    """Least squares over the quanta of `lives`, weighted by their steps, of serving step time on
    (profiled step, 1, batch). A term whose coefficient comes out negative is dropped and the rest refitted:
    an overhead cannot be negative, and a lone scale is what is left."""
    rows = [row for live in lives for row in _quanta(live, market)]
    if not rows:
        return DecodeCalibration()
    data = np.array(rows, dtype=np.float64)
    profiled, batch, serving, weight = data.T
    columns = {"scale": profiled, "per_step": np.ones_like(profiled), "per_sequence": batch}
    root = np.sqrt(weight)

    def fit(names: tuple[str, ...]) -> dict[str, float]:
        design = np.stack([columns[n] * root for n in names], axis=1)
        solution, *_ = np.linalg.lstsq(design, serving * root, rcond=None)
        return dict(zip(names, (float(x) for x in solution)))

    for names in (("scale", "per_step", "per_sequence"), ("scale", "per_step")):
        terms = fit(names)
        if min(terms.values()) >= 0:
            return DecodeCalibration(**terms)
    return DecodeCalibration(**fit(("scale",)))


def profile_market(
    run: E2ERun,
    models_root: Path,
    profiles_root: Path,
    progress: Callable[[str], None] | None = None,
    input_lens: tuple[int, ...] = PROFILE_INPUT_LENS,
    batches: tuple[int, ...] = PROFILE_BATCHES,
) -> MarketProfile:
    """Profiles one model of each market shape, with as many threads as a live worker has."""
    models = market_models(run.num_models, models_root)
    threads = default_threads(run.instances)
    device_name = f"cpu-{threads}t"
    shapes = sorted({i % 2 for i in range(run.num_models)})
    by_shape: dict[int, tuple[ModelCost, LinkCost]] = {}
    paths = []
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for shape in shapes:
            name = f"market-shape{shape}"
            if progress:
                progress(f"profiling {name} on {device_name}")
            request = ProfileRequest(
                Path(models[f"synth_model_{shape:02d}"]),
                name,
                "cpu",
                device_name,
                input_lens,
                batches,
                PROFILE_DECODE_STEPS,
                PROFILE_REPEATS,
            )
            path = write_profile(measure_profile(request), profiles_root)
            by_shape[shape] = load_profile(path)
            paths.append(str(path))
    finally:
        torch.set_num_threads(previous)
    costs = {name: by_shape[i % 2][0] for i, name in enumerate(sorted(models))}
    return MarketProfile(costs, by_shape[shapes[-1]][1], tuple(paths), device_name)


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
    # the live decode workers' arena (largest weights + KV), batch cap and quota cap
    config = SimConfig(
        num_gpus=run.instances,
        device_memory_bytes=largest + node.engine.kv_bytes,
        prefill_instances=run.prefill_instances,
        max_batch=node.max_batch,
        max_quota=node.max_quota,
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
