"""`aegaeon bench sim-vs-live`: profile this machine, replay workloads live, and compare the
simulator's prediction with what the live node did."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from aegaeon.cli.bench_e2e import measure_link_like
from aegaeon.cli.bench_parts import bench
from aegaeon.cli.root import _request_progress, mechanism_options, slo_options


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
@slo_options
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
@mechanism_options
@click.option(
    "--prefetch",
    is_flag=True,
    help="Live decode workers prefetch the next turn's weights (`serve --prefetch`), and the simulator "
    "models the same (`sim --prefetch`); results tagged `prefetch`.",
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
    prefetch: bool,
    residency: bool,
    layerwise: bool,
    slo_aware_rounds: bool,
    kv_mib: int,
    link_like: str | None,
) -> None:
    """Profile this machine, then run each workload live and in the simulator fed with that profile;
    prints both SLO attainments and their gap in points (the design's target: within 5)."""
    import signal

    from aegaeon.bench.e2e import E2ERun, market_models
    from aegaeon.bench.market_profile import fit_calibration, profile_market
    from aegaeon.bench.sim_vs_live import calibration_runs as calibration_runs_of
    from aegaeon.bench.sim_vs_live import compare_points, default_instances
    from aegaeon.models.demo import aegaeon_home
    from aegaeon.sched.slo import SLO
    from aegaeon.sim.runner import write_result
    from aegaeon.sim.sweep import parse_list

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
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
        like = measure_link_like(
            link_like, market_models(max(model_counts), models_root), instances
        )
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
        prefetch=prefetch,
        residency=residency,
        layerwise=layerwise,
        slo_aware_rounds=slo_aware_rounds,
        kv_mib=kv_mib,
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
