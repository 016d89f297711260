"""Sweep plumbing for `aegaeon sim`: option lists, workload files, points."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, TypeVar

from aegaeon.errors import ConfigError
from aegaeon.sched.request import RequestSpec
from aegaeon.sim.runner import RunLabel
from aegaeon.workload import (
    WorkloadSpec,
    generate,
    load_workload,
    workload_filename,
    write_workload,
)

log = logging.getLogger(__name__)
T = TypeVar("T", int, float)


def parse_list(text: str, kind: Callable[[str], T], flag: str) -> list[T]:
    """'16,20,24' or a range 'START:STOP:STEP' (STOP included)."""
    try:
        if ":" in text:
            start, stop, step = (kind(x) for x in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError("need STEP > 0 and STOP >= START")
            values, v = [], start
            while v <= stop + (1e-9 if kind is float else 0):
                values.append(round(v, 6) if kind is float else v)
                v += step
            return values
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ConfigError(f"{flag} {text!r}: {exc}; use e.g. 16,20,24 or 16:80:4") from exc
    if not values:
        raise ConfigError(f"{flag} is empty: give at least one value")
    return values


def workload_path(label: RunLabel, workloads_dir: Path, seed: int = 0) -> Path:
    """Where the workload of `label` and `seed` lives: the file name has no seed, so seeds other than 0 keep
    theirs in a `seed<K>/` subfolder (a run with another seed never picks up seed 0's file)."""
    folder = Path(workloads_dir) if seed == 0 else Path(workloads_dir) / f"seed{seed}"
    return folder / workload_filename(
        label.num_models, label.arrival_rate, label.inlen_scale, label.outlen_scale
    )


def ensure_workload(
    label: RunLabel, workloads_dir: Path, duration: float, seed: int
) -> tuple[list[RequestSpec], float]:
    """Loads the workload file of `label` and `seed` (see `workload_path`), generating it first if missing."""
    path = workload_path(label, workloads_dir, seed)
    if path.exists():
        requests = load_workload(path)
        return requests, max(duration if _covers(requests, duration) else 0.0, requests[-1].arrival)
    spec = WorkloadSpec(
        label.num_models, label.arrival_rate, duration, label.inlen_scale, label.outlen_scale, seed
    )
    requests = generate(spec)
    if not requests:
        raise ConfigError(
            f"workload {path.name} over {duration} s has no requests: raise --duration"
        )
    write_workload(path, requests)
    log.info("generated %s (%d requests)", path, len(requests))
    return requests, duration


def _covers(requests: list[RequestSpec], duration: float) -> bool:
    return requests[-1].arrival <= duration


def sweep_points(
    policies: list[str], num_models: list[int], rates: list[float], inlen: float, outlen: float
) -> list[tuple[str, RunLabel]]:
    """Every (policy, workload) pair, grouped by workload so each is loaded once."""
    return [(p, RunLabel(n, r, inlen, outlen)) for n in num_models for r in rates for p in policies]
