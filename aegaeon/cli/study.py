"""`aegaeon workload`, `sim`, `profile`, `plot`: the paper's tooling."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from aegaeon.cli.root import _fail, main
from aegaeon.sched.decode import DEFAULT_MAX_QUOTA


@main.group()
def workload() -> None:
    """Synthetic workloads in the paper's CSV format."""


@workload.command("gen")
@click.option("--num-models", required=True, help="Model counts: 16,20 or 16:80:4.")
@click.option("--arrival-rate", required=True, help="Requests/s per model: 0.1,0.5 or a range.")
@click.option("--duration", default=300.0, show_default=True, help="Seconds of arrivals.")
@click.option("--inlen-scale", default=1.0, show_default=True)
@click.option("--outlen-scale", default=1.0, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--out", "out_dir", default="workloads", show_default=True, type=click.Path(file_okay=False)
)
def workload_gen(
    num_models: str,
    arrival_rate: str,
    duration: float,
    inlen_scale: float,
    outlen_scale: float,
    seed: int,
    out_dir: str,
) -> None:
    """Write workloads/synth-N-R-X-Y.csv for every N and R given."""
    from aegaeon.errors import AegaeonError
    from aegaeon.sim.sweep import parse_list
    from aegaeon.workload import WorkloadSpec, generate, write_workload

    try:
        for n in parse_list(num_models, int, "--num-models"):
            for rate in parse_list(arrival_rate, float, "--arrival-rate"):
                spec = WorkloadSpec(n, rate, duration, inlen_scale, outlen_scale, seed)
                requests = generate(spec)
                path = write_workload(Path(out_dir) / spec.filename, requests)
                click.echo(f"{path}: {len(requests)} requests")
    except AegaeonError as exc:
        raise _fail(exc) from exc


@main.command()
@click.option("--num-models", required=True, help="Model counts: 16,20 or 16:80:4.")
@click.option("--arrival-rate", required=True, help="Requests/s per model: 0.1 or 0.1:1.0:0.1.")
@click.option("--inlen-scale", default=1.0, show_default=True)
@click.option("--outlen-scale", default=1.0, show_default=True)
@click.option("--policy", default="aegaeon,sllm,sllm+,muxserve", show_default=True)
@click.option("--num-gpus", default=16, show_default=True)
@click.option(
    "--prefill-instances", type=int, default=None, help="Aegaeon prefill GPUs [default: a quarter]."
)
@click.option(
    "--duration",
    default=300.0,
    show_default=True,
    help="Seconds of arrivals for generated workloads.",
)
@click.option("--seed", default=0, show_default=True, help="Seed for generated workloads.")
@click.option(
    "--ttft-slo", type=float, default=None, help="Seconds [env AEGAEON_TTFT_SLO, default 10]."
)
@click.option(
    "--tpot-slo", type=float, default=None, help="Seconds [env AEGAEON_TPOT_SLO, default 0.1]."
)
@click.option(
    "--slo-scale",
    default=1.0,
    show_default=True,
    help="Multiply both SLOs (0.5, 0.3 in the paper).",
)
@click.option(
    "--device", default="H100", show_default=True, help="Profiles under profiles/<device>/."
)
@click.option("--profiles", "profiles_root", type=click.Path(file_okay=False), default=None)
@click.option(
    "--aegaeon-switch-efficiency",
    type=click.FloatRange(0, 1, min_open=True),
    default=None,
    help="Share of PCIe bandwidth Aegaeon switches at [default: the profile's fast_switch_efficiency].",
)
@click.option(
    "--max-quota",
    type=click.FloatRange(0, min_open=True),
    default=DEFAULT_MAX_QUOTA,
    show_default=True,
    help="Aegaeon's decode quota cap Q in seconds. A setting other than the defaults of this and "
    "--aegaeon-switch-efficiency is tagged in the JSON's variant and file name.",
)
@click.option(
    "--workloads",
    "workloads_dir",
    default="workloads",
    show_default=True,
    type=click.Path(file_okay=False),
)
@click.option(
    "--out", "out_dir", default="plots/json", show_default=True, type=click.Path(file_okay=False)
)
def sim(
    num_models: str,
    arrival_rate: str,
    inlen_scale: float,
    outlen_scale: float,
    policy: str,
    num_gpus: int,
    prefill_instances: int | None,
    duration: float,
    seed: int,
    ttft_slo: float | None,
    tpot_slo: float | None,
    slo_scale: float,
    device: str,
    profiles_root: str | None,
    aegaeon_switch_efficiency: float | None,
    max_quota: float,
    workloads_dir: str,
    out_dir: str,
) -> None:
    """Simulate systems over a sweep; one result JSON per point under --out.

    The table's "busy P/D" (aegaeon) is the busy seconds (switching and
    computing) per prefill / decode instance per second of workload. Decode
    instances decode ahead of the TPOT schedule whenever they hold requests, so
    theirs nears 1 at moderate load already; the prefill share shows how close
    grouped FCFS is to its limit. "2nd-tok p90" is the 90th percentile of the
    gap between a request's first and second token: for Aegaeon, the KV
    handoff plus the wait for its model's first decode turn."""
    from aegaeon.config.sim import SimConfig
    from aegaeon.errors import AegaeonError
    from aegaeon.profiles import cost_model_for_workload
    from aegaeon.sched.policies import parse_policies
    from aegaeon.sched.slo import SLO
    from aegaeon.sim.runner import run_sweep
    from aegaeon.sim.sweep import ensure_workload, parse_list, sweep_points

    try:
        slo = SLO.from_env(ttft_slo, tpot_slo).scaled(slo_scale)
        if num_gpus < 2:
            raise click.BadParameter(
                "--num-gpus must be at least 2 (Aegaeon needs a prefill and a decode GPU)"
            )
        points = sweep_points(
            parse_policies(policy),
            parse_list(num_models, int, "--num-models"),
            parse_list(arrival_rate, float, "--arrival-rate"),
            inlen_scale,
            outlen_scale,
        )
        config = SimConfig(
            num_gpus=num_gpus, prefill_instances=prefill_instances, max_quota=max_quota
        )
        root = Path(profiles_root) if profiles_root else None
        rows = []
        with click.progressbar(length=len(points), label="simulating", file=sys.stderr) as bar:

            def progress(name: str, result: dict) -> None:
                rows.append((name, result))
                bar.update(1)

            run_sweep(
                points,
                lambda label: ensure_workload(label, Path(workloads_dir), duration, seed),
                lambda reqs: cost_model_for_workload({r.model for r in reqs}, device, root),
                slo,
                config,
                Path(out_dir),
                progress,
                aegaeon_switch_efficiency,
                device,
            )
    except AegaeonError as exc:
        raise _fail(exc) from exc
    click.echo(
        f"{'policy':<9} {'models':>6} {'rate':>5} {'SLO att.':>8} {'met both':>8} {'goodput':>8} {'p99 TTFT':>8}"
        f" {'2nd-tok p90':>11} {'busy P/D':>9}"
    )
    for name, r in rows:
        p99 = "-" if r["ttft_p99"] is None else f"{r['ttft_p99']:.2f}"
        gap = "-" if r["second_token_gap_p90"] is None else f"{r['second_token_gap_p90']:.2f}"
        load = r.get("instance_load")
        load_text = f"{load['prefill']:.2f}/{load['decode']:.2f}" if load else "-"
        click.echo(
            f"{name:<9} {r['num_models']:>6} {r['arrival_rate']:>5g} {100 * r['slo_attainment']:>7.1f}% "
            f"{100 * r['met_both_share']:>7.1f}% {r['goodput']:>8.2f} {p99:>8} {gap:>11} {load_text:>9}"
        )
    click.echo(f"wrote {len(rows)} results to {out_dir}/")


