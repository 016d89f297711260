"""The `aegaeon` command. Thin: options are parsed here, work is done in the library."""

from __future__ import annotations

import json
import logging
import os
import sys

import click


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        filename=os.environ.get("AEGAEON_LOG_FILE"),
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """aegaeon: serve many LLMs on a shared pool of devices."""
    _setup_logging(verbose)


@main.group()
def bench() -> None:
    """Benchmarks; paste their output into benchmarks/RESULTS.md."""


@bench.command("alloc")
@click.option("--pairs", default=1_000_000, show_default=True, help="Free+allocate pairs per variant.")
@click.option("--live", default=1024, show_default=True, help="Blocks kept allocated during the run.")
@click.option("--block-bytes", default=16384, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def bench_alloc(pairs: int, live: int, block_bytes: int, as_json: bool) -> None:
    """Slab allocator alloc+free pairs per second: C++, from Python, vs a Python free list."""
    from aegaeon.bench.alloc import run_alloc_bench

    if pairs <= 0 or live <= 0 or block_bytes <= 0:
        raise click.BadParameter("--pairs, --live and --block-bytes must be positive")
    result = run_alloc_bench(pairs=pairs, live=live, block_bytes=block_bytes)
    if as_json:
        payload = dict(result.__dict__, binding_vs_freelist=result.binding_vs_freelist,
                       cpp_vs_freelist=result.cpp_vs_freelist)
        click.echo(json.dumps(payload))
        return
    click.echo(f"pairs per variant:              {result.pairs}")
    click.echo(f"C++ loop:                       {result.cpp_pairs_per_s:,.0f} pairs/s")
    click.echo(f"Python -> C++ allocator:        {result.python_binding_pairs_per_s:,.0f} pairs/s")
    click.echo(f"plain Python free list:         {result.python_freelist_pairs_per_s:,.0f} pairs/s")
    click.echo(f"ratio C++ / free list:          {result.cpp_vs_freelist:.2f}x")
    click.echo(f"ratio Python->C++ / free list:  {result.binding_vs_freelist:.2f}x")


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


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
@click.option("--out", "out_dir", default="workloads", show_default=True, type=click.Path(file_okay=False))
def workload_gen(num_models: str, arrival_rate: str, duration: float, inlen_scale: float, outlen_scale: float,
                 seed: int, out_dir: str) -> None:
    """Write workloads/synth-N-R-X-Y.csv for every N and R given."""
    from pathlib import Path

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
@click.option("--prefill-instances", type=int, default=None, help="Aegaeon prefill GPUs [default: a quarter].")
@click.option("--duration", default=300.0, show_default=True, help="Seconds of arrivals for generated workloads.")
@click.option("--seed", default=0, show_default=True, help="Seed for generated workloads.")
@click.option("--ttft-slo", type=float, default=None, help="Seconds [env AEGAEON_TTFT_SLO, default 10].")
@click.option("--tpot-slo", type=float, default=None, help="Seconds [env AEGAEON_TPOT_SLO, default 0.1].")
@click.option("--slo-scale", default=1.0, show_default=True, help="Multiply both SLOs (0.5, 0.3 in the paper).")
@click.option("--device", default="H100", show_default=True, help="Profiles under profiles/<device>/.")
@click.option("--profiles", "profiles_root", type=click.Path(file_okay=False), default=None)
@click.option("--aegaeon-switch-efficiency", type=float, default=None,
              help="Share of PCIe bandwidth Aegaeon switches at [default: the profile's fast_switch_efficiency].")
@click.option("--workloads", "workloads_dir", default="workloads", show_default=True, type=click.Path(file_okay=False))
@click.option("--out", "out_dir", default="plots/json", show_default=True, type=click.Path(file_okay=False))
def sim(num_models: str, arrival_rate: str, inlen_scale: float, outlen_scale: float, policy: str, num_gpus: int,
        prefill_instances: int | None, duration: float, seed: int, ttft_slo: float | None, tpot_slo: float | None,
        slo_scale: float, device: str, profiles_root: str | None, aegaeon_switch_efficiency: float | None,
        workloads_dir: str, out_dir: str) -> None:
    """Simulate systems over a sweep; one result JSON per point under --out."""
    from pathlib import Path

    from aegaeon.errors import AegaeonError
    from aegaeon.profiles import cost_model_for_workload
    from aegaeon.sched.slo import SLO
    from aegaeon.sim.core import SimConfig
    from aegaeon.sim.runner import run_sweep
    from aegaeon.sim.sweep import ensure_workload, parse_list, parse_policies, sweep_points

    try:
        slo = SLO.from_env(ttft_slo, tpot_slo).scaled(slo_scale)
        if num_gpus < 2:
            raise click.BadParameter("--num-gpus must be at least 2 (Aegaeon needs a prefill and a decode GPU)")
        points = sweep_points(parse_policies(policy), parse_list(num_models, int, "--num-models"),
                              parse_list(arrival_rate, float, "--arrival-rate"), inlen_scale, outlen_scale)
        config = SimConfig(num_gpus=num_gpus, prefill_instances=prefill_instances)
        root = Path(profiles_root) if profiles_root else None
        rows = []
        with click.progressbar(length=len(points), label="simulating", file=sys.stderr) as bar:
            def progress(name: str, result: dict) -> None:
                rows.append((name, result))
                bar.update(1)

            run_sweep(points, lambda label: ensure_workload(label, Path(workloads_dir), duration, seed),
                      lambda reqs: cost_model_for_workload({r.model for r in reqs}, device, root),
                      slo, config, Path(out_dir), progress, aegaeon_switch_efficiency)
    except AegaeonError as exc:
        raise _fail(exc) from exc
    click.echo(f"{'policy':<9} {'models':>6} {'rate':>5} {'SLO att.':>8} {'met both':>8} {'goodput':>8} {'p99 TTFT':>8}")
    for name, r in rows:
        p99 = "-" if r["ttft_p99"] is None else f"{r['ttft_p99']:.2f}"
        click.echo(f"{name:<9} {r['num_models']:>6} {r['arrival_rate']:>5g} {100 * r['slo_attainment']:>7.1f}% "
                   f"{100 * r['met_both_share']:>7.1f}% {r['goodput']:>8.2f} {p99:>8}")
    click.echo(f"wrote {len(rows)} results to {out_dir}/")


@main.group()
def profile() -> None:
    """Cost-model profiles (profiles/<device>/<model>.json)."""


@profile.command("fit")
@click.argument("raw_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--device", default="H100", show_default=True)
@click.option("--out", "out_dir", default="profiles", show_default=True, type=click.Path(file_okay=False))
def profile_fit(raw_dir: str, device: str, out_dir: str) -> None:
    """Fit profiles from measured tables RAW_DIR/<model>/i<I>b<B>.json."""
    from pathlib import Path

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
        click.echo(f"{path}: prefill error mean {100 * err['prefill_mean_rel']:.1f}% max "
                   f"{100 * err['prefill_max_rel']:.1f}%, decode mean {100 * err['decode_mean_rel']:.1f}% "
                   f"max {100 * err['decode_max_rel']:.1f}%")


@main.group()
def plot() -> None:
    """Figures from result JSON."""


@plot.command("e2e")
@click.option("--spec", "specs", multiple=True, required=True,
              help="Figure: 0.1, 0.5, 40, 0.1-ix2, 0.1-ox2, 0.5-ix2, 0.5-ox2, slo0.5, slo0.3 (repeatable).")
@click.option("--json-dir", default="plots/json", show_default=True, type=click.Path(file_okay=False))
@click.option("--out", "out_dir", default="plots/out", show_default=True, type=click.Path(file_okay=False))
def plot_e2e_cmd(specs: tuple[str, ...], json_dir: str, out_dir: str) -> None:
    """SLO attainment per system (paper figures 11-13), PDF and PNG."""
    from pathlib import Path

    from aegaeon.errors import AegaeonError
    from aegaeon.plotting import plot_e2e

    try:
        for spec in specs:
            for path in plot_e2e(spec, Path(json_dir), Path(out_dir)):
                click.echo(str(path))
    except AegaeonError as exc:
        raise _fail(exc) from exc


if __name__ == "__main__":
    main()
