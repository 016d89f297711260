"""`aegaeon bench` of a whole node: e2e replay, sim vs live, chaos."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from aegaeon.cli.bench_parts import bench
from aegaeon.cli.root import _fail, _request_progress


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
@click.option(
    "--ttft-slo", type=float, default=None, help="Seconds [env AEGAEON_TTFT_SLO, default 10]."
)
@click.option(
    "--tpot-slo", type=float, default=None, help="Seconds [env AEGAEON_TPOT_SLO, default 0.1]."
)
@click.option("--duration", default=60.0, show_default=True, help="Seconds of arrivals replayed.")
@click.option(
    "--instances", default=4, show_default=True, help="Virtual CPU instances (worker processes)."
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
    try:
        rate_values = parse_list(rates, float, "--arrival-rate")
        model_counts = parse_list(num_models, int, "--num-models")
        slo = SLO.from_env(ttft_slo, tpot_slo)
        if link_like is not None:
            if link_gbps is not None or ttft_slo is not None or tpot_slo is not None:
                raise click.UsageError(
                    "--link-like sets the link rate and the SLOs by rule: give it alone, or "
                    "--link-gbps and the SLO flags by hand"
                )
            like = _link_like(
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
                    )
                    with _request_progress(f"{policy} {count} models rate {rate:g}") as advance:
                        result = run_e2e(
                            run, aegaeon_home() / "market", Path(workloads_dir), advance
                        )
                    if link_like is not None:
                        result["link_like"] = link_like
                    path = write_result(Path(out_dir), result)
                    rows.append((policy, count, rate, result))
                    click.echo(f"wrote {path}", err=True)
        link = f"emulated link {link_gbps:.4g} GB/s" if link_gbps else "native link"
        click.echo(f"{link}; SLO TTFT {slo.ttft:.3g} s, TPOT {slo.tpot:.3g} s")
        click.echo(
            "policy    models  rate requests SLO att. met both goodput p99 TTFT p99 TPOT switches"
        )
        for policy, count, rate, r in rows:
            click.echo(
                f"{policy:8s} {count:6d} {rate:5g} {r['num_requests']:8d} {r['slo_attainment']:7.1%} "
                f"{r['met_both_share']:8.1%} {r['goodput']:7.2f} {r['ttft_p99'] or 0:8.3f} "
                f"{r['tpot_p99'] or 0:8.3f} {len(r['trace']['switches']):8d}"
            )
        for policy in names:
            met = [count for p, count, _, r in rows if p == policy and r["slo_attainment"] >= 0.9]
            click.echo(f"{policy}: most models at >= 90% attainment: {max(met) if met else 'none'}")
    except AegaeonError as exc:
        raise _fail(exc) from None


def _link_like(device: str, models: dict[str, str], instances: int):
    from aegaeon.bench.link_like import LinkLike, measure_cpu_market, reference_regime
    from aegaeon.worker.spec import default_threads

    step_s, weight_bytes = measure_cpu_market(models, default_threads(instances))
    return LinkLike(reference_regime(device), step_s, weight_bytes)


@bench.command("sim-vs-live")
@click.option(
    "--num-models",
    default="8",
    show_default=True,
    help="Models synth_model_00..; a list (4,8,16 or 4:16:4) sweeps them, each at every rate.",
)
@click.option(
    "--arrival-rate",
    "rates",
    default="1,2,3,4",
    show_default=True,
    help="Requests/s per model, a list.",
)
@click.option("--inlen-scale", default=0.2, show_default=True)
@click.option("--outlen-scale", default=0.2, show_default=True)
@click.option("--duration", default=40.0, show_default=True, help="Seconds of arrivals per run.")
@click.option(
    "--instances",
    default=None,
    type=int,
    help="Worker processes [default: one per core, at least 2].",
)
@click.option("--prefill-instances", default=1, show_default=True)
@click.option(
    "--ttft-slo", type=float, default=None, help="Seconds [env AEGAEON_TTFT_SLO, default 10]."
)
@click.option(
    "--tpot-slo", type=float, default=None, help="Seconds [env AEGAEON_TPOT_SLO, default 0.1]."
)
@click.option(
    "--seeds",
    default="0",
    show_default=True,
    help="Workload seeds, a list: each rate runs once per seed and the figures are means over them "
    "(seeds other than 0 keep their workloads in seed<K>/ under --workloads; with several seeds "
    "the results go to seed<K>/ under --out).",
)
@click.option(
    "--workloads",
    "workloads_dir",
    default="workloads",
    show_default=True,
    type=click.Path(file_okay=False),
)
@click.option(
    "--profiles",
    "profiles_dir",
    default="profiles",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where this machine's profiles are written (<dir>/cpu-<threads>t/).",
)
@click.option("--profile-input-lens", default="8,16,32,64,128,256,384", show_default=True)
@click.option("--profile-batches", default="1,2,4,8", show_default=True)
@click.option(
    "--calibration-runs",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Extra live runs (the listed rates in turn, highest first, on workloads of other seeds) added "
    "to the calibration; each compared run is always calibrated on all the other runs.",
)
@click.option(
    "--out", "out_dir", default="plots/json", show_default=True, type=click.Path(file_okay=False)
)
@click.option(
    "--link-gbps",
    type=float,
    default=None,
    help="Run the live node behind an emulated link of this many GB/s; the simulator models it at G.",
)
@click.option(
    "--link-like",
    default=None,
    metavar="DEVICE",
    help="The link rate and the SLOs chosen by rule as in `bench e2e --link-like` (e.g. H100).",
)
def bench_sim_vs_live_cmd(
    num_models: str,
    rates: str,
    inlen_scale: float,
    outlen_scale: float,
    duration: float,
    instances: int | None,
    prefill_instances: int,
    ttft_slo: float | None,
    tpot_slo: float | None,
    seeds: str,
    workloads_dir: str,
    profiles_dir: str,
    profile_input_lens: str,
    profile_batches: str,
    calibration_runs: int,
    out_dir: str,
    link_gbps: float | None,
    link_like: str | None,
) -> None:
    """Profile this machine, then run each workload live and in the simulator fed with that profile;
    prints both SLO attainments and their gap in points (the design's target: within 5)."""
    import signal

    from aegaeon.bench.e2e import E2ERun, market_models
    from aegaeon.bench.sim_vs_live import calibration_runs as calibration_runs_of
    from aegaeon.bench.sim_vs_live import (
        compare_points,
        default_instances,
        fit_calibration,
        profile_market,
    )
    from aegaeon.errors import AegaeonError
    from aegaeon.models.demo import aegaeon_home
    from aegaeon.sched.slo import SLO
    from aegaeon.sim.runner import write_result
    from aegaeon.sim.sweep import parse_list

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        slo = SLO.from_env(ttft_slo, tpot_slo)
        models_root = aegaeon_home() / "market"
        listed = parse_list(rates, float, "--arrival-rate")
        model_counts = parse_list(num_models, int, "--num-models")
        seed_list = parse_list(seeds, int, "--seeds")
        if len(set(seed_list)) != len(seed_list):
            raise click.BadParameter(f"{seeds!r} repeats a seed", param_hint="--seeds")
        instances = instances or default_instances()
        if link_like is not None:
            if link_gbps is not None or ttft_slo is not None or tpot_slo is not None:
                raise click.UsageError(
                    "--link-like sets the link rate and the SLOs by rule: give it alone, or "
                    "--link-gbps and the SLO flags by hand"
                )
            like = _link_like(link_like, market_models(max(model_counts), models_root), instances)
            click.echo(like.describe(), err=True)
            link_gbps, slo = like.gbps, like.slo
        base = E2ERun(
            max(model_counts),
            1.0,
            duration,
            inlen_scale,
            outlen_scale,
            instances,
            prefill_instances,
            "aegaeon",
            seed_list[0],
            slo,
            link_gbps=link_gbps,
        )
        base.validate()
        market = profile_market(
            base,
            models_root,
            Path(profiles_dir),
            lambda text: click.echo(text, err=True),
            tuple(parse_list(profile_input_lens, int, "--profile-input-lens")),
            tuple(parse_list(profile_batches, int, "--profile-batches")),
        )
        click.echo(f"profiles: {', '.join(market.paths)}", err=True)
        extra = calibration_runs_of(
            base, listed, models_root, Path(workloads_dir), calibration_runs, _request_progress
        )

        def written(seed: int, result) -> None:
            folder = Path(out_dir) if len(seed_list) == 1 else Path(out_dir) / f"seed{seed}"
            for record in (result.live, result.sim, result.bare, result.in_situ):
                click.echo(f"wrote {write_result(folder, record)}", err=True)

        points = [(count, rate) for count in model_counts for rate in listed]
        rows = compare_points(
            base,
            points,
            seed_list,
            models_root,
            Path(workloads_dir),
            market,
            extra,
            _request_progress,
            written,
        )
        lives = [c.live for r in rows for c in r.comparisons] + extra
        link = (
            f"emulated link {link_gbps:.4g} GB/s (simulated at that rate)"
            if link_gbps
            else "native link"
        )
        click.echo(
            f"{base.instances} CPU instances ({prefill_instances} prefill), profile {market.device}, {link}, "
            f"SLO TTFT {slo.ttft:.3g} s / TPOT {slo.tpot:.3g} s, seeds {seeds}; each run predicted with the "
            f"profile calibrated on the other runs (over all of them: serving decode step = "
            f"{fit_calibration(lives, market).describe()}); mean SLO attainment:"
        )
        click.echo(
            "models  rate requests   live  live range    sim  sim-live  bare-sim  bare-live  steps/profile "
            " in-situ  in-situ-live"
        )
        for r in rows:
            low, high = r.live_range
            click.echo(
                f"{r.num_models:6d} {r.rate:5g} {r.requests:8.0f} {r.mean('live'):6.1%} "
                f"{low:5.1%}-{high:5.1%} {r.mean('sim'):6.1%} {r.gap_points('sim'):+9.1f} {r.mean('bare'):9.1%} "
                f"{r.gap_points('bare'):+10.1f} {r.decode_scale:13.2f}x {r.mean('in_situ'):8.1%} "
                f"{r.gap_points('in_situ'):+13.1f}"
            )
        click.echo(
            f"largest gap (points): {max(abs(r.gap_points('sim')) for r in rows):.1f} predicted from the "
            f"calibrated profile, {max(abs(r.gap_points('bare')) for r in rows):.1f} from the bare profile, "
            f"{max(abs(r.gap_points('in_situ')) for r in rows):.1f} with each run's measured quanta"
        )
    except AegaeonError as exc:
        raise _fail(exc) from None


@bench.command("chaos")
@click.option("--num-models", default=4, show_default=True, help="Tiny market models (two shapes).")
@click.option("--requests", default=96, show_default=True, help="Requests per round of load.")
@click.option(
    "--kills", default=5, show_default=True, help="Workers killed with SIGKILL while loaded."
)
@click.option("--max-tokens", default=32, show_default=True)
@click.option("--instances", default=5, show_default=True)
@click.option("--prefill-instances", default=2, show_default=True)
@click.option("--seed", default=0, show_default=True, help="Which workers die, and when.")
def bench_chaos_cmd(
    num_models: int,
    requests: int,
    kills: int,
    max_tokens: int,
    instances: int,
    prefill_instances: int,
    seed: int,
) -> None:
    """Serve the same requests undisturbed and while workers are killed: sent, completed, failed, lost,
    wrong tokens, re-runs, restarts, latency percentiles and the node's memory."""
    from aegaeon.bench.chaos import bench_chaos
    from aegaeon.bench.e2e import market_models
    from aegaeon.errors import AegaeonError
    from aegaeon.models.demo import aegaeon_home

    try:
        r = bench_chaos(
            market_models(num_models, aegaeon_home() / "market"),
            requests,
            kills,
            max_tokens,
            instances,
            prefill_instances,
            seed,
        )
    except AegaeonError as exc:
        raise _fail(exc) from None
    click.echo(r.render())


@bench.command("stall")
@click.option(
    "--requests", default=64, show_default=True, help="Small streaming requests per condition."
)
@click.option("--concurrency", default=4, show_default=True)
@click.option("--max-tokens", default=8, show_default=True)
@click.option("--prompt-mib", default=10.0, show_default=True, help="Size of each big prompt.")
@click.option(
    "--slow-clients", default=64, show_default=True, help="Half-sent requests held open at once."
)
def bench_stall_cmd(
    requests: int, concurrency: int, max_tokens: int, prompt_mib: float, slow_clients: int
) -> None:
    """Small requests' p50/p99 through the HTTP API, undisturbed and while hostile clients (big prompts,
    slow and leaving clients, fuzzed bodies) use the same server (demo pool)."""
    from aegaeon.bench.stall import bench_stall
    from aegaeon.models.demo import demo_models

    if min(requests, concurrency, max_tokens) < 1 or prompt_mib <= 0 or slow_clients < 0:
        raise click.BadParameter(
            "--requests, --concurrency and --max-tokens must be at least 1, --prompt-mib "
            "positive, --slow-clients not negative"
        )
    click.echo(
        bench_stall(
            {k: str(v) for k, v in demo_models().items()},
            requests,
            concurrency,
            max_tokens,
            prompt_mib,
            slow_clients,
        ).render()
    )
