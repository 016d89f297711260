"""Figures from result JSON (simulated or live): the paper's figures 11-13.

Each spec names a slice of the results and the x axis; one line per system.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from aegaeon.errors import ConfigError
from aegaeon.plot_backend import outside_legend, pyplot, save_figure
from aegaeon.sched.slo import DEFAULT_TPOT_SLO, DEFAULT_TTFT_SLO

log = logging.getLogger(__name__)

POLICY_STYLE = {
    "aegaeon": ("Aegaeon", "o"),
    "sllm": ("ServerlessLLM", "s"),
    "sllm+": ("ServerlessLLM+", "^"),
    "sllm-ae": ("ServerlessLLM (artifact)", "D"),
    "sllm+-ae": ("ServerlessLLM+ (artifact)", "v"),
    "muxserve": ("MuxServe", "x"),
}
SCORERS = {"ours": "slo_attainment", "paper": "slo_attainment_paper"}


@dataclass(frozen=True)
class E2ESpec:
    title: str
    x_key: str  # "num_models" or "arrival_rate"
    arrival_rate: float | None = None
    num_models: int | None = None
    inlen_scale: float = 1.0
    outlen_scale: float = 1.0
    slo_scale: float = 1.0
    ttft: float | None = None  # absolute SLOs (figure 17), instead of the defaults x slo_scale
    tpot: float | None = None
    device: str | None = None  # only results simulated on this device's profiles

    def matches(self, r: dict) -> bool:
        ttft = self.ttft if self.ttft is not None else DEFAULT_TTFT_SLO * self.slo_scale
        tpot = self.tpot if self.tpot is not None else DEFAULT_TPOT_SLO * self.slo_scale
        return (
            (self.arrival_rate is None or abs(r["arrival_rate"] - self.arrival_rate) < 1e-9)
            and (self.num_models is None or r["num_models"] == self.num_models)
            and (self.device is None or r.get("device") == self.device)
            and abs(r["inlen_scale"] - self.inlen_scale) < 1e-9
            and abs(r["outlen_scale"] - self.outlen_scale) < 1e-9
            and abs(r["ttft_slo"] - ttft) < 1e-9
            and abs(r["tpot_slo"] - tpot) < 1e-9
        )


E2E_SPECS: dict[str, E2ESpec] = {
    "0.1": E2ESpec("Fig. 11(a): rate 0.1 req/s per model", "num_models", arrival_rate=0.1),
    "0.5": E2ESpec("Fig. 11(b): rate 0.5 req/s per model", "num_models", arrival_rate=0.5),
    "40": E2ESpec("Fig. 11(c): 40 models", "arrival_rate", num_models=40),
    "0.1-ix2": E2ESpec(
        "Fig. 12: rate 0.1, inputs x2", "num_models", arrival_rate=0.1, inlen_scale=2.0
    ),
    "0.1-ox2": E2ESpec(
        "Fig. 12: rate 0.1, outputs x2", "num_models", arrival_rate=0.1, outlen_scale=2.0
    ),
    "0.5-ix2": E2ESpec(
        "Fig. 12: rate 0.5, inputs x2", "num_models", arrival_rate=0.5, inlen_scale=2.0
    ),
    "0.5-ox2": E2ESpec(
        "Fig. 12: rate 0.5, outputs x2", "num_models", arrival_rate=0.5, outlen_scale=2.0
    ),
    "slo0.5": E2ESpec(
        "Fig. 13: SLOs x0.5, rate 0.1", "num_models", arrival_rate=0.1, slo_scale=0.5
    ),
    "slo0.3": E2ESpec(
        "Fig. 13: SLOs x0.3, rate 0.1", "num_models", arrival_rate=0.1, slo_scale=0.3
    ),
    **{
        f"a10-tpot{tpot:g}": E2ESpec(
            f"Fig. 17 (A10): rate 0.1, TTFT 5 s, TPOT {tpot:g} s",
            "num_models",
            arrival_rate=0.1,
            ttft=5.0,
            tpot=tpot,
            device="A10",
        )
        for tpot in (0.1, 0.05, 0.2)
    },
}
A10_PANELS = ("a10-tpot0.1", "a10-tpot0.05", "a10-tpot0.2")


def load_results(json_dir: Path) -> list[dict]:
    results = []
    for path in sorted(Path(json_dir).glob("*.json")):
        try:
            results.append(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            log.warning("skipping %s: not valid JSON (%s)", path, exc)
    return results


def _series_order(key: tuple[str, str]) -> tuple[int, str]:
    policy, variant = key
    return (list(POLICY_STYLE).index(policy) if policy in POLICY_STYLE else 99, variant)


def plot_e2e(spec_name: str, json_dir: Path, out_dir: Path, scorer: str = "ours") -> list[Path]:
    """Draws one figure, with this project's scorer or the paper's; returns the PDF and PNG paths."""
    if spec_name not in E2E_SPECS:
        raise ConfigError(f"unknown figure spec {spec_name!r}: choose from {', '.join(E2E_SPECS)}")
    if scorer not in SCORERS:
        raise ConfigError(f"unknown scorer {scorer!r}: choose from {', '.join(SCORERS)}")
    spec, field = E2E_SPECS[spec_name], SCORERS[scorer]
    series: dict[tuple[str, str], list[tuple[float, float]]] = {}  # (policy, variant) -> points
    for r in load_results(json_dir):
        if spec.matches(r) and field in r:
            key = (r["policy"], r.get("variant", ""))
            series.setdefault(key, []).append((r[spec.x_key], 100.0 * r[field]))
    if not series:
        raise ConfigError(
            f"no results in {json_dir} match figure {spec_name!r} ({spec.title}): run `aegaeon sim` first"
        )
    devices = sorted(
        {r.get("device", "device not recorded") for r in load_results(json_dir) if spec.matches(r)}
    )
    title = f"Simulated on {', '.join(devices)} profiles: {spec.title}"
    if scorer == "paper":
        title += "\n(the paper artifact's scorer)"
    suffix = "" if scorer == "ours" else f"-{scorer}"
    return _draw(series, spec.x_key, title, Path(out_dir) / f"e2e-{spec_name}{suffix}")


def plot_live_e2e(json_dir: Path, out_dir: Path) -> list[Path]:
    """Figure-11-style plots of live `aegaeon bench e2e` sweeps: one figure per workload and SLO setting
    found (their SLOs are the link rule's, not the paper's, so the paper's specs do not match them)."""
    groups: dict[tuple, dict[tuple[str, str], list[tuple[float, float]]]] = {}
    for r in load_results(json_dir):
        if r.get("source") != "live" or "num_models" not in r:
            continue
        key = (
            r["arrival_rate"],
            r["inlen_scale"],
            r["outlen_scale"],
            round(r["ttft_slo"], 4),
            round(r["tpot_slo"], 6),
            r.get("link_like") or "",
            round(r.get("link_gbps") or 0.0, 6),
            r["nnodes"],
        )
        series = groups.setdefault(
            key, {}
        )  # SLOs rounded: one sweep's runs share them up to float noise
        series.setdefault((r["policy"], r.get("variant", "")), []).append(
            (r["num_models"], 100.0 * r["slo_attainment"])
        )
    if not groups:
        raise ConfigError(
            f"no live results in {json_dir}: run `aegaeon bench e2e --out {json_dir}` first"
        )
    paths = []
    for (rate, inlen, outlen, ttft, tpot, like, gbps, nnodes), series in sorted(groups.items()):
        link = (
            f"link like {like} ({gbps:.3g} GB/s)"
            if like
            else (f"link {gbps:.3g} GB/s" if gbps else "native link")
        )
        title = (
            f"Live, {nnodes} CPU node{'s' if nnodes > 1 else ''}, {link}\nrate {rate:g} req/s per model, "
            f"inputs x{inlen:g}, outputs x{outlen:g}\nSLO TTFT {ttft:.3g} s, TPOT {tpot:.3g} s"
        )
        stem = f"e2e-live-{rate:g}-{inlen:g}-{outlen:g}-ttft{ttft:g}-tpot{tpot:g}" + (
            f"-{like}" if like else ""
        )
        paths += _draw(series, "num_models", title, Path(out_dir) / stem)
    return paths


TP4_MODELS = (
    4  # figure 17's TP4 experiment: 4 models (Qwen2.5-72B in the paper), rates 0.1-0.6 per model
)


def plot_tp(
    json_dir: Path, out_dir: Path, tp: int = 4, num_models: int = TP4_MODELS, scorer: str = "ours"
) -> list[Path]:
    """Figure 17's TP panel: SLO attainment against the arrival rate of instances of `tp` devices serving
    `num_models` models, from any results of that degree (live `bench e2e --tp`, or `sim --tp` on measured
    profiles); one figure per source, device and SLO setting found."""
    field = SCORERS[scorer]
    groups: dict[tuple, dict[tuple[str, str], list[tuple[float, float]]]] = {}
    for r in load_results(json_dir):
        if r.get("tp", 1) != tp or r.get("num_models") != num_models or field not in r:
            continue
        key = (
            r.get("source", "sim"),
            r.get("device", "device not recorded"),
            round(r["ttft_slo"], 4),
            round(r["tpot_slo"], 6),
            r["inlen_scale"],
            r["outlen_scale"],
        )
        groups.setdefault(key, {}).setdefault((r["policy"], r.get("variant", "")), []).append(
            (r["arrival_rate"], 100.0 * r[field])
        )
    if not groups:
        raise ConfigError(
            f"no results of --tp {tp} with {num_models} models in {json_dir}: run a live `aegaeon bench "
            f"e2e --tp {tp} --num-models {num_models}` or `aegaeon sim --tp {tp} --num-models "
            f"{num_models}` on measured tp{tp} profiles (none ship: the artifact measured none)"
        )
    paths = []
    for (source, device, ttft, tpot, inlen, outlen), series in sorted(groups.items()):
        how = "Live" if source == "live" else "Simulated"
        title = (
            f"Fig. 17 (TP{tp}): {how} on {device}, {num_models} models\n"
            f"inputs x{inlen:g}, outputs x{outlen:g}, SLO TTFT {ttft:.3g} s, TPOT {tpot:.3g} s"
        )
        stem = f"tp{tp}-{source}-{device}-ttft{ttft:g}-tpot{tpot:g}-{inlen:g}-{outlen:g}"
        paths += _draw(series, "arrival_rate", title, Path(out_dir) / stem)
    return paths


def _draw(
    series: dict[tuple[str, str], list[tuple[float, float]]], x_key: str, title: str, stem: Path
) -> list[Path]:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for policy, variant in sorted(series, key=_series_order):
        label, marker = POLICY_STYLE.get(policy, (policy, "."))
        xs, ys = zip(*sorted(series[policy, variant]))
        ax.plot(
            xs,
            ys,
            marker=marker,
            label=f"{label} ({variant})" if variant else label,
            linestyle="--" if variant else "-",
        )
    ax.axhline(90, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("Number of models" if x_key == "num_models" else "Arrival rate per model (req/s)")
    ax.set_ylabel("SLO attainment (%)")
    ax.set_ylim(0, 102)
    ax.set_title(title, fontsize=8 if "\n" in title else 9)
    outside_legend(ax, fontsize=8)
    return save_figure(fig, stem)
