"""`aegaeon bench layerwise`: what layer-wise readiness hides of a cold switch (aegaeon.bench.layerwise)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from aegaeon.cli.bench_parts import bench


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: give comma-separated positive integers") from None
    if any(size < 1 for size in sizes):
        raise click.BadParameter(f"{text!r}: every size must be at least 1")
    return sizes


def _ratios(text: str) -> tuple[float, ...]:
    try:
        ratios = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: give comma-separated positive numbers") from None
    if not ratios or any(not ratio > 0 for ratio in ratios):
        raise click.BadParameter(f"{text!r}: give at least one ratio, each positive")
    return ratios


@bench.command("layerwise")
@click.option(
    "--model",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Checkpoint dir [default: a 16-layer, 15M-parameter model made on first use].",
)
@click.option(
    "--prefills", default="128,512", show_default=True, help="Prompt lengths, comma-separated."
)
@click.option(
    "--decode-batches",
    default="8",
    show_default=True,
    help="Decode batch sizes, comma-separated (empty: none).",
)
@click.option(
    "--ratios",
    default="0.5,1,2,4",
    show_default=True,
    help="Copy time over forward time, comma-separated: each sets the emulated link of a point.",
)
@click.option("--trials", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print the points as JSON.")
def bench_layerwise_cmd(
    model: str | None,
    prefills: str,
    decode_batches: str,
    ratios: str,
    trials: int,
    as_json: bool,
) -> None:
    """Switch time exposed to the first forward after a cold switch, with the forward waiting for the whole
    copy and with layer-wise readiness (each layer waits only for its own weights), on CPU at emulated links
    that make the copy a chosen multiple of the forward; beside the cost model's prediction."""
    from aegaeon.bench.layerwise import bench_layerwise
    from aegaeon.bench.models import deep_bench_model
    from aegaeon.models.demo import aegaeon_home

    points = bench_layerwise(
        Path(model) if model else deep_bench_model(aegaeon_home()),
        _sizes(prefills),
        _sizes(decode_batches),
        _ratios(ratios),
        trials,
        progress=lambda line: click.echo(line, err=True),
    )
    if as_json:
        click.echo(json.dumps([asdict(p) | {"saved": p.saved} for p in points], indent=1))
        return
    click.echo(
        f"{'forward':<14} {'copy/fwd':>8} {'forward ms':>11} {'copy ms':>8} "
        f"{'whole-copy ms (lo-hi)':>22} {'layer-wise ms (lo-hi)':>22} {'predicted':>9} {'hidden':>7}"
    )
    for p in points:
        w, lw = p.whole_copy_exposed_s, p.layerwise_exposed_s
        click.echo(
            f"{f'{p.kind} {p.size}':<14} {p.ratio:>8g} {p.forward_s.median * 1e3:>11.1f} "
            f"{p.copy_s * 1e3:>8.1f} "
            f"{f'{w.median * 1e3:.1f} ({w.low * 1e3:.1f}-{w.high * 1e3:.1f})':>22} "
            f"{f'{lw.median * 1e3:.1f} ({lw.low * 1e3:.1f}-{lw.high * 1e3:.1f})':>22} "
            f"{p.predicted_s * 1e3:>9.1f} {p.saved:>7.0%}"
        )
