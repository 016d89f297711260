"""How far the artifact-faithful baselines (sllm-ae, sllm+-ae) are from the paper artifact's own simulator:
`aegaeon sim` results against the figures that simulator gives (benchmarks/reference/artifact_sim.jsonl).
Both sides are scored with the artifact's scorer (`slo_attainment_paper`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from aegaeon.errors import ConfigError

DEFAULT_REFERENCE = Path("benchmarks/reference/artifact_sim.jsonl")


@dataclass(frozen=True)
class Gap:
    policy: str
    num_models: int
    arrival_rate: float
    ours: float  # the artifact's scorer on our result, 0..1
    artifact: float

    @property
    def points(self) -> float:
        return 100.0 * (self.ours - self.artifact)


def _key(record: dict) -> tuple:
    return (
        record["policy"],
        record["num_models"],
        round(record["arrival_rate"], 6),
        record.get("inlen_scale", 1.0),
        record.get("outlen_scale", 1.0),
    )


def artifact_gaps(
    json_dir: Path, reference: Path = DEFAULT_REFERENCE, variant: str = ""
) -> list[Gap]:
    """Every reference point with a matching result (same policy, workload and `variant`) in `json_dir`."""
    if not Path(reference).is_file():
        raise ConfigError(f"no reference figures at {reference}: give --reference")
    ours = {}
    for path in sorted(Path(json_dir).glob("*.json")):
        record = json.loads(path.read_text())
        if record.get("source", "sim") == "sim" and record.get("variant", "") == variant:
            if "slo_attainment_paper" in record:
                ours[_key(record)] = record["slo_attainment_paper"]
    gaps = []
    for line in Path(reference).read_text().splitlines():
        ref = json.loads(line)
        if _key(ref) in ours:
            gaps.append(
                Gap(
                    ref["policy"],
                    ref["num_models"],
                    ref["arrival_rate"],
                    ours[_key(ref)],
                    ref["slo_attainment_paper"],
                )
            )
    if not gaps:
        raise ConfigError(
            f"no result in {json_dir} matches a reference point: run `aegaeon sim --policy sllm-ae,sllm+-ae` "
            f"on the paper's grid first"
        )
    return sorted(gaps, key=lambda g: (g.policy, g.arrival_rate, g.num_models))


def render_gaps(gaps: list[Gap]) -> str:
    lines = [f"{'policy':<9} {'rate':>5} {'models':>6} {'ours':>7} {'artifact':>8} {'gap':>7}"]
    for g in gaps:
        lines.append(
            f"{g.policy:<9} {g.arrival_rate:>5g} {g.num_models:>6} {100 * g.ours:>6.1f}% "
            f"{100 * g.artifact:>7.1f}% {g.points:>+6.1f}"
        )
    worst = max(gaps, key=lambda g: abs(g.points))
    lines.append(
        f"{len(gaps)} points; largest gap {worst.points:+.1f} points ({worst.policy}, "
        f"{worst.num_models} models, {worst.arrival_rate:g} req/s); "
        f"{sum(abs(g.points) <= 5 for g in gaps)} within 5 points"
    )
    return "\n".join(lines)
