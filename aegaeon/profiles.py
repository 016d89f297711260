"""Profiles: measured latency tables, the cost-model fit, and the JSON files under profiles/ (past 300
lines: the schema, its fit and its loading are one file format and change together).

Schema (`aegaeon-profile/1`), one file per device and model, profiles/<device>/<model>.json, and for an
instance of N devices (tensor parallelism) profiles/<device>/tp<N>/<model>.json:
  schema, device, model, tensor_parallel (N: every size below is one rank's shard, the link one rank's)
  architecture: ModelSpec fields (hidden_size, intermediate_size, num_layers, ...)
  weight_bytes, kv_bytes_per_token, block_size
  link: h2d_bandwidth (bytes/s), switch_efficiency, swap_efficiency, device_memory_bytes
  prefill_coefficients [C1, C2, C3], decode_coefficients [C4, C5, C6] (see aegaeon.sched.cost)
  table: [{input_len, batch, prefill_s, decode_s, prefill_fit_s, decode_fit_s}]
  fit_error: mean and max relative error of the fit over the table, prefill and decode
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from aegaeon.config import PAPER_MIX, ModelSpec
from aegaeon.config.env import env_str
from aegaeon.errors import ConfigError
from aegaeon.profile_artifact import LINK_SOURCES, artifact_baseline, artifact_sizes
from aegaeon.sched.cost import LinkCost, ModelCost, TableCostModel

SCHEMA = "aegaeon-profile/1"
DEFAULT_BLOCK_SIZE = 16
# The measured prefill latencies plateau (~92 ms on H100) once a batch exceeds
# 4096 prompt tokens: the measuring engine ran one chunk of that size. Those
# points say nothing about longer prefills and are left out of the prefill fit.
PREFILL_CHUNK_TOKENS = 4096
# A decode point the first fit misses by more than this (relative) is treated
# as a broken measurement (e.g. i4096b2 at 0.4 ms, below the weight-read floor).
DECODE_OUTLIER_REL = 0.5
# H100 SXM over PCIe 5.0 x16: ~64 GB/s raw; pinned copies reach ~55 GB/s.
H100_LINK = LinkCost(
    h2d_bandwidth=55e9, switch_efficiency=0.15, swap_efficiency=0.8, device_memory_bytes=80 * 2**30
)


@dataclass(frozen=True)
class TablePoint:
    input_len: int
    batch: int
    prefill_s: float
    decode_s: float


def profiles_dir() -> Path:
    """AEGAEON_PROFILES, else the repository's profiles/ folder, else the copy a wheel ships (aegaeon/_profiles)."""
    env = env_str("AEGAEON_PROFILES")
    if env:
        return Path(env)
    source_tree = Path(__file__).resolve().parent.parent / "profiles"
    return source_tree if source_tree.is_dir() else Path(__file__).resolve().parent / "_profiles"


def read_measured_table(model_dir: Path) -> list[TablePoint]:
    """Reads i<I>b<B>.json files (avg_prefill_latency, avg_decode_latency)."""
    points = []
    for path in sorted(model_dir.glob("i*b*.json")):
        match = re.fullmatch(r"i(\d+)b(\d+)\.json", path.name)
        if not match:
            continue
        data = json.loads(path.read_text())
        try:
            points.append(
                TablePoint(
                    int(match[1]),
                    int(match[2]),
                    float(data["avg_prefill_latency"]),
                    float(data["avg_decode_latency"]),
                )
            )
        except KeyError as exc:
            raise ConfigError(f"{path}: missing field {exc}") from exc
    if not points:
        raise ConfigError(f"{model_dir}: no i<I>b<B>.json latency tables found")
    return points


def _fit_nonnegative(features: np.ndarray, target: np.ndarray, relative: bool = True) -> np.ndarray:
    """Least squares with non-negative coefficients (negative terms are eliminated).

    relative=True minimises relative error; False minimises absolute error,
    which a single tiny-valued broken point cannot dominate.
    """
    active = list(range(features.shape[1]))
    weights = 1.0 / target if relative else np.ones_like(target)
    while True:
        sub = features[:, active] * weights[:, None]
        coef, *_ = np.linalg.lstsq(sub, target * weights, rcond=None)
        if (coef >= 0).all() or len(active) == 1:
            full = np.zeros(features.shape[1])
            full[active] = np.maximum(coef, 0.0)
            return full
        active.pop(int(np.argmin(coef)))


