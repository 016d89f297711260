"""`aegaeon workload gen` and `aegaeon sim`: the paper's synthetic workloads and the simulated
sweeps run over them. (Past 300 lines: most of it is `sim`'s options, each documented where it is
declared.)"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from aegaeon.cli.root import main, slo_options, tp_option
from aegaeon.sched.decode import DEFAULT_MAX_QUOTA


@main.group()
def workload() -> None:
    """Synthetic workloads in the paper's CSV format."""


@workload.command("gen")
@click.option("--num-models", default=None, help="Model counts: 16,20 or 16:80:4.")
@click.option("--arrival-rate", default=None, help="Requests/s per model: 0.1,0.5 or a range.")
@click.option(
    "--paper-grid",
    is_flag=True,
    help="Write every workload of the paper's figures 11-13 instead (8..80 models by 2 at 0.1 req/s over "
    "120 s and 0.5 req/s over 60 s, each also with inputs and outputs x2; 40 models at 0.05..0.70 req/s "
    "over 60 s).",
)
@click.option("--duration", default=300.0, show_default=True, help="Seconds of arrivals.")
@click.option("--inlen-scale", default=1.0, show_default=True)
@click.option("--outlen-scale", default=1.0, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--out", "out_dir", default="workloads", show_default=True, type=click.Path(file_okay=False)
)
def workload_gen(
    num_models: str | None,
    arrival_rate: str | None,
    paper_grid: bool,
    duration: float,
    inlen_scale: float,
    outlen_scale: float,
    seed: int,
    out_dir: str,
) -> None:
    """Write workloads/synth-N-R-X-Y.csv for every N and R given (or the paper's whole grid)."""
    from aegaeon.sim.sweep import parse_list
    from aegaeon.workload import WorkloadSpec, generate, write_workload
    from aegaeon.workload import paper_grid as paper_specs

    if paper_grid:
        if num_models or arrival_rate:
            raise click.UsageError(
                "--paper-grid writes its own grid: drop --num-models/--arrival-rate"
            )
        specs = paper_specs(seed)
    elif not num_models or not arrival_rate:
        raise click.UsageError("give --num-models and --arrival-rate, or --paper-grid")
    else:
        specs = [
            WorkloadSpec(n, rate, duration, inlen_scale, outlen_scale, seed)
            for n in parse_list(num_models, int, "--num-models")
            for rate in parse_list(arrival_rate, float, "--arrival-rate")
        ]
    if not paper_grid:
        for spec in specs:
            requests = generate(spec)
            path = write_workload(Path(out_dir) / spec.filename, requests)
            click.echo(f"{path}: {len(requests)} requests")
        return
    with click.progressbar(specs, label="writing the paper's workloads", file=sys.stderr) as bar:
        for spec in bar:
            write_workload(Path(out_dir) / spec.filename, generate(spec))
    click.echo(f"wrote {len(specs)} workloads to {out_dir}/")


