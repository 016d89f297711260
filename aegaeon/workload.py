"""Synthetic workloads in the paper's CSV format, and their loader.

Format (kept from the paper's tools so files interchange):
  header  `Request Time,Model Name,Input Length,Output Length`
  time    `HH:MM:SS.mmm` since the start; rows sorted by time
  models  `synth_model_00`, `synth_model_01`, ...
  file    `synth-<N>-<R>-<X>-<Y>.csv`: N models, R req/s per model, input and
          output length scales X and Y with one decimal.

Each model has its own Poisson arrival process of rate R over the duration
(its own random stream, so adding models leaves the others' arrivals as they
were). Lengths are drawn from ShareGPT pairs measured with the tokenizer of the
model a synthetic model stands for, scaled, capped to its context, with at
least 16 output tokens.
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from aegaeon.config import PAPER_MIX, PAPER_MODELS, synthetic_model_name
from aegaeon.errors import ConfigError
from aegaeon.sched.request import RequestSpec

HEADER = ("Request Time", "Model Name", "Input Length", "Output Length")
MIN_OUTPUT_TOKENS = 16


@dataclass(frozen=True)
class WorkloadSpec:
    num_models: int
    arrival_rate: float  # requests/s per model
    duration: float  # seconds
    inlen_scale: float = 1.0
    outlen_scale: float = 1.0
    seed: int = 0
    mix: tuple[str, ...] = PAPER_MIX

    def __post_init__(self) -> None:
        if self.num_models < 1:
            raise ConfigError(f"--num-models {self.num_models}: need at least 1 model")
        if not self.arrival_rate > 0 or not self.duration > 0:
            raise ConfigError(
                f"arrival rate {self.arrival_rate} and duration {self.duration} must be positive"
            )
        if not self.inlen_scale > 0 or not self.outlen_scale > 0:
            raise ConfigError(
                f"length scales {self.inlen_scale}, {self.outlen_scale} must be positive"
            )
        unknown = sorted(set(self.mix) - set(PAPER_MODELS))
        if unknown:
            raise ConfigError(
                f"model mix names unknown models {unknown}; known: {sorted(PAPER_MODELS)}"
            )

    @property
    def filename(self) -> str:
        return workload_filename(
            self.num_models, self.arrival_rate, self.inlen_scale, self.outlen_scale
        )


PAPER_RATE_SWEEP = tuple(round(0.05 * k, 2) for k in range(1, 15))  # figure 11(c): 0.05 .. 0.70


def paper_grid(seed: int = 0) -> list[WorkloadSpec]:
    """The workload files of the paper's figures 11-13, as its artifact made them: 8..80 models by 2 at
    0.1 req/s (120 s) and 0.5 req/s (60 s), each also with inputs x2 and outputs x2, and 40 models at 0.05 ..
    0.70 req/s (60 s). The artifact's 40-model rate sweep overwrote its 120 s file of 40 models at 0.1; here
    that one stays a 120 s file like its neighbours (the sweep's 0.1 point reuses it)."""
    specs = []
    for rate, duration in ((0.1, 120.0), (0.5, 60.0)):
        for inlen, outlen in ((1.0, 1.0), (2.0, 1.0), (1.0, 2.0)):
            specs += [WorkloadSpec(n, rate, duration, inlen, outlen, seed) for n in range(8, 81, 2)]
    specs += [WorkloadSpec(40, r, 60.0, seed=seed) for r in PAPER_RATE_SWEEP if r not in (0.1, 0.5)]
    return specs


def workload_filename(
    num_models: int, arrival_rate: float, inlen_scale: float, outlen_scale: float
) -> str:
    for flag, scale in (("--inlen-scale", inlen_scale), ("--outlen-scale", outlen_scale)):
        if abs(round(scale, 1) - scale) > 1e-9:  # else two workloads would share one file name
            raise ConfigError(
                f"{flag} {scale:g}: workload file names keep one decimal (synth-N-R-X-Y.csv); "
                f"use a multiple of 0.1"
            )
    return f"synth-{num_models}-{arrival_rate:g}-{inlen_scale:.1f}-{outlen_scale:.1f}.csv"


def sharegpt_lengths() -> dict[str, np.ndarray]:
    """(input_len, output_len) pairs per tokenizer name, from the package data."""
    text = resources.files("aegaeon.data").joinpath("sharegpt_lengths.csv").read_text()
    pairs: dict[str, list[tuple[int, int]]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        pairs.setdefault(row["tokenizer"], []).append(
            (int(row["input_len"]), int(row["output_len"]))
        )
    return {name: np.array(rows, dtype=np.int64) for name, rows in pairs.items()}


def generate(spec: WorkloadSpec) -> list[RequestSpec]:
    lengths = sharegpt_lengths()
    rows: list[tuple[float, str, int, int]] = []
    for index in range(spec.num_models):
        model = PAPER_MODELS[spec.mix[index % len(spec.mix)]]
        rng = np.random.default_rng([spec.seed, index])
        gaps = rng.exponential(
            1.0 / spec.arrival_rate, size=int(spec.arrival_rate * spec.duration * 2 + 20)
        )
        times = np.cumsum(gaps)
        times = times[times < spec.duration]
        pool = lengths[model.tokenizer]
        for t, (inp, out) in zip(times, pool[rng.integers(0, len(pool), size=len(times))]):
            output = max(MIN_OUTPUT_TOKENS, round(out * spec.outlen_scale))
            output = min(output, model.max_context // 2)
            prompt = min(max(1, round(inp * spec.inlen_scale)), model.max_context - output)
            rows.append((round(float(t), 3), synthetic_model_name(index), prompt, output))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [RequestSpec(i, m, t, inp, out) for i, (t, m, inp, out) in enumerate(rows)]


def format_time(seconds: float) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{ms:03d}"


def parse_time(text: str) -> float:
    parts = text.strip().split(":")
    if len(parts) != 3:
        raise ValueError(f"time {text!r} is not HH:MM:SS.mmm")
    hours, minutes, seconds = int(parts[0]), int(parts[1]), float(parts[2])
    if hours < 0 or not 0 <= minutes < 60 or not 0 <= seconds < 60:
        raise ValueError(f"time {text!r} is out of range")
    return hours * 3600 + minutes * 60 + seconds


def write_workload(path: Path, requests: Sequence[RequestSpec]) -> Path:
    """Writes atomically: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(HEADER)
        for r in requests:
            writer.writerow((format_time(r.arrival), r.model, r.input_len, r.output_len))
    os.replace(tmp, path)
    return path


def load_workload(path: Path) -> list[RequestSpec]:
    """Reads a workload CSV; errors name the file and line."""
    path = Path(path)
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise ConfigError(f"workload {path}: cannot open it ({exc.strerror})") from exc
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != HEADER:
            raise ConfigError(f"{path}:1: header must be {','.join(HEADER)!r}, found {header!r}")
        requests, last = [], -math.inf
        for line, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            requests.append(_parse_row(path, line, row, len(requests)))
            if requests[-1].arrival < last:
                raise ConfigError(
                    f"{path}:{line}: time {row[0]} is earlier than the line before; sort by time"
                )
            last = requests[-1].arrival
    if not requests:
        raise ConfigError(f"workload {path} has no requests")
    return requests


def _parse_row(path: Path, line: int, row: list[str], request_id: int) -> RequestSpec:
    if len(row) != len(HEADER):
        raise ConfigError(f"{path}:{line}: expected {len(HEADER)} columns, found {len(row)}")
    try:
        arrival = parse_time(row[0])
        input_len, output_len = int(row[2]), int(row[3])
    except ValueError as exc:
        raise ConfigError(f"{path}:{line}: {exc}") from exc
    if input_len < 1 or output_len < 1:
        raise ConfigError(
            f"{path}:{line}: lengths must be at least 1, found input {input_len}, output {output_len}"
        )
    model = row[1].strip()
    if not model:
        raise ConfigError(f"{path}:{line}: empty model name")
    return RequestSpec(request_id, model, arrival, input_len, output_len)


def workload_duration(requests: Sequence[RequestSpec], spec_duration: float | None = None) -> float:
    """The span a workload covers: its spec's duration, else the last arrival."""
    return spec_duration if spec_duration else max(r.arrival for r in requests) or 1.0


def artifact_resample(
    requests: Sequence[RequestSpec], max_len: Callable[[str], int], seed: int = 0
) -> list[RequestSpec]:
    """The lengths the paper artifact's simulator replays a workload file with (its sim/workload.py): the
    file's (input, output) pairs drawn with replacement (numpy's default_rng(seed)), handed out model by
    model in order of first arrival and within a model in file order; a pair over `max_len(model)` tokens
    is shrunk by max_len / max(total + 32, 16384), as it does. Arrivals stay. Only for checking the
    artifact-faithful baselines against the artifact's own figures (`aegaeon sim --resample-lengths`)."""
    pairs = [(r.input_len, r.output_len) for r in requests]
    draw = np.random.default_rng(seed).choice(np.arange(len(pairs)), size=len(pairs))
    models = list(dict.fromkeys(r.model for r in requests))
    by_model = {m: [r for r in requests if r.model == m] for m in models}
    out, index = [], 0
    for model in models:
        for request in by_model[model]:
            inp, outp = pairs[draw[index]]
            index += 1
            limit = max_len(model)
            if inp + outp > limit:
                scale = limit / max(inp + outp + 32, 16384)
                inp, outp = int(inp * scale), max(1, int(outp * scale))
            out.append(replace(request, input_len=inp, output_len=outp))
    return sorted(out, key=lambda r: r.arrival)