def fit_model_cost(
    spec: ModelSpec,
    points: list[TablePoint],
    block_size: int = DEFAULT_BLOCK_SIZE,
    chunk_tokens: int = PREFILL_CHUNK_TOKENS,
) -> tuple[ModelCost, dict[str, str]]:
    """Fits both latency forms; returns the cost and the excluded points ('i<I>b<B>' -> reason)."""
    probe = ModelCost(
        spec.name,
        spec.hidden_size,
        spec.intermediate_size,
        block_size,
        spec.weight_bytes,
        spec.kv_bytes_per_token,
        spec.max_context,
        (0.0, 0.0, 0.0),
        (0.0, 0.0, 0.0),
    )
    excluded = {}
    prefill_points = [p for p in points if p.batch * p.input_len <= chunk_tokens]
    for p in points:
        if p.batch * p.input_len > chunk_tokens:
            excluded[f"i{p.input_len}b{p.batch}"] = f"prefill: over the {chunk_tokens}-token chunk"
    if len(prefill_points) < 3:
        raise ConfigError(
            f"{spec.name}: {len(prefill_points)} prefill points within the chunk; need 3 or more"
        )
    prefill_x = np.array(
        [
            probe.prefill_features(p.batch * p.input_len, p.batch * p.input_len**2)
            for p in prefill_points
        ]
    )
    prefill_c = _fit_nonnegative(prefill_x, np.array([p.prefill_s for p in prefill_points]))

    decode_x = np.array([probe.decode_features(p.batch, p.batch * p.input_len) for p in points])
    decode_y = np.array([p.decode_s for p in points])
    first = _fit_nonnegative(decode_x, decode_y, relative=False)
    keep = np.abs(decode_x @ first - decode_y) / decode_y <= DECODE_OUTLIER_REL
    for p, kept in zip(points, keep):
        if not kept:
            key = f"i{p.input_len}b{p.batch}"
            reason = f"decode: first fit off by more than {DECODE_OUTLIER_REL:.0%}"
            excluded[key] = f"{excluded[key]}; {reason}" if key in excluded else reason
    decode_c = _fit_nonnegative(decode_x[keep], decode_y[keep])
    cost = ModelCost(
        spec.name,
        spec.hidden_size,
        spec.intermediate_size,
        block_size,
        spec.weight_bytes,
        spec.kv_bytes_per_token,
        spec.max_context,
        tuple(prefill_c),
        tuple(decode_c),
        stages=spec.stage_shares(),
    )
    return cost, excluded


def build_profile(
    device: str,
    spec: ModelSpec,
    points: list[TablePoint],
    link: LinkCost,
    block_size: int = DEFAULT_BLOCK_SIZE,
    tensor_parallel: int = 1,
) -> dict:
    cost, excluded = fit_model_cost(spec, points, block_size)
    table, prefill_err, decode_err = [], [], []
    for p in points:
        pf = cost.prefill_time([p.input_len] * p.batch)
        df = cost.decode_time(p.batch, p.batch * p.input_len)
        reason = excluded.get(f"i{p.input_len}b{p.batch}", "")
        if "prefill:" not in reason:
            prefill_err.append(abs(pf - p.prefill_s) / p.prefill_s)
        if "decode:" not in reason:
            decode_err.append(abs(df - p.decode_s) / p.decode_s)
        table.append(dict(asdict(p), prefill_fit_s=pf, decode_fit_s=df, excluded=reason))
    return {
        "schema": SCHEMA,
        "device": device,
        "model": spec.name,
        "tensor_parallel": tensor_parallel,
        "architecture": asdict(spec),
        "weight_bytes": spec.weight_bytes,
        "kv_bytes_per_token": spec.kv_bytes_per_token,
        "block_size": block_size,
        "link": asdict(link),
        "link_sources": LINK_SOURCES,
        "prefill_coefficients": list(cost.prefill_coefficients),
        "decode_coefficients": list(cost.decode_coefficients),
        "artifact_baseline": artifact_baseline(spec.name, spec.num_layers, spec.hidden_size),
        "table": table,
        "fit_error": {  # over the points used by each fit; `table` has every point
            "prefill_mean_rel": float(np.mean(prefill_err)),
            "prefill_max_rel": float(np.max(prefill_err)),
            "decode_mean_rel": float(np.mean(decode_err)),
            "decode_max_rel": float(np.max(decode_err)),
        },
    }


