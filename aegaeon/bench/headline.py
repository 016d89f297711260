"""The paper's headline, measured: per figure panel, the largest number of models (or arrival rate) at which
each system holds >= 90 % SLO attainment, and Aegaeon's ratio over each baseline, by both scorers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aegaeon.errors import ConfigError
from aegaeon.plotting import E2E_SPECS, SCORERS, load_results

TARGET = 0.9


@dataclass(frozen=True)
class PanelLine:
    panel: str
    scorer: str
    reach: dict[
        str, float | None
    ]  # policy -> largest x with every x up to it >= TARGET (None: not even the first)
    tops: dict[
        str, bool
    ]  # policy -> it held TARGET at every x of the panel (its reach is a lower bound)


def reach(points: dict[float, float]) -> tuple[float | None, bool]:
    best = None
    for x in sorted(points):
        if points[x] < TARGET:
            return best, False
        best = x
    return best, True


def headline(json_dir: Path, panels: list[str] | None = None) -> list[PanelLine]:
    results = [
        r
        for r in load_results(json_dir)
        if r.get("source", "sim") == "sim" and not r.get("variant")
    ]
    lines = []
    for panel in panels or list(E2E_SPECS):
        spec = E2E_SPECS[panel]
        matching = [r for r in results if spec.matches(r)]
        if not matching:
            continue
        for scorer, field in SCORERS.items():
            series: dict[str, dict[float, float]] = {}
            for r in matching:
                if field in r:
                    series.setdefault(r["policy"], {})[r[spec.x_key]] = r[field]
            reached = {policy: reach(points) for policy, points in series.items()}
            lines.append(
                PanelLine(
                    panel,
                    scorer,
                    {p: v[0] for p, v in reached.items()},
                    {p: v[1] for p, v in reached.items()},
                )
            )
    if not lines:
        raise ConfigError(
            f"no simulated results in {json_dir}: run `aegaeon sim` (or plots/make_figures.sh --simulate)"
        )
    return lines


def render_headline(lines: list[PanelLine]) -> str:
    policies = sorted({p for line in lines for p in line.reach}, key=lambda p: (p != "aegaeon", p))
    header = f"{'panel':<8} {'scorer':<6} " + " ".join(f"{p:>9}" for p in policies)
    out = [header]
    for line in lines:
        cells = []
        for p in policies:
            value = line.reach.get(p, "-")
            text = "<min" if value is None else ("-" if value == "-" else f"{value:g}")
            cells.append(f"{('>=' if line.tops.get(p) else '') + text:>9}")
        ratios = []
        ours = line.reach.get("aegaeon")
        for p in policies[1:]:
            other = line.reach.get(p)
            if ours and other:
                bound = ">=" if line.tops.get("aegaeon") else ""
                ratios.append(f"{p} {bound}{ours / other:.2f}x")
        out.append(
            f"{line.panel:<8} {line.scorer:<6} "
            + " ".join(cells)
            + ("   " + ", ".join(ratios) if ratios else "")
        )
    out.append(
        f"(largest x at which every x up to it holds >= {TARGET:.0%}; >= : held at every x of the panel)"
    )
    return "\n".join(out)
