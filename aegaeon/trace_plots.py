"""Figures 14-16 from the end-to-end benchmark's result JSON (`aegaeon bench e2e`).

- breakdown:     where a request's latency goes (mean per part), and where a model switch's time goes
- autoscale-cdf: CDF of model switch (scale-up) latency
- kvcache-cdf:   CDF of KV-cache swap latency, per kind of swap
- frag:          KV-region fragmentation of every worker's arena over the run

Each figure draws every traced run it is given (one bar group or line per run) and
returns a text summary with the numbers behind it, for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aegaeon.bench.trace import BREAKDOWN_PARTS
from aegaeon.errors import ConfigError
from aegaeon.plot_backend import outside_legend, pyplot, save_figure

log = logging.getLogger(__name__)

# a switch's stages (aegaeon.engine.runner.SwitchRecord): a prefetched one waits for the rest of its copy
# (wait_prefetch) instead of copying, a resident one only re-binds, a layer-wise one's forwards wait for
# layers still copying (wait_layers), one behind another model's copy waits for it (wait_other_copy); each
# switch has some of them
SWITCH_STAGES = (
    "wait_weights",
    "wait_other_copy",
    "evict_kv",
    "copy_weights",
    "wait_prefetch",
    "wait_layers",
    "resident",
    "bind",
)
SWAP_KINDS = {
    "export": "prefill -> host (export)",
    "import": "host -> decode (import)",
    "out": "preemption swap-out",
    "in": "preemption swap-in",
}
FIGURES = ("breakdown", "autoscale-cdf", "kvcache-cdf", "frag")


@dataclass(frozen=True)
class TracedRun:
    label: str
    result: dict

    @property
    def trace(self) -> dict:
        return self.result["trace"]


def load_traced_runs(paths: Iterable[Path], policy: str | None = None) -> list[TracedRun]:
    """Results that carry traces (live runs of `aegaeon bench e2e`); files and folders both work."""
    files: list[Path] = []
    for path in map(Path, paths):
        files += sorted(path.glob("*.json")) if path.is_dir() else [path]
    runs = []
    for path in files:
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not a readable result JSON ({exc})") from None
        if "trace" not in result or (policy is not None and result.get("policy") != policy):
            continue
        system = result["policy"] + (f" ({result['variant']})" if result.get("variant") else "")
        label = (
            f"{system} {result['num_models']}m {result['arrival_rate']:g}r/s"
            f" in x{result['inlen_scale']:g} out x{result['outlen_scale']:g}"
        )
        runs.append(TracedRun(label, result))
    if not runs:
        raise ConfigError(
            "no traced results found: run `aegaeon bench e2e` first (its live-*.json files carry the "
            "traces these figures need)"
        )
    return runs


def _where(runs: list[TracedRun]) -> str:
    """What the figure shows was measured live: on which device, behind which link."""
    devices = sorted({str(run.result.get("device", "cpu")) for run in runs})
    links = sorted(
        {
            f"link {g:g} GB/s" if g else "native link"
            for g in (run.result.get("link_gbps") for run in runs)
        }
    )
    return f"Live, {', '.join(devices)}, {', '.join(links)}"


def _cdf(ax, values: list[float], label: str) -> None:
    xs = np.sort(np.asarray(values) * 1000.0)
    ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=label, drawstyle="steps-post")


def _label_cdf(ax, xlabel: str, title: str) -> None:
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("CDF")
    ax.set_title(title, fontsize=9)
    outside_legend(ax)


def _percentiles(values: list[float]) -> str:
    if not values:
        return "none"
    p50, p90, p99 = (1000.0 * float(np.percentile(values, q)) for q in (50, 90, 99))
    return f"n={len(values)} p50 {p50:.3f} ms, p90 {p90:.3f} ms, p99 {p99:.3f} ms"


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    fig.tight_layout()
    return save_figure(fig, Path(out_dir) / name)


def _pyplot():
    return pyplot()


def plot_breakdown(runs: list[TracedRun], out_dir: Path) -> tuple[list[Path], str]:
    plt = _pyplot()
    fig, (ax_req, ax_sw) = plt.subplots(1, 2, figsize=(11, 2.4 + 0.4 * len(runs)), squeeze=True)
    lines = []
    for row, run in enumerate(runs):
        parts = [r["breakdown"] for r in run.result["requests"] if r.get("breakdown")]
        means = [float(np.mean([p[k] for p in parts])) if parts else 0.0 for k in BREAKDOWN_PARTS]
        left = 0.0
        for k, mean in zip(BREAKDOWN_PARTS, means):
            ax_req.barh(
                row,
                mean * 1000.0,
                left=left,
                color=f"C{BREAKDOWN_PARTS.index(k)}",
                label=k if row == 0 else None,
            )
            left += mean * 1000.0
        switches = run.trace["switches"]
        stage_means = [
            float(np.mean([s.get(k, 0.0) for s in switches])) if switches else 0.0
            for k in SWITCH_STAGES
        ]
        left = 0.0
        for k, mean in zip(SWITCH_STAGES, stage_means):
            ax_sw.barh(
                row,
                mean * 1000.0,
                left=left,
                color=f"C{SWITCH_STAGES.index(k)}",
                label=k if row == 0 else None,
            )
            left += mean * 1000.0
        lines.append(
            f"{run.label}: request latency (mean ms over {len(parts)} requests): "
            + ", ".join(f"{k} {m * 1000:.2f}" for k, m in zip(BREAKDOWN_PARTS, means))
        )
        lines.append(
            f"{run.label}: model switch (mean ms over {len(switches)} switches): "
            + ", ".join(f"{k} {m * 1000:.3f}" for k, m in zip(SWITCH_STAGES, stage_means))
        )
    for ax, title in (
        (ax_req, "Fig. 14(a): request latency breakdown"),
        (ax_sw, "Fig. 14(b): model switch breakdown"),
    ):
        ax.set_yticks(range(len(runs)), [r.label for r in runs], fontsize=7)
        ax.set_xlabel("mean time (ms)")
        ax.set_title(f"{_where(runs)}\n{title}", fontsize=9)
        ax.legend(
            fontsize=7,
            ncol=4 if ax is ax_req else 2,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.3),
            frameon=False,
        )
    return _save(fig, out_dir, "fig14-breakdown"), "\n".join(lines)


def plot_autoscale_cdf(runs: list[TracedRun], out_dir: Path) -> tuple[list[Path], str]:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    lines = []
    for run in runs:
        seconds = [s["seconds"] for s in run.trace["switches"]]
        if seconds:
            _cdf(ax, seconds, run.label)
        lines.append(f"{run.label}: model switch latency {_percentiles(seconds)}")
    _label_cdf(
        ax, "scale-up (model switch) latency (ms)", f"{_where(runs)}\nFig. 15: scale-up latency"
    )
    return _save(fig, out_dir, "fig15-autoscale-cdf"), "\n".join(lines)


def plot_kvcache_cdf(runs: list[TracedRun], out_dir: Path) -> tuple[list[Path], str]:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    lines = []
    for run in runs:
        for kind, name in SWAP_KINDS.items():
            swaps = [s for s in run.trace["swaps"] if s["label"] == kind]
            if not swaps:
                continue
            seconds = [s["seconds"] for s in swaps]
            _cdf(ax, seconds, f"{run.label}: {name}" if len(runs) > 1 else name)
            gbps = sum(s["bytes"] for s in swaps) / max(sum(seconds), 1e-12) / 1e9
            lines.append(
                f"{run.label}: KV {name} latency {_percentiles(seconds)}; {gbps:.2f} GB/s while copying"
            )
        if len(set(run.trace.get("nodes", {}).values())) > 1:
            lines.append(f"{run.label}: {cross_node_handoffs(run.trace)}")
    _label_cdf(ax, "KV-cache swap latency (ms)", f"{_where(runs)}\nFig. 16: KV-cache swap latency")
    return _save(fig, out_dir, "fig16-kvcache-cdf"), "\n".join(lines)


def cross_node_handoffs(trace: dict) -> str:
    """How many requests' KV went from a prefill worker on one node to a decode worker on another."""
    node_of = trace["nodes"]
    exported = {s["request"]: s["worker"] for s in trace["swaps"] if s["label"] == "export"}
    imported = {s["request"]: s["worker"] for s in trace["swaps"] if s["label"] == "import"}
    pairs = Counter(
        (node_of[str(exported[r])], node_of[str(imported[r])]) for r in exported if r in imported
    )
    crossed = sum(n for (src, dst), n in pairs.items() if src != dst)
    routes = ", ".join(f"{src} -> {dst} {n}" for (src, dst), n in sorted(pairs.items()))
    return f"KV handoffs across nodes: {crossed} of {sum(pairs.values())} ({routes})"


