"""`aegaeon plot`: the paper's figures from result JSON (simulated or live sweeps, and traced live
runs)."""

from __future__ import annotations

from pathlib import Path

import click

from aegaeon.cli.root import main


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
    "--scorer",
    type=click.Choice(["ours", "paper"]),
    default="ours",
    show_default=True,
    help="SLO attainment by this project's scorer or by the paper artifact's (files end in -paper).",
)
@click.option(
    "--json-dir", default="plots/json", show_default=True, type=click.Path(file_okay=False)
)
@click.option(
    "--out", "out_dir", default="plots/out", show_default=True, type=click.Path(file_okay=False)
)
def plot_e2e_cmd(
    specs: tuple[str, ...], live: bool, scorer: str, json_dir: str, out_dir: str
) -> None:
    """SLO attainment per system (paper figures 11-13, or live sweeps with --live), PDF and PNG."""
    from aegaeon.plotting import plot_e2e, plot_live_e2e

    if not specs and not live:
        raise click.UsageError(
            "name a figure with --spec (repeatable), or plot live sweeps with --live"
        )
    for spec in specs:
        for path in plot_e2e(spec, Path(json_dir), Path(out_dir), scorer):
            click.echo(str(path))
    if live:
        for path in plot_live_e2e(Path(json_dir), Path(out_dir)):
            click.echo(str(path))


@plot.command("a10")
@click.option("--scorer", type=click.Choice(["ours", "paper"]), default="ours", show_default=True)
@click.option(
    "--json-dir", default="plots/json/A10", show_default=True, type=click.Path(file_okay=False)
)
@click.option(
    "--out", "out_dir", default="plots/out/A10", show_default=True, type=click.Path(file_okay=False)
)
def plot_a10_cmd(scorer: str, json_dir: str, out_dir: str) -> None:
    """Figure 17's A10 panel: SLO attainment per system on an A10 node at 0.1 req/s per model, TTFT 5 s and
    TPOT 0.1 / 0.05 / 0.2 s (results of `plots/make_figures.sh --simulate A10`)."""
    from aegaeon.errors import ConfigError
    from aegaeon.plotting import A10_PANELS, plot_e2e

    drawn = 0
    for spec in A10_PANELS:
        try:
            paths = plot_e2e(spec, Path(json_dir), Path(out_dir), scorer)
        except ConfigError as missing:
            click.echo(f"skipped {spec}: {missing}", err=True)
            continue
        drawn += 1
        for path in paths:
            click.echo(str(path))
    if not drawn:
        raise click.ClickException(
            f"no A10 results in {json_dir}: run `plots/make_figures.sh --simulate A10` first"
        )


@plot.command("tp4")
@click.option("--scorer", type=click.Choice(["ours", "paper"]), default="ours", show_default=True)
@click.option(
    "--json-dir", default="plots/json", show_default=True, type=click.Path(file_okay=False)
)
@click.option(
    "--out", "out_dir", default="plots/out", show_default=True, type=click.Path(file_okay=False)
)
def plot_tp4_cmd(scorer: str, json_dir: str, out_dir: str) -> None:
    """Figure 17's TP4 panel: SLO attainment against the arrival rate for 4 models served by instances of
    4 devices, from results of degree 4 (live `bench e2e --tp 4`, or `sim --tp 4` on measured tp4
    profiles). No TP4 profile or result ships: without a 4-GPU run this panel is absent."""
    from aegaeon.errors import ConfigError
    from aegaeon.plotting import plot_tp

    try:
        paths = plot_tp(Path(json_dir), Path(out_dir), 4, scorer=scorer)
    except ConfigError as missing:
        raise click.ClickException(str(missing)) from None
    for path in paths:
        click.echo(str(path))


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
        from aegaeon.trace_plots import PLOTTERS, load_traced_runs

        runs = load_traced_runs([Path(s) for s in sources or ("plots/json",)], policy)
        paths, text = PLOTTERS[figure](runs, Path(out_dir))
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
