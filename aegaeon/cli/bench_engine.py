"""`aegaeon bench` of the engine on one checkpoint: model switch, KV swap, weight loading, decode and
attention layout."""

from __future__ import annotations

import click

from aegaeon.cli.bench_parts import bench
from aegaeon.cli.root import _bench_model


@bench.command("switch")
@click.option(
    "--model",
    default=None,
    help="Checkpoint dir [default: a 20M-parameter model made on first use].",
)
@click.option("--device", default="cpu", show_default=True)
@click.option("--switches", default=20, show_default=True)
@click.option(
    "--link-gbps",
    type=float,
    default=None,
    help="CPU only: pace the weight copies to an emulated link of this many GB/s.",
)
def bench_switch_cmd(
    model: str | None, device: str, switches: int, link_gbps: float | None
) -> None:
    """Model switch (scale-up) time vs a plain copy of the same bytes (and, on a GPU, vs pinned H2D
    bandwidth), and how many decode steps of the same engine one switch costs."""
    from aegaeon.bench.switch import bench_switch

    r = bench_switch(_bench_model(model), device, switches, link_gbps)
    click.echo(f"device:                 {r.device}")
    click.echo(
        f"link:                   {f'emulated at {link_gbps:g} GB/s' if link_gbps else 'native'}"
    )
    click.echo(f"bytes per switch:       {r.bytes_per_switch:,}")
    click.echo(
        f"median switch:          {r.median_switch_s * 1e3:.3f} ms over {r.switches} switches"
    )
    click.echo(f"median plain copy:      {r.median_plain_copy_s * 1e3:.3f} ms")
    click.echo(f"switch / plain copy:    {r.ratio_to_plain_copy:.2f}x")
    if r.pinned_h2d_gb_s:
        click.echo(f"pinned H2D bandwidth:   {r.pinned_h2d_gb_s:.2f} GB/s")
        click.echo(f"switch / (bytes / bw):  {r.ratio_to_pcie_bound:.2f}x")
    click.echo(f"achieved rate:          {r.achieved_gb_s:.2f} GB/s")
    click.echo(f"decode step (batch 8):  {r.decode_step_s * 1e3:.3f} ms")
    click.echo(f"switch / decode step:   {r.switch_per_step:.2f}")


@bench.command("swap")
@click.option(
    "--model",
    default=None,
    help="Checkpoint dir [default: a 20M-parameter model made on first use].",
)
@click.option("--device", default="cpu", show_default=True)
@click.option("--blocks", default=512, show_default=True, help="KV blocks per swap.")
@click.option(
    "--threads",
    default=None,
    type=int,
    help="torch compute threads (on CPU, leave a core to the swap thread) [default: torch's].",
)
@click.option(
    "--link-gbps",
    type=float,
    default=None,
    help="CPU only: pace the swaps to an emulated link of this many GB/s.",
)
def bench_swap_cmd(
    model: str | None, device: str, blocks: int, threads: int | None, link_gbps: float | None
) -> None:
    """KV swap out/in throughput vs a plain copy of the same bytes, and decode slowdown during swaps."""
    import torch

    from aegaeon.bench.swap import bench_swap

    if threads is not None:
        if threads < 1:
            raise click.BadParameter("must be at least 1", param_hint="--threads")
        torch.set_num_threads(threads)

    r = bench_swap(_bench_model(model), device, blocks, link_gbps=link_gbps)
    gb = r.nbytes / 1e9
    click.echo(f"device:                 {r.device}")
    click.echo(
        f"link:                   {f'emulated at {link_gbps:g} GB/s' if link_gbps else 'native'}"
    )
    click.echo(f"swap size:              {r.blocks} blocks x {r.block_bytes:,} B = {r.nbytes:,} B")
    click.echo(
        f"swap out (to host):     {r.swap_out_s * 1e3:.2f} ms ({gb / r.swap_out_s:.2f} GB/s)"
    )
    click.echo(f"swap in (from host):    {r.swap_in_s * 1e3:.2f} ms ({gb / r.swap_in_s:.2f} GB/s)")
    click.echo(
        f"plain copy, same bytes: {r.plain_copy_s * 1e3:.2f} ms ({gb / r.plain_copy_s:.2f} GB/s)"
    )
    click.echo(f"slower swap / copy:     {r.ratio_to_plain_copy:.2f}x")
    click.echo(
        f"decode step, batch 8:   {r.decode_step_s * 1e3:.2f} ms alone, "
        f"{r.decode_step_with_swap_s * 1e3:.2f} ms during swaps ({r.decode_slowdown:+.1%})"
    )