def fragmentation(sample: dict) -> float:
    """Share of the KV region (the arena past the weights) that is allocated to slabs but holds no block."""
    region = sample["total"] - sample["weight_region"]
    wasted = sample["internal_fragmentation"] + sample["external_fragmentation"]
    return wasted / region if region > 0 else 0.0


def plot_frag(runs: list[TracedRun], out_dir: Path) -> tuple[list[Path], str]:
    plt = _pyplot()
    fig, (ax_frag, ax_used) = plt.subplots(1, 2, figsize=(10, 3.4))
    lines = []
    for run in runs:
        samples = run.trace["memory"]
        for worker in sorted({s["worker"] for s in samples}):
            mine = [s for s in samples if s["worker"] == worker]
            label = f"{run.label} w{worker}" if len(runs) > 1 else f"worker {worker}"
            ts = [s["t"] for s in mine]
            ax_frag.plot(ts, [100.0 * fragmentation(s) for s in mine], label=label)
            ax_used.plot(
                ts,
                [100.0 * s["kv_used"] / max(1, s["total"] - s["weight_region"]) for s in mine],
                label=label,
            )
        busy = [s for s in samples if s["kv_used"] > 0]
        frag = [fragmentation(s) for s in busy]
        lines.append(
            f"{run.label}: KV-region fragmentation over {len(busy)} samples with KV in use: "
            f"mean {100 * float(np.mean(frag)) if frag else 0:.2f}%, "
            f"max {100 * max(frag) if frag else 0:.2f}%"
        )
    ax_frag.set_ylabel("fragmented KV region (%)")
    ax_used.set_ylabel("KV region in use (%)")
    for ax in (ax_frag, ax_used):
        ax.set_xlabel("time since start (s)")
    outside_legend(ax_used, fontsize=6)
    ax_frag.set_title(f"{_where(runs)}\nFragmentation (slab arena)", fontsize=9)
    ax_used.set_title("KV use", fontsize=9)
    return _save(fig, out_dir, "frag"), "\n".join(lines)


PLOTTERS = {
    "breakdown": plot_breakdown,
    "autoscale-cdf": plot_autoscale_cdf,
    "kvcache-cdf": plot_kvcache_cdf,
    "frag": plot_frag,
}
