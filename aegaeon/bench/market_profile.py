"""This machine's profile of the market shapes, and its decode costs calibrated against live serving.

The profile is `aegaeon profile`'s measurement (`aegaeon.profiler.measure_profile`) of one model of each
market shape, with the thread count each live worker gets. The calibration fits, over the decode quanta
of live runs, serving step = a x profile + b + c x batch (`DecodeCalibration`): what serving adds around
each step (token reports, bookkeeping) that the profile's bare forwards do not have. Used by
`aegaeon.bench.sim_vs_live`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from aegaeon.bench.e2e import E2ERun, market_models
from aegaeon.profiler import ProfileRequest, measure_profile
from aegaeon.profiles import load_profile, write_profile
from aegaeon.sched.cost import LinkCost, ModelCost, TableCostModel
from aegaeon.worker.spec import default_threads

PROFILE_INPUT_LENS = (8, 16, 32, 64, 128, 256, 384)
PROFILE_BATCHES = (1, 2, 4, 8)
PROFILE_DECODE_STEPS = 16  # per repeat: this VM's step times swing by ~20%, so average more of them
PROFILE_REPEATS = 3


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