@main.command()
@click.option("--num-models", required=True, help="Model counts: 16,20 or 16:80:4.")
@click.option("--arrival-rate", required=True, help="Requests/s per model: 0.1 or 0.1:1.0:0.1.")
@click.option("--inlen-scale", default=1.0, show_default=True)
@click.option("--outlen-scale", default=1.0, show_default=True)
@click.option("--policy", default="aegaeon,sllm,sllm+,muxserve", show_default=True)
@click.option("--num-gpus", default=16, show_default=True)
@tp_option(
    "Devices per instance (tensor parallelism): --num-gpus / N instances, timed by the profiles in "
    "<device>/tp<N>/ (measure them with `aegaeon profile --tp N`); tagged `tp<N>`."
)
@click.option(
    "--prefill-instances",
    type=int,
    default=None,
    help="Aegaeon prefill instances [default: a quarter of the instances].",
)
@click.option(
    "--duration",
    default=300.0,
    show_default=True,
    help="Seconds of arrivals for generated workloads.",
)
@click.option("--seed", default=0, show_default=True, help="Seed for generated workloads.")
@slo_options
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
    "--mix",
    default=None,
    help="Profiles the workload's models stand for, cycled: model i is the (i mod len)-th (e.g. "
    "qwen2_5_7b,yi1_5_6b_chat) [default: the paper's 6 x Qwen2.5-7B, 2 x Yi-1.5-9B, 2 x Llama-2-13B].",
)
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
    "--prefetch",
    is_flag=True,
    help="Aegaeon: each decode turn copies the next turn's weights while it decodes, rounds planned on the "
    "exposed switch (as live decode workers with `aegaeon serve --prefetch`); tagged `prefetch`.",
)
@click.option(
    "--prefill-prefetch",
    is_flag=True,
    help="Aegaeon: each prefill instance copies its next group's model while the current group computes "
    "(live prefill workers do with `serve --prefetch`, which turns on both kinds); tagged `pfprefill`.",
)
@click.option(
    "--slo-aware-rounds",
    is_flag=True,
    help="Aegaeon, beyond the paper: shorten a decode turn when a request waiting for a later turn of the "
    "round would otherwise miss its first decode deadline (simulated only); tagged `sloround`.",
)
@click.option(
    "--residency",
    is_flag=True,
    help="Aegaeon, beyond the paper: every instance keeps the models it ran in device memory the KV in use "
    "leaves free, evicting the one needed last (as `aegaeon serve --residency`); tagged `resident`.",
)
@click.option(
    "--layerwise",
    is_flag=True,
    help="Aegaeon, beyond the paper: a switch's first forward starts before its copy has landed, each "
    "layer waiting for its own weights (as `aegaeon serve --layerwise`); tagged `layerwise`.",
)
@click.option(
    "--replay-seconds",
    type=click.FloatRange(0),
    default=120.0,
    show_default=True,
    help="Replay only the arrivals of this first stretch of each workload, for every system (the "
    "artifact's window); 0 replays all of it.",
)
@click.option(
    "--ae-latency",
    type=click.Choice(["artifact", "profile"]),
    default="artifact",
    show_default=True,
    help="How sllm-ae and sllm+-ae time iterations: the artifact's latency regressions (refitted from the "
    "profiles' measured tables) or this project's fitted cost model.",
)
@click.option(
    "--resample-lengths",
    is_flag=True,
    help="Replay each file with the lengths the artifact's loader draws from it (with replacement, seed "
    "0), to check sllm-ae and sllm+-ae against the artifact's own figures; tagged `resampled`.",
)
@click.option(
    "--model-mapping",
    type=click.Choice(["index", "appearance"]),
    default=None,
    help="Which profile a workload model stands for: by its index (synth_model_NN -> NN mod 10, the real "
    "system's) or by its order of first arrival (the artifact simulator's) [default: appearance for the "
    "-ae baselines, index for the others].",
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
    tp: int,
    prefill_instances: int | None,
    duration: float,
    seed: int,
    ttft_slo: float | None,
    tpot_slo: float | None,
    slo_scale: float,
    device: str,
    profiles_root: str | None,
    mix: str | None,
    aegaeon_switch_efficiency: float | None,
    max_quota: float,
    prefetch: bool,
    prefill_prefetch: bool,
    slo_aware_rounds: bool,
    residency: bool,
    layerwise: bool,
    replay_seconds: float,
    ae_latency: str,
    resample_lengths: bool,
    model_mapping: str | None,
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
    from aegaeon.config import PAPER_MIX
    from aegaeon.config.sim import SimConfig
    from aegaeon.profiles import (
        appearance_assignment,
        cost_model_for_workload,
        load_device_profiles,
    )
    from aegaeon.sched.policies import parse_policies
    from aegaeon.sched.slo import SLO
    from aegaeon.sim.report import render_table
    from aegaeon.sim.runner import run_sweep
    from aegaeon.sim.sweep import ensure_workload, parse_list, sweep_points

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
    root = Path(profiles_root) if profiles_root else None
    if num_gpus % tp or num_gpus // tp < 2:
        raise click.BadParameter(
            f"--num-gpus {num_gpus} must make at least 2 instances of --tp {tp} devices (a prefill and a "
            f"decode one)",
            param_hint="--num-gpus",
        )
    _, link = load_device_profiles(device, root, tp)
    models_mix = tuple(m.strip() for m in mix.split(",") if m.strip()) if mix else PAPER_MIX
    config = SimConfig(
        num_gpus=num_gpus,
        tp=tp,
        device_memory_bytes=link.device_memory_bytes,  # the device's, as its profiles state it
        prefill_instances=prefill_instances,
        max_quota=max_quota,
        replay_seconds=replay_seconds or None,
        prefetch=prefetch,
        prefill_prefetch=prefill_prefetch,
        slo_aware_rounds=slo_aware_rounds,
        residency=residency,
        layerwise=layerwise,
        artifact_latency=ae_latency == "artifact",
        resample_lengths=resample_lengths,
    )
    rows = []
    with click.progressbar(length=len(points), label="simulating", file=sys.stderr) as bar:

        def progress(name: str, result: dict) -> None:
            rows.append((name, result))
            bar.update(1)

        run_sweep(
            points,
            lambda label: ensure_workload(label, Path(workloads_dir), duration, seed),
            lambda reqs, mapping: cost_model_for_workload(
                {r.model for r in reqs},
                device,
                root,
                models_mix,
                assignment=appearance_assignment((r.model for r in reqs), models_mix)
                if mapping == "appearance"
                else None,
                tp=tp,
            ),
            slo,
            config,
            Path(out_dir),
            progress,
            aegaeon_switch_efficiency,
            device,
            model_mapping,
        )
    click.echo(render_table([result for _, result in rows]))
    click.echo(f"wrote {len(rows)} results to {out_dir}/")