@main.group(invoke_without_command=True)
@click.option(
    "--model",
    "model_dir",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Measure a profile of this checkpoint on the local device.",
)
@click.option(
    "--name", default=None, help="Model name in the profile [default: the directory name]."
)
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="torch device to measure on (cpu, cuda, cuda:1).",
)
@click.option(
    "--device-name",
    default=None,
    help="Folder under the output dir [default: cpu, or the GPU's name].",
)
@click.option("--input-lens", default="16,32,64,128,256", show_default=True)
@click.option("--batches", default="1,2,4,8", show_default=True)
@click.option(
    "--out",
    "out_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Output root [default: the profiles/ folder, or AEGAEON_PROFILES].",
)
@click.pass_context
def profile(
    ctx: click.Context,
    model_dir: str | None,
    name: str | None,
    device: str,
    device_name: str | None,
    input_lens: str,
    batches: str,
    out_dir: str | None,
) -> None:
    """Cost-model profiles (profiles/<device>/<model>.json): measure one with --model, or `fit` measured tables."""
    if ctx.invoked_subcommand is not None:
        return
    if model_dir is None:
        click.echo(ctx.get_help())
        return
    from aegaeon.errors import AegaeonError
    from aegaeon.profiler import ProfileRequest, measure_profile
    from aegaeon.profiles import profiles_dir, write_profile

    def ints(flag: str, text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise click.BadParameter(
                f"{text!r} is not a comma-separated list of integers", param_hint=flag
            ) from None
        if not values or min(values) <= 0:
            raise click.BadParameter("give positive integers", param_hint=flag)
        return values

    if device_name is None:
        import torch

        device_name = (
            "cpu"
            if device == "cpu"
            else torch.cuda.get_device_name(torch.device(device)).replace(" ", "_")
        )
    req = ProfileRequest(
        Path(model_dir),
        name or Path(model_dir).name,
        device,
        device_name,
        ints("--input-lens", input_lens),
        ints("--batches", batches),
    )
    grid = len(req.input_lens) * len(req.batches)
    try:
        with click.progressbar(length=grid, label="profiling", file=sys.stderr) as bar:
            result = measure_profile(req, progress=lambda done, _total: bar.update(done - bar.pos))
        path = write_profile(result, Path(out_dir) if out_dir else profiles_dir())
    except AegaeonError as exc:
        raise _fail(exc) from None
    err = result["fit_error"]
    click.echo(f"wrote {path}")
    click.echo(
        f"fit error: prefill mean {err['prefill_mean_rel']:.1%} max {err['prefill_max_rel']:.1%}; "
        f"decode mean {err['decode_mean_rel']:.1%} max {err['decode_max_rel']:.1%}"
    )


@profile.command("fit")
@click.argument("raw_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--device", default="H100", show_default=True)
@click.option(
    "--out", "out_dir", default="profiles", show_default=True, type=click.Path(file_okay=False)
)
def profile_fit(raw_dir: str, device: str, out_dir: str) -> None:
    """Fit profiles from measured tables RAW_DIR/<model>/i<I>b<B>.json."""
    from aegaeon.errors import AegaeonError
    from aegaeon.profiles import fit_directory

    try:
        written = fit_directory(Path(raw_dir), device, Path(out_dir))
    except AegaeonError as exc:
        raise _fail(exc) from exc
    if not written:
        raise click.ClickException(f"no known model folders under {raw_dir}")
    for path in written:
        err = json.loads(path.read_text())["fit_error"]
        click.echo(
            f"{path}: prefill error mean {100 * err['prefill_mean_rel']:.1f}% max "
            f"{100 * err['prefill_max_rel']:.1f}%, decode mean {100 * err['decode_mean_rel']:.1f}% "
            f"max {100 * err['decode_max_rel']:.1f}%"
        )


@main.group()
def plot() -> None:
    """Figures from result JSON."""


@plot.command("e2e")
@click.option(
    "--spec",
    "specs",
    multiple=True,
    help="Figure: 0.1, 0.5, 40, 0.1-ix2, 0.1-ox2, 0.5-ix2, 0.5-ox2, slo0.5, slo0.3 (repeatable).",
)
@click.option(
    "--live",
    is_flag=True,
    help="Plot the live `aegaeon bench e2e` sweeps in --json-dir instead "
    "(one figure per workload and SLO setting).",
)
@click.option(
    "--json-dir", default="plots/json", show_default=True, type=click.Path(file_okay=False)
)
@click.option(
    "--out", "out_dir", default="plots/out", show_default=True, type=click.Path(file_okay=False)
)
def plot_e2e_cmd(specs: tuple[str, ...], live: bool, json_dir: str, out_dir: str) -> None:
    """SLO attainment per system (paper figures 11-13, or live sweeps with --live), PDF and PNG."""
    from aegaeon.errors import AegaeonError
    from aegaeon.plotting import plot_e2e, plot_live_e2e

    if not specs and not live:
        raise click.UsageError(
            "name a figure with --spec (repeatable), or plot live sweeps with --live"
        )
    try:
        for spec in specs:
            for path in plot_e2e(spec, Path(json_dir), Path(out_dir)):
                click.echo(str(path))
        if live:
            for path in plot_live_e2e(Path(json_dir), Path(out_dir)):
                click.echo(str(path))
    except AegaeonError as exc:
        raise _fail(exc) from exc


def _trace_plot_command(figure: str, summary: str) -> None:
    @plot.command(
        figure,
        short_help=summary,
        help=f"{summary}, from `aegaeon bench e2e` results (PDF and PNG, plus the numbers behind it).",
    )
    @click.option(
        "--json",
        "sources",
        multiple=True,
        type=click.Path(exists=True),
        help="Result files or folders (repeatable) [default: plots/json].",
    )
    @click.option("--policy", default=None, help="Only runs of this policy (aegaeon or sllm).")
    @click.option(
        "--out", "out_dir", default="plots/out", show_default=True, type=click.Path(file_okay=False)
    )
    def command(sources: tuple[str, ...], policy: str | None, out_dir: str) -> None:
        from aegaeon.errors import AegaeonError
        from aegaeon.trace_plots import PLOTTERS, load_traced_runs

        try:
            runs = load_traced_runs([Path(s) for s in sources or ("plots/json",)], policy)
            paths, text = PLOTTERS[figure](runs, Path(out_dir))
        except AegaeonError as exc:
            raise _fail(exc) from None
        click.echo(text)
        for path in paths:
            click.echo(str(path))


for _figure, _summary in (
    ("breakdown", "Fig. 14: request latency and model switch breakdowns"),
    ("autoscale-cdf", "Fig. 15: CDF of scale-up (model switch) latency"),
    ("kvcache-cdf", "Fig. 16: CDF of KV-cache swap latency"),
    ("frag", "KV-region fragmentation of every worker's arena over time"),
):
    _trace_plot_command(_figure, _summary)


if __name__ == "__main__":
    main()
