"""What a simulated result is called and how `aegaeon sim` prints it: its variant tag and the table."""

from __future__ import annotations

from typing import Sequence

from aegaeon.config.sim import SimConfig


def result_variant(policy: str, variant: str, mapping: str, config: SimConfig) -> str:
    """The result's variant tag: Aegaeon's own, plus every setting that differs from the default (so that
    no ablation overwrites a default result)."""
    from aegaeon.profiles import default_mapping

    parts = [variant] if variant else []
    if config.tp > 1:
        parts.append(f"tp{config.tp}")
    if mapping != default_mapping(policy):
        parts.append(f"map{mapping}")
    if policy.endswith("-ae") and not config.artifact_latency:
        parts.append("projlat")
    if config.resample_lengths:
        parts.append("resampled")
    if config.replay_seconds != SimConfig.replay_seconds:
        parts.append(f"window{config.replay_seconds or 'all'}")
    return "_".join(parts)


def render_table(results: Sequence[dict]) -> str:
    """The `aegaeon sim` table of results (one row per point)."""
    lines = [
        f"{'policy':<14} {'models':>6} {'rate':>5} {'SLO att.':>8} {'paper':>6} {'met both':>8} {'goodput':>8}"
        f" {'p99 TTFT':>8} {'2nd-tok p90':>11} {'busy P/D':>9}"
    ]
    for r in results:
        p99 = "-" if r["ttft_p99"] is None else f"{r['ttft_p99']:.2f}"
        gap = "-" if r["second_token_gap_p90"] is None else f"{r['second_token_gap_p90']:.2f}"
        load = r.get("instance_load")
        load_text = f"{load['prefill']:.2f}/{load['decode']:.2f}" if load else "-"
        name = r["policy"] + (f"_{r['variant']}" if r.get("variant") else "")
        lines.append(
            f"{name:<14} {r['num_models']:>6} {r['arrival_rate']:>5g} {100 * r['slo_attainment']:>7.1f}% "
            f"{100 * r.get('slo_attainment_paper', float('nan')):>5.1f}% "
            f"{100 * r['met_both_share']:>7.1f}% {r['goodput']:>8.2f} {p99:>8} {gap:>11} {load_text:>9}"
        )
    return "\n".join(lines)