@bench.command("weights")
@click.option(
    "--model",
    default=None,
    help="Checkpoint dir [default: a 20M-parameter model made on first use].",
)
def bench_weights_cmd(model: str | None) -> None:
    """Host weight-cache load throughput vs a raw sequential read of the same safetensors files."""
    from aegaeon.bench.switch import bench_weight_load

    r = bench_weight_load(_bench_model(model))
    click.echo(f"checkpoint bytes:       {r.file_bytes:,}")
    click.echo(f"weight cache load:      {r.cache_gb_s:.2f} GB/s ({r.cache_load_s * 1e3:.1f} ms)")
    click.echo(
        f"  + faulting in pages:  {r.populate_s * 1e3:.1f} ms (first touch of the shm segment)"
    )
    click.echo(f"raw sequential read:    {r.raw_gb_s:.2f} GB/s ({r.raw_read_s * 1e3:.1f} ms)")
    click.echo(f"ratio cache / raw:      {r.ratio:.2f}x")


@bench.command("decode")
@click.option(
    "--model",
    default=None,
    help="Checkpoint dir [default: a 20M-parameter model made on first use].",
)
@click.option("--batch", default=8, show_default=True)
@click.option("--steps", default=64, show_default=True)
@click.option("--device", default="cpu", show_default=True)
def bench_decode_cmd(model: str | None, batch: int, steps: int, device: str) -> None:
    """Decode tokens/s of one batch in the engine vs Hugging Face transformers on the same model."""
    from aegaeon.bench.decode import bench_decode

    r = bench_decode(_bench_model(model), batch, steps, device)
    click.echo(f"batch {r.batch}, {r.steps} decode steps")
    click.echo(f"aegaeon engine:         {r.tokens_per_s:,.0f} tokens/s")
    if r.reference_tokens_per_s is None:
        click.echo("transformers:           not installed, reference skipped")
    else:
        click.echo(f"transformers:           {r.reference_tokens_per_s:,.0f} tokens/s")
        click.echo(f"ratio aegaeon / hf:     {r.ratio:.2f}x")


@bench.command("attention")
@click.option(
    "--model",
    default=None,
    help="Checkpoint dir [default: a 20M-parameter model made on first use].",
)
@click.option("--batch", default=8, show_default=True, type=click.IntRange(min=2))
@click.option(
    "--total-context",
    default=2048,
    show_default=True,
    type=click.IntRange(min=16),
    help="Context tokens summed over the batch.",
)
@click.option("--steps", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="cpu", show_default=True)
def bench_attention_cmd(
    model: str | None, batch: int, total_context: int, steps: int, device: str
) -> None:
    """Decode step time with the KV padded to the longest context vs laid back to back (the engine's layout),
    for even contexts and for skewed ones with the same sum."""
    from aegaeon.bench.decode import bench_attention

    if total_context < 8 * batch:
        raise click.BadParameter(
            f"needs at least 8 tokens per sequence ({8 * batch})", param_hint="--total-context"
        )
    points = bench_attention(_bench_model(model), batch, total_context, steps, device)
    click.echo(
        f"batch {batch}, {total_context} context tokens in all, median of {steps} decode steps"
    )
    click.echo("layout  contexts                      step (ms)")
    for p in points:
        shape = (
            "even " + str(p.contexts[0])
            if len(set(p.contexts)) == 1
            else f"skewed {p.contexts[0]} x{len(p.contexts) - 1} + {p.contexts[-1]}"
        )
        click.echo(f"{p.layout:7s} {shape:29s} {p.step_s * 1e3:9.2f}")
