"""`aegaeon bench tp`: tensor-parallel instances of degree 1, 2, 4 side by side."""

from __future__ import annotations

import json

import click

from aegaeon.cli.bench_parts import bench


@bench.command("tp")
@click.option(
    "--models",
    "model_dirs",
    default=None,
    help="Two checkpoint dirs of one shape, comma-separated [default: two ~450 MB float32 models "
    "made on first use under AEGAEON_HOME].",
)
@click.option("--degrees", default="1,2,4", show_default=True, help="Tensor-parallel degrees.")
@click.option("--batch", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--steps", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--switches", default=6, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--threads", default=1, show_default=True, type=click.IntRange(min=1), help="Per rank."
)
@click.option(
    "--json",
    "json_out",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write every timing here.",
)
def bench_tp_cmd(
    model_dirs: str | None,
    degrees: str,
    batch: int,
    steps: int,
    switches: int,
    threads: int,
    json_out: str | None,
) -> None:
    """Decode step time, model switch time and the collectives' share at each tensor-parallel degree
    (gloo on CPU), on two models of one shape in one run."""
    from aegaeon.bench.tp import bench_models, bench_tp
    from aegaeon.models.demo import aegaeon_home

    try:
        wanted = tuple(int(d) for d in degrees.split(",") if d.strip())
    except ValueError:
        raise click.BadParameter(
            f"{degrees!r} is not a list like 1,2,4", param_hint="--degrees"
        ) from None
    if not wanted or min(wanted) < 1:
        raise click.BadParameter("give degrees of at least 1", param_hint="--degrees")
    if model_dirs:
        paths = [p.strip() for p in model_dirs.split(",") if p.strip()]
        if len(paths) != 2:
            raise click.BadParameter("give exactly two checkpoint dirs", param_hint="--models")
        models = {"a": paths[0], "b": paths[1]}
    else:
        click.echo("making (once) two bench models under AEGAEON_HOME ...", err=True)
        models = bench_models(aegaeon_home() / "bench-tp")

    def report(point) -> None:
        click.echo(
            f"TP {point.tp}: decode step {point.step_median_s * 1e3:.1f} ms "
            f"(min {min(point.decode_step_s) * 1e3:.1f}, max {max(point.decode_step_s) * 1e3:.1f}), "
            f"switch {point.switch_median_s * 1e3:.1f} ms "
            f"(min {min(point.switch_s) * 1e3:.1f}, max {max(point.switch_s) * 1e3:.1f}), "
            f"collectives {point.comm_share:.0%} of a step",
            err=True,
        )

    points = bench_tp(models, wanted, batch, steps, switches, threads, progress=report)
    base = points[0]
    click.echo(f"model {points[0].weight_mib:.0f} MiB, batch {batch}, {threads} thread(s) per rank")
    click.echo(
        "| TP | decode step ms (median) | vs first | switch ms (median) | vs first | collectives |"
    )
    click.echo("|---|---|---|---|---|---|")
    for p in points:
        click.echo(
            f"| {p.tp} | {p.step_median_s * 1e3:.1f} | {p.step_median_s / base.step_median_s:.2f}x "
            f"| {p.switch_median_s * 1e3:.1f} | {p.switch_median_s / base.switch_median_s:.2f}x "
            f"| {p.comm_share:.0%} |"
        )
    if json_out:
        from dataclasses import asdict

        with open(json_out, "w") as f:
            json.dump([asdict(p) for p in points], f, indent=1)
        click.echo(f"wrote {json_out}", err=True)
