"""Does the simulator predict the live system? Same workload, same device, both scored by the same SLO code.

1. Profile each market shape on this machine with `aegaeon profile`'s code
   (`aegaeon.profiler.measure_profile`), with the thread count each live worker gets.
2. Replay the workload live (`aegaeon.bench.e2e.run_e2e`, token-level policy).
3. Simulate the same requests with the Aegaeon system of `aegaeon.sim`, fed with
   those profiles, on as many instances with the same prefill/decode split,
   batch limit and arena size.

The figure is the difference in SLO attainment, in points. To tell the
simulator's policy model apart from its cost inputs, each run is simulated a
second time with the decode costs scaled to what that run's decode steps
actually took (the ratio of measured to profiled step time over its decode
quanta, reported by the workers): the "in-situ" prediction. It is a
diagnostic, not a prediction (it reads the run it predicts).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from aegaeon.bench.e2e import E2ERun, load_requests, market_models, node_config, run_e2e
from aegaeon.engine.worker import default_threads
from aegaeon.profiler import ProfileRequest, measure_profile
from aegaeon.profiles import load_profile, write_profile
from aegaeon.sched.cost import TableCostModel
from aegaeon.sim.core import SimConfig
from aegaeon.sim.runner import result_record, simulate

log = logging.getLogger(__name__)

PROFILE_INPUT_LENS = (8, 16, 32, 64, 128, 256, 384)
PROFILE_BATCHES = (1, 2, 4, 8)
PROFILE_DECODE_STEPS = 16  # per repeat: this VM's step times swing by ~20%, so average more of them
PROFILE_REPEATS = 3


@dataclass(frozen=True)
class Comparison:
    live: dict
    sim: dict
    in_situ: dict  # the simulator with decode costs scaled to the run's measured steps
    decode_scale: float

    @property
    def gap_points(self) -> float:
        return 100.0 * (self.sim["slo_attainment"] - self.live["slo_attainment"])

    @property
    def in_situ_gap_points(self) -> float:
        return 100.0 * (self.in_situ["slo_attainment"] - self.live["slo_attainment"])


def decode_scale(live: dict, profiles: dict[str, Path]) -> float:
    """Measured / profiled decode step time over a live run's decode quanta (1.0 when it has none)."""
    costs = {name: load_profile(path)[0] for name, path in profiles.items()}
    measured = predicted = 0.0
    for quantum in live["trace"].get("quanta", []):
        cost = costs.get(quantum["model"])
        if cost is None:
            continue
        measured += quantum["seconds"]
        predicted += quantum["steps"] * cost.decode_time(max(1, round(quantum["batch"])), round(quantum["context"]))
    return measured / predicted if predicted > 0 else 1.0


def worker_threads(run: E2ERun) -> int:
    return default_threads(run.instances)


def profile_market(run: E2ERun, models_root: Path, profiles_root: Path,
                   progress: Callable[[str], None] | None = None, input_lens: tuple[int, ...] = PROFILE_INPUT_LENS,
                   batches: tuple[int, ...] = PROFILE_BATCHES) -> tuple[dict[str, Path], str]:
    """Profiles one model of each market shape (as many threads as a live worker has); returns
    synth model name -> profile path, and the profile device folder."""
    models = market_models(run.num_models, models_root)
    threads = worker_threads(run)
    device_name = f"cpu-{threads}t"
    shape_of = {name: i % 2 for i, name in enumerate(sorted(models))}
    written: dict[int, Path] = {}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for shape in sorted(set(shape_of.values())):
            name = f"market-shape{shape}"
            if progress:
                progress(f"profiling {name} on {device_name}")
            request = ProfileRequest(Path(models[f"synth_model_{shape:02d}"]), name, "cpu", device_name,
                                     input_lens, batches, PROFILE_DECODE_STEPS, PROFILE_REPEATS)
            written[shape] = write_profile(measure_profile(request), profiles_root)
    finally:
        torch.set_num_threads(previous)
    return {name: written[shape] for name, shape in shape_of.items()}, device_name


def simulate_like_live(run: E2ERun, profiles: dict[str, Path], models_root: Path, workloads_dir: Path,
                       scale: float = 1.0, source: str = "sim-cpu") -> dict:
    """The simulator's prediction for `run`, on a system shaped like the live node (decode costs x `scale`)."""
    requests = load_requests(run, workloads_dir)
    costs, link = {}, None
    for name, path in profiles.items():
        costs[name], link = load_profile(path)
        costs[name] = replace(costs[name], decode_coefficients=tuple(c * scale for c in costs[name].decode_coefficients))
    cost = TableCostModel(costs, link)
    node = node_config(run, market_models(run.num_models, models_root))
    largest = max(cost.weight_bytes(name) for name in node.models)
    config = SimConfig(num_gpus=run.instances, device_memory_bytes=largest + node.engine.kv_bytes,
                       prefill_instances=run.prefill_instances, max_batch=node.engine.max_batch_size)
    states, extra = simulate("aegaeon", requests, cost, run.slo, config, run.duration)
    extra = {**extra, "instances": run.instances, "prefill_instances": run.prefill_instances, "device": "cpu",
             "profiles": sorted({str(p) for p in profiles.values()}), "decode_scale": scale}
    return result_record("aegaeon", run.label, states, run.slo, run.duration, run.instances, extra, source=source)


def compare(run: E2ERun, models_root: Path, workloads_dir: Path, profiles: dict[str, Path],
            progress: Callable[[int, int], None] | None = None) -> Comparison:
    run = replace(run, policy="aegaeon")
    live = run_e2e(run, models_root, workloads_dir, progress)
    sim = simulate_like_live(run, profiles, models_root, workloads_dir)
    scale = decode_scale(live, profiles)
    in_situ = simulate_like_live(run, profiles, models_root, workloads_dir, scale, source="sim-cpu-insitu")
    return Comparison(live, sim, in_situ, scale)


def default_instances() -> int:
    """One worker per core: the simulator does not model processes contending for a core."""
    return max(2, os.cpu_count() or 2)
