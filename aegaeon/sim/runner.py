"""Run simulations and write result JSON (the schema the live benchmark uses too).

Result JSON keys: policy, num_models, arrival_rate, inlen_scale, outlen_scale,
num_gpus, ttft_slo, tpot_slo, slo_attainment (0..1, aegaeon.sched.slo),
slo_attainment_paper (the paper artifact's scorer, aegaeon.sched.slo.paper_attainment),
met_both_share, goodput (req/s), finished_share, ttft_p50/p90/p99,
tpot_p50/p90/p99 (s, finished requests), second_token_gap_p50/p90/p99 (s from
the first token to the second: for Aegaeon the KV handoff plus the wait for the
model's first decode turn), switches, unservable_models, source ("sim" or
"live"), for simulated aegaeon `instance_load` (busy seconds per instance per
second of workload, prefill and decode; decode instances run ahead of the TPOT
schedule, so theirs nears 1 at moderate load), `max_quota` and `variant`
(non-default Aegaeon settings, e.g. "q2_eff1"; empty for the defaults; it also
goes into the file name so an ablation never overwrites the default result),
and `requests`: per-request records (id, model, arrival, input_len,
output_len, ttft, tpot, attainment, finish).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from aegaeon.config.sim import SimConfig
from aegaeon.errors import ConfigError
from aegaeon.sched.cost import TableCostModel
from aegaeon.sched.decode import DEFAULT_MAX_QUOTA
from aegaeon.sched.policies import policy as policy_info
from aegaeon.sched.request import RequestSpec, RequestState
from aegaeon.sched.slo import SLO, meets_both, paper_attainment, request_attainment, summarize
from aegaeon.sim.aegaeon_system import AegaeonSystem
from aegaeon.sim.core import EventLoop
from aegaeon.sim.report import result_variant

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunLabel:
    """What a result stands for (goes into the JSON and its file name)."""

    num_models: int
    arrival_rate: float
    inlen_scale: float = 1.0
    outlen_scale: float = 1.0


def simulate(
    policy: str,
    requests: Sequence[RequestSpec],
    cost: TableCostModel,
    slo: SLO,
    config: SimConfig,
    duration: float,
    aegaeon_switch_efficiency: float | None = None,
) -> tuple[list[RequestState], dict]:
    """Replays `requests` through one system; returns final states and extra facts.

    Request-level systems load models at the link's `switch_efficiency`;
    Aegaeon switches at `fast_switch_efficiency` unless told otherwise.
    """
    if not requests:
        raise ConfigError("cannot simulate an empty workload")
    variant = ""
    if policy == "aegaeon":
        variant = aegaeon_variant(
            config.max_quota, aegaeon_switch_efficiency, cost.link.fast_switch_efficiency
        )
        cost = cost.with_switch_efficiency(
            aegaeon_switch_efficiency or cost.link.fast_switch_efficiency
        )
    loop = EventLoop()
    system_class = policy_info(policy).system_class()
    if config.replay_seconds is not None:  # the same window for every system (the artifact's 120 s)
        requests = [r for r in requests if r.arrival < config.replay_seconds]
        duration = min(duration, config.replay_seconds)
        if not requests:
            raise ConfigError(f"no arrivals in the first {config.replay_seconds:g} s to replay")
    until = duration * config.horizon_factor + slo.ttft
    if getattr(system_class, "runs_to_completion", False):  # the artifact-faithful baselines
        until = float("inf")
    models = sorted({r.model for r in requests})
    system = system_class(loop, cost, slo, config, models, policy)
    states = [RequestState(spec) for spec in requests]
    for state in states:
        loop.at(state.spec.arrival, lambda s=state: system.submit(s))
    loop.run(until=until)
    extra = {
        "switches": system.switches,
        "unservable_models": getattr(system, "unservable", []),
        "switch_efficiency": cost.link.switch_efficiency,
    }
    if hasattr(system, "kv_losses"):
        extra.update(kv_losses=system.kv_losses, failed=system.failed)
    if isinstance(system, AegaeonSystem):
        exposed = system.exposed_switches()
        extra.update(
            instance_load=system.instance_load(duration),
            max_quota=config.max_quota,
            variant="_".join(
                p
                for p in (
                    variant,
                    "prefetch" if config.prefetch else "",
                    "pfprefill" if config.prefill_prefetch else "",
                    "sloround" if config.slo_aware_rounds else "",
                    "resident" if config.residency else "",
                    "layerwise" if config.layerwise else "",
                )
                if p
            ),
            decode_exposed_switch_mean=float(np.mean(exposed)) if exposed else None,
            decode_exposed_switch_p50=float(np.percentile(exposed, 50)) if exposed else None,
            decode_exposed_switch_p99=float(np.percentile(exposed, 99)) if exposed else None,
            resident_evictions=system.resident_evictions() if config.residency else None,
        )
    return states, extra


def aegaeon_variant(
    max_quota: float, switch_efficiency: float | None, default_efficiency: float
) -> str:
    """A short tag of the Aegaeon settings that differ from the defaults ("" when none do)."""
    parts = []
    if abs(max_quota - DEFAULT_MAX_QUOTA) > 1e-12:
        parts.append(f"q{max_quota:g}")
    if switch_efficiency is not None and abs(switch_efficiency - default_efficiency) > 1e-12:
        parts.append(f"eff{switch_efficiency:g}")
    return "_".join(parts)


def result_record(
    policy: str,
    label: RunLabel,
    states: Sequence[RequestState],
    slo: SLO,
    duration: float,
    num_gpus: int,
    extra: dict,
    source: str = "sim",
) -> dict:
    records = [
        (s.spec.arrival, s.token_times[: s.spec.output_len], s.spec.output_len) for s in states
    ]
    summary = summarize(records, slo, duration)
    finished = [s for s in states if s.finished]
    ttfts = [s.token_times[0] - s.spec.arrival for s in finished]
    tpots = [
        (s.token_times[s.spec.output_len - 1] - s.token_times[0]) / (s.spec.output_len - 1)
        for s in finished
        if s.spec.output_len > 1
    ]
    second_gaps = [
        s.token_times[1] - s.token_times[0]
        for s in states
        if min(len(s.token_times), s.spec.output_len) > 1
    ]
    return {
        "policy": policy,
        "source": source,
        "num_models": label.num_models,
        "arrival_rate": label.arrival_rate,
        "inlen_scale": label.inlen_scale,
        "outlen_scale": label.outlen_scale,
        "num_gpus": num_gpus,
        "ttft_slo": slo.ttft,
        "tpot_slo": slo.tpot,
        "duration": duration,
        "num_requests": len(states),
        "slo_attainment": summary.slo_attainment,
        "slo_attainment_paper": summary.paper_attainment,
        "met_both_share": summary.met_both_share,
        "goodput": summary.goodput,
        "finished_share": summary.finished_share,
        **_percentiles("ttft", ttfts),
        **_percentiles("tpot", tpots),
        **_percentiles("second_token_gap", second_gaps),
        **extra,
        "requests": [_request_record(s, slo) for s in states],
    }


def _percentiles(name: str, values: list[float]) -> dict[str, float | None]:
    if not values:
        return {f"{name}_p{p}": None for p in (50, 90, 99)}
    return {f"{name}_p{p}": float(np.percentile(values, p)) for p in (50, 90, 99)}


def _request_record(state: RequestState, slo: SLO) -> dict:
    spec, times = state.spec, state.token_times[: state.spec.output_len]
    done = len(times) >= spec.output_len
    return {
        "id": spec.request_id,
        "model": spec.model,
        "arrival": spec.arrival,
        "input_len": spec.input_len,
        "output_len": spec.output_len,
        "ttft": times[0] - spec.arrival if times else None,
        "tpot": (times[-1] - times[0]) / (len(times) - 1) if done and len(times) > 1 else None,
        "finish": times[-1] if done else None,
        "attainment": request_attainment(spec.arrival, times, spec.output_len, slo),
        "paper_attainment": paper_attainment(spec.arrival, times, spec.output_len, slo),
        "met_both": meets_both(spec.arrival, times, spec.output_len, slo),
        "failed": state.failed,
    }


def result_filename(policy: str, label: RunLabel, slo: SLO, variant: str = "") -> str:
    system = f"{policy}_{variant}" if variant else policy
    return (
        f"{system}-{label.num_models}-{label.arrival_rate:g}-{label.inlen_scale:.1f}-{label.outlen_scale:.1f}"
        f"-ttft{slo.ttft:g}-tpot{slo.tpot:g}.json"
    )


def write_result(out_dir: Path, result: dict) -> Path:
    """Atomic write: a file under plots/json/ is always a complete result."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    label = RunLabel(
        result["num_models"], result["arrival_rate"], result["inlen_scale"], result["outlen_scale"]
    )
    name = result_filename(
        result["policy"],
        label,
        SLO(result["ttft_slo"], result["tpot_slo"]),
        result.get("variant", ""),
    )
    path = out_dir / (
        name if result.get("source", "sim") == "sim" else f"{result['source']}-{name}"
    )
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(result, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def run_sweep(
    points: Iterable[tuple[str, RunLabel]],
    load_requests: Callable[[RunLabel], tuple[list, float]],
    make_cost: Callable[[list[RequestSpec], str], TableCostModel],
    slo: SLO,
    config: SimConfig,
    out_dir: Path,
    progress: Callable[[str, dict], None] | None = None,
    aegaeon_switch_efficiency: float | None = None,
    device: str | None = None,
    model_mapping: str | None = None,
) -> list[Path]:
    """Simulates every (policy, label) point and writes one JSON each; `device` (the profiles' device)
    is recorded in each, for the figures' titles. `make_cost(requests, mapping)` maps the workload's models
    to profiles by `model_mapping` ("index" or "appearance"; None: each policy's own, `default_mapping`)."""
    from aegaeon.profile_artifact import ARTIFACT_MAX_SEQ_LEN
    from aegaeon.profiles import default_mapping
    from aegaeon.workload import artifact_resample

    written, loaded, costs = [], {}, {}
    for policy, label in points:
        if label not in loaded:
            loaded, costs = {label: load_requests(label)}, {}
        requests, duration = loaded[label]
        mapping = model_mapping or default_mapping(policy)
        if mapping not in costs:
            costs[mapping] = make_cost(requests, mapping)
        replayed = requests
        if config.resample_lengths:
            cost = costs[mapping]
            replayed = artifact_resample(
                requests, lambda model: ARTIFACT_MAX_SEQ_LEN.get(cost.model(model).name, 4096)
            )
        states, extra = simulate(
            policy, replayed, costs[mapping], slo, config, duration, aegaeon_switch_efficiency
        )
        extra["model_mapping"] = mapping
        extra["replay_seconds"] = config.replay_seconds
        extra["tp"] = config.tp
        extra["variant"] = result_variant(policy, extra.get("variant", ""), mapping, config)
        if config.replay_seconds is not None:
            duration = min(duration, config.replay_seconds)
        result = result_record(policy, label, states, slo, duration, config.num_gpus, extra)
        if device is not None:
            result["device"] = device
        written.append(write_result(out_dir, result))
        if progress:
            progress(policy, result)
    return written
