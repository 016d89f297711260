"""`aegaeon bench e2e`: a live node replaying a workload in real time, and the `--link-like` rule it
shares with `bench sim-vs-live`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from aegaeon.cli.bench_parts import bench
from aegaeon.cli.root import _request_progress, mechanism_options, slo_options, tp_option

if TYPE_CHECKING:
    from aegaeon.bench.link_like import LinkLike


@bench.command("e2e")
@click.option(
    "--num-models",
    default="12",
    show_default=True,
    help="Models synth_model_00.. (a tiny market on CPU); a list (4,8,12 or 4:16:4) sweeps them.",
)
@click.option(
    "--arrival-rate",
    "rates",
    default="0.5",
    show_default=True,
    help="Requests/s per model; a list 0.5,1.0 runs each.",
)
@click.option(
    "--inlen-scale", default=0.2, show_default=True, help="Input lengths x this (CPU default 0.2)."
)
@click.option(
    "--outlen-scale",
    default=0.2,
    show_default=True,
    help="Output lengths x this (CPU default 0.2).",
)
@click.option(
    "--nnodes",
    default=1,
    show_default=True,
    help="Nodes on this machine, joined over the TCP link on loopback; each gets --instances workers.",
)
@slo_options
@click.option("--duration", default=60.0, show_default=True, help="Seconds of arrivals replayed.")
@click.option(
    "--instances",
    default=4,
    show_default=True,
    help="Virtual CPU instances (each of --tp worker processes).",
)
@click.option("--prefill-instances", default=1, show_default=True)
@click.option(
    "--policy",
    "policies",
    default="aegaeon",
    show_default=True,
    help="aegaeon (token-level) and/or sllm (request-level decode scaling), e.g. aegaeon,sllm.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of a generated workload.")
@click.option(
    "--workloads",
    "workloads_dir",
    default="workloads",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where synth-N-R-X-Y.csv is read (or generated).",
)
@click.option(
    "--out", "out_dir", default="plots/json", show_default=True, type=click.Path(file_okay=False)
)
@click.option(
    "--link-gbps",
    type=float,
    default=None,
    help="Pace the workers' weight copies and KV swaps to an emulated link of this many GB/s.",
)
@mechanism_options
@click.option(
    "--prefetch",
    is_flag=True,
    help="Workers prefetch: decode the next turn's weights, prefill the next group's (the node's --prefetch); tagged `prefetch`.",
)
@tp_option(
    "Worker ranks per instance (tensor parallelism; every market model's heads must divide by it: "
    "the default market's do for 2, not 4); tagged `tp<N>`."
)
@click.option(
    "--link-like",
    default=None,
    metavar="DEVICE",
    help="Choose the link rate and the SLOs by rule so that switch/step and SLO/step match DEVICE's "
    "profiles (e.g. H100); see aegaeon/bench/link_like.py.",
)
def bench_e2e_cmd(
    num_models: str,
    rates: str,
    inlen_scale: float,
    outlen_scale: float,
    nnodes: int,
    ttft_slo: float | None,
    tpot_slo: float | None,
    duration: float,
    instances: int,
    prefill_instances: int,
    policies: str,
    seed: int,
    workloads_dir: str,
    out_dir: str,
    link_gbps: float | None,
    prefetch: bool,
    residency: bool,
    layerwise: bool,
    slo_aware_rounds: bool,
    kv_mib: int,
    tp: int,
    link_like: str | None,
) -> None:
    """Launch a CPU node of tiny models, replay workloads/synth-N-R-X-Y.csv in real time, and report
    SLO attainment and goodput; writes live-*.json (the simulator's schema plus traces) for `aegaeon plot`."""
    import signal

    from aegaeon.bench.e2e import E2ERun, market_models, run_e2e
    from aegaeon.errors import AegaeonError
    from aegaeon.models.demo import aegaeon_home
    from aegaeon.sched.policies import parse_policies
    from aegaeon.sched.slo import SLO
    from aegaeon.sim.runner import write_result
    from aegaeon.sim.sweep import parse_list

    try:
        names = parse_policies(policies, live=True)
    except AegaeonError as exc:
        raise click.BadParameter(str(exc), param_hint="--policy") from None
    # SIGTERM unwinds like Ctrl-C, so the node stops its workers and removes its shared memory.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rate_values = parse_list(rates, float, "--arrival-rate")
    model_counts = parse_list(num_models, int, "--num-models")
    slo = SLO.from_env(ttft_slo, tpot_slo)
    if link_like is not None:
        if link_gbps is not None or ttft_slo is not None or tpot_slo is not None:
            raise click.UsageError(
                "--link-like sets the link rate and the SLOs by rule: give it alone, or "
                "--link-gbps and the SLO flags by hand"
            )
        like = measure_link_like(
            link_like, market_models(max(model_counts), aegaeon_home() / "market"), instances
        )
        click.echo(like.describe(), err=True)
        link_gbps, slo = like.gbps, like.slo
    rows = []
    for count in model_counts:
        for rate in rate_values:
            for policy in names:
                run = E2ERun(
                    count,
                    rate,
                    duration,
                    inlen_scale,
                    outlen_scale,
                    instances,
                    prefill_instances,
                    policy,
                    seed,
                    slo,
                    nnodes,
                    link_gbps,
                    prefetch,
                    tp,
                    residency=residency,
                    layerwise=layerwise,
                    slo_aware_rounds=slo_aware_rounds,
                    kv_mib=kv_mib,
                )
                with _request_progress(f"{policy} {count} models rate {rate:g}") as advance:
                    result = run_e2e(run, aegaeon_home() / "market", Path(workloads_dir), advance)
                if link_like is not None:
                    result["link_like"] = link_like
                path = write_result(Path(out_dir), result)
                rows.append((policy, count, rate, result))
                click.echo(f"wrote {path}", err=True)
    link = f"emulated link {link_gbps:.4g} GB/s" if link_gbps else "native link"
    click.echo(f"{link}; SLO TTFT {slo.ttft:.3g} s, TPOT {slo.tpot:.3g} s")
    click.echo(
        "policy    models  rate requests SLO att. met both goodput p99 TTFT p99 TPOT switches"
        " decode switch paid p50/p99"
    )
    for policy, count, rate, r in rows:
        paid = (
            f"{r['decode_exposed_switch_p50']:.4f}/{r['decode_exposed_switch_p99']:.4f}"
            if r.get("decode_exposed_switch_p50") is not None
            else "-"
        )
        click.echo(
            f"{policy:8s} {count:6d} {rate:5g} {r['num_requests']:8d} {r['slo_attainment']:7.1%} "
            f"{r['met_both_share']:8.1%} {r['goodput']:7.2f} {r['ttft_p99'] or 0:8.3f} "
            f"{r['tpot_p99'] or 0:8.3f} {len(r['trace']['switches']):8d} {paid:>26}"
        )
    for policy in names:
        met = [count for p, count, _, r in rows if p == policy and r["slo_attainment"] >= 0.9]
        click.echo(f"{policy}: most models at >= 90% attainment: {max(met) if met else 'none'}")


def measure_link_like(device: str, models: dict[str, str], instances: int) -> LinkLike:
    """The link rate and SLOs under which the market on this machine has `device`'s switch/step and
    SLO/step ratios (its steps and weights measured here)."""
    from aegaeon.bench.link_like import LinkLike, measure_cpu_market, reference_regime
    from aegaeon.worker.spec import default_threads

    step_s, weight_bytes = measure_cpu_market(models, default_threads(instances))
    return LinkLike(reference_regime(device), step_s, weight_bytes)
