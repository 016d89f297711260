"""The `aegaeon` command's root group and what its subcommands share. Thin: options are parsed in
aegaeon.cli.*, work is done in the library."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from aegaeon import __version__
from aegaeon.config.env import env_str


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        filename=env_str("AEGAEON_LOG_FILE"),
    )


@contextmanager
def _request_progress(label: str):
    """A progress bar whose total is learnt from the first report; yields the `progress(done, total)` callback."""
    with click.progressbar(length=1, label=label, file=sys.stderr) as bar:

        def advance(done: int, total: int) -> None:
            bar.length = total
            bar.update(done - bar.pos)

        yield advance


LIST_FLAGS = ("--num-models", "--arrival-rate", "--seeds")  # take "16,20", "16:80:4" or "16 20 24"


def join_list_values(args: list[str]) -> list[str]:
    """`--num-models 16 20 24` -> `--num-models 16,20,24` (the paper artifact's form), for LIST_FLAGS; the
    commands that take them have no positional arguments for the extra words to be mistaken for."""
    out: list[str] = []
    i = 0
    while i < len(args):
        out.append(args[i])
        if args[i] in LIST_FLAGS and i + 1 < len(args):
            values = [args[i + 1]]
            i += 2
            while i < len(args) and not args[i].startswith("-") and _looks_numeric(args[i]):
                values.append(args[i])
                i += 1
            out.append(",".join(values))
            continue
        i += 1
    return out


def _looks_numeric(text: str) -> bool:
    return all(
        part.replace(".", "", 1).isdigit() for part in text.replace(":", ",").split(",") if part
    )


class ReportingGroup(click.Group):
    """The one place where an error of aegaeon (bad input, a missing file, a refused request) becomes a
    clean `Error: ...` and exit code 1 instead of a traceback, for every command under the group."""

    def invoke(self, ctx: click.Context):
        from aegaeon.errors import AegaeonError

        try:
            return super().invoke(ctx)
        except AegaeonError as exc:
            raise _fail(exc) from None


class ListJoiningGroup(ReportingGroup):
    """The root group: also takes list flags in the artifact's spaced form."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, join_list_values(args))


@click.group(cls=ListJoiningGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="aegaeon")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """aegaeon: serve many LLMs on a shared pool of devices."""
    _setup_logging(verbose)


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


def _parse_models(spec: str | None) -> dict[str, str]:
    """`DIR1,DIR2` or `name=DIR,...`; None means the embedded demo pool."""

    if not spec:
        from aegaeon.models.demo import demo_models

        return {name: str(path) for name, path in demo_models().items()}
    models: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, path = item.rpartition("=") if "=" in item else (Path(item).name, "", item)
        if not name:
            raise click.BadParameter(
                f"model {item!r} has no name: use NAME=DIR or a directory path",
                param_hint="--models",
            )
        if name in models:
            raise click.BadParameter(
                f"model name {name!r} appears twice: use NAME=DIR to tell them apart",
                param_hint="--models",
            )
        models[name] = path
    if not models:
        raise click.BadParameter("no models given", param_hint="--models")
    return models


def _progress_bar(label: str):
    """A progress callback (model, done, total) that draws a bar on stderr for large loads."""
    bars: dict[str, object] = {}

    def report(model: str, done: int, total: int) -> None:
        if total < 256 * 2**20:
            return
        bar = bars.get(model)
        if bar is None:
            bar = bars[model] = click.progressbar(
                length=total, label=f"{label} {model}", file=sys.stderr
            )
            bar.__enter__()
        bar.update(done - bar.pos)
        if done >= total:
            bar.__exit__(None, None, None)

    return report


def _bench_model(model: str | None) -> Path:
    from aegaeon.bench.models import default_bench_model
    from aegaeon.models.demo import aegaeon_home

    return Path(model) if model else default_bench_model(aegaeon_home())


def tp_option(help_text: str):
    """--tp N, the tensor-parallel degree, as the study and benchmark commands take it (default 1)."""
    return click.option(
        "--tp", default=1, show_default=True, type=click.IntRange(min=1), help=help_text
    )


def mechanism_options(command):
    """--residency, --layerwise, --slo-aware-rounds and --kv-mib, as the live benchmarks take them
    (aegaeon.bench.e2e.E2ERun)."""
    command = click.option(
        "--slo-aware-rounds",
        is_flag=True,
        help="Decode turns are shortened for requests whose first decode deadline is at risk (the node's "
        "--slo-aware-rounds); tagged `sloround`.",
    )(command)
    command = click.option(
        "--layerwise",
        is_flag=True,
        help="A forward after a switch starts before the copy has landed, waiting for each layer's weights "
        "(the node's --layerwise); tagged `layerwise`.",
    )(command)
    command = click.option(
        "--kv-mib",
        default=32,
        show_default=True,
        type=click.IntRange(min=1),
        help="Each worker's arena beside the largest model's weights, in MiB (the node's --kv-mib): with "
        "--residency it decides how many models stay resident. Tagged `kv<N>` when not the default.",
    )(command)
    return click.option(
        "--residency",
        is_flag=True,
        help="Workers keep the models they ran in the arena the KV leaves free (the node's --residency); "
        "tagged `resident`.",
    )(command)


def slo_options(command):
    """--ttft-slo and --tpot-slo, as the study and benchmark commands take them (None: the environment's
    or the default, aegaeon.sched.slo.SLO.from_env)."""
    command = click.option(
        "--tpot-slo", type=float, default=None, help="Seconds [env AEGAEON_TPOT_SLO, default 0.1]."
    )(command)
    return click.option(
        "--ttft-slo", type=float, default=None, help="Seconds [env AEGAEON_TTFT_SLO, default 10]."
    )(command)