def profile_folder(root: Path, device: str, tp: int = 1) -> Path:
    return Path(root) / device / (f"tp{tp}" if tp > 1 else "")


def write_profile(profile: dict, out_dir: Path) -> Path:
    folder = profile_folder(out_dir, profile["device"], profile.get("tensor_parallel", 1))
    path = folder / f"{profile['model']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(profile, indent=1) + "\n")
    tmp.replace(path)
    return path


def load_profile(path: Path, tp: int = 1) -> tuple[ModelCost, LinkCost]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"profile {path}: cannot read it ({exc})") from exc
    if data.get("schema") != SCHEMA:
        raise ConfigError(f"profile {path}: schema {data.get('schema')!r} is not {SCHEMA!r}")
    if data.get("tensor_parallel", 1) != tp:
        raise ConfigError(
            f"profile {path} is of tensor-parallel degree {data.get('tensor_parallel')}, not {tp}: "
            f"profiles of degree N live in <device>/tp<N>/"
        )
    try:
        arch = data["architecture"]
        cost = ModelCost(
            data["model"],
            arch["hidden_size"],
            arch["intermediate_size"],
            data["block_size"],
            data["weight_bytes"],
            data["kv_bytes_per_token"],
            arch["max_context"],
            tuple(data["prefill_coefficients"]),
            tuple(data["decode_coefficients"]),
            artifact_sizes(data),
            ModelSpec(**arch).stage_shares(),
        )
        link = LinkCost(**data["link"])
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"profile {path}: missing or malformed field {exc}") from exc
    return cost, link


def load_device_profiles(
    device: str, root: Path | None = None, tp: int = 1
) -> tuple[dict[str, ModelCost], LinkCost]:
    """The profiles of `device` at tensor-parallel degree `tp` (one rank's sizes and link at tp > 1)."""
    folder = profile_folder(root or profiles_dir(), device, tp)
    files = sorted(folder.glob("*.json"))
    if not files:
        how = (
            "run `aegaeon profile fit` or pass --profiles"
            if tp == 1
            else f"measure them with `aegaeon profile --model DIR --tp {tp}` and pass --profiles (no "
            f"tensor-parallel profile ships: the artifact measured none)"
        )
        raise ConfigError(f"no profiles for device {device!r} at --tp {tp} in {folder}: {how}")
    costs, link = {}, None
    for path in files:
        cost, link = load_profile(path, tp)
        costs[cost.name] = cost
    return costs, link


def cost_model_for_workload(
    model_names: Iterable[str],
    device: str = "H100",
    root: Path | None = None,
    mix: tuple[str, ...] = PAPER_MIX,
    assignment: Mapping[str, str] | None = None,
    tp: int = 1,
) -> TableCostModel:
    """A cost model for the workload's model names (synth_model_NN -> mix[NN % len(mix)])."""
    costs, link = load_device_profiles(device, root, tp)
    table = {}
    for name in model_names:
        base = (assignment or {}).get(name) or _mix_entry(name, mix)
        if base not in costs:
            raise ConfigError(
                f"model {name!r} maps to {base!r}, which has no {device} profile; have {sorted(costs)}"
            )
        table[name] = costs[base]
    return TableCostModel(table, link)


MODEL_MAPPINGS = ("index", "appearance")


def appearance_assignment(
    model_names_in_arrival_order: Iterable[str], mix: tuple[str, ...] = PAPER_MIX
) -> dict[str, str]:
    """The artifact simulator's mapping: the n-th distinct model to arrive stands for mix[n % len(mix)]
    (the real system, and `index`, map synth_model_NN to mix[NN % len(mix)])."""
    order = list(dict.fromkeys(model_names_in_arrival_order))
    return {name: mix[n % len(mix)] for n, name in enumerate(order)}


def default_mapping(policy: str) -> str:
    """The model-size mapping each side of the paper's comparison uses: the artifact-faithful baselines
    map models as the artifact's simulator does, every other system as the real system does."""
    return "appearance" if policy.endswith("-ae") else "index"


def _mix_entry(name: str, mix: tuple[str, ...]) -> str:
    match = re.search(r"(\d+)$", name)
    if not match:
        raise ConfigError(
            f"model {name!r} has no index: name synthetic models synth_model_NN or give an assignment"
        )
    return mix[int(match[1]) % len(mix)]
