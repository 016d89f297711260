"""`aegaeon profile`: measure a checkpoint's cost-model profile on the local device, or `fit`
profiles from measured tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from aegaeon.cli.root import main, tp_option


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
@tp_option(
    "Tensor-parallel degree: measure an instance of N ranks (on a GPU, N GPUs from --device); the "
    "profile, one rank's, goes to <device>/tp<N>/."
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
    tp: int,
    input_lens: str,
    batches: str,
    out_dir: str | None,
) -> None:
    """Cost-model profiles (profiles/<device>/<model>.json, profiles/<device>/tp<N>/<model>.json at --tp N):
    measure one with --model, or `fit` measured tables."""
    if ctx.invoked_subcommand is not None:
        return
    if model_dir is None:
        click.echo(ctx.get_help())
        return
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
        tp=tp,
    )
    grid = len(req.input_lens) * len(req.batches)
    with click.progressbar(length=grid, label="profiling", file=sys.stderr) as bar:
        result = measure_profile(req, progress=lambda done, _total: bar.update(done - bar.pos))
    path = write_profile(result, Path(out_dir) if out_dir else profiles_dir())
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
    from aegaeon.profile_fit import fit_directory

    written = fit_directory(Path(raw_dir), device, Path(out_dir))
    if not written:
        raise click.ClickException(f"no known model folders under {raw_dir}")
    for path in written:
        err = json.loads(path.read_text())["fit_error"]
        click.echo(
            f"{path}: prefill error mean {100 * err['prefill_mean_rel']:.1f}% max "
            f"{100 * err['prefill_max_rel']:.1f}%, decode mean {100 * err['decode_mean_rel']:.1f}% "
            f"max {100 * err['decode_max_rel']:.1f}%"
        )
