"""`aegaeon bench` of one component: allocator, switch, IPC, scheduling, HTTP, swap, weights, decode,
attention."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import click

from aegaeon.cli.root import _bench_model, _fail, main


@main.group()
def bench() -> None:
    """Benchmarks; paste their output into benchmarks/RESULTS.md."""


@bench.command("alloc")
@click.option(
    "--pairs", default=1_000_000, show_default=True, help="Free+allocate pairs per variant."
)
@click.option(
    "--live", default=1024, show_default=True, help="Blocks kept allocated during the run."
)
@click.option("--block-bytes", default=16384, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def bench_alloc(pairs: int, live: int, block_bytes: int, as_json: bool) -> None:
    """Slab allocator alloc+free pairs per second: C++, from Python, vs a Python free list."""
    from aegaeon.bench.alloc import run_alloc_bench

    if pairs <= 0 or live <= 0 or block_bytes <= 0:
        raise click.BadParameter("--pairs, --live and --block-bytes must be positive")
    result = run_alloc_bench(pairs=pairs, live=live, block_bytes=block_bytes)
    if as_json:
        payload = dict(
            result.__dict__,
            binding_vs_freelist=result.binding_vs_freelist,
            cpp_vs_freelist=result.cpp_vs_freelist,
        )
        click.echo(json.dumps(payload))
        return
    click.echo(f"pairs per variant:              {result.pairs}")
    click.echo(f"C++ loop:                       {result.cpp_pairs_per_s:,.0f} pairs/s")
    click.echo(f"Python -> C++ allocator:        {result.python_binding_pairs_per_s:,.0f} pairs/s")
    click.echo(f"plain Python free list:         {result.python_freelist_pairs_per_s:,.0f} pairs/s")
    click.echo(f"ratio C++ / free list:          {result.cpp_vs_freelist:.2f}x")
    click.echo(f"ratio Python->C++ / free list:  {result.binding_vs_freelist:.2f}x")


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
    from aegaeon.errors import AegaeonError

    try:
        r = bench_switch(_bench_model(model), device, switches, link_gbps)
    except AegaeonError as exc:
        raise _fail(exc) from None
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


@bench.command("ipc")
@click.option("--round-trips", default=20000, show_default=True)
def bench_ipc_cmd(round_trips: int) -> None:
    """Round trip between two processes: the shm ring vs a multiprocessing.Pipe, same message."""
    from aegaeon.bench.ipc import bench_ipc

    if round_trips < 1:
        raise click.BadParameter("must be at least 1", param_hint="--round-trips")
    r = bench_ipc(round_trips)
    click.echo(
        f"round trips:            {r.round_trips} of a {r.message_bytes}-byte Tokens message"
    )
    click.echo(
        f"shm ring:               median {r.ring_median_us:.1f} us, p99 {r.ring_p99_us:.1f} us"
    )
    click.echo(
        f"multiprocessing.Pipe:   median {r.pipe_median_us:.1f} us, p99 {r.pipe_p99_us:.1f} us"
    )
    click.echo(f"ratio ring / pipe:      {r.ratio:.2f}x")


@bench.command("sched")
def bench_sched_cmd() -> None:
    """Scheduling decisions per second: grouped-FCFS placements and weighted-round-robin rounds."""
    from aegaeon.bench.sched import bench_sched

    r = bench_sched()
    click.echo(
        f"prefill placements:     {r.prefill_decisions_per_s:,.0f} /s (grouped FCFS, {r.models} models, 4 instances)"
    )
    click.echo(
        f"decode rounds:          {r.decode_rounds_per_s:,.0f} /s ({r.requests_per_round} requests regrouped "
        f"and given quotas per round)"
    )
    click.echo(
        f"dispatcher placements:  {r.dispatcher_decisions_per_s:,.0f} /s (the same through PrefillDispatcher, "
        f"as the proxy and the simulator run it)"
    )
    click.echo(
        f"policy rounds:          {r.policy_rounds_per_s:,.0f} /s (WeightedRoundRobin: a round planned and "
        f"its turns handed out)"
    )


@bench.command("http")
@click.option("--requests", default=64, show_default=True)
@click.option("--concurrency", default=8, show_default=True)
@click.option("--max-tokens", default=32, show_default=True)
def bench_http_cmd(requests: int, concurrency: int, max_tokens: int) -> None:
    """Requests/s and TTFT/TPOT percentiles through the HTTP API vs the in-process client (demo pool)."""
    from aegaeon.bench.http import bench_http
    from aegaeon.models.demo import demo_models

    if min(requests, concurrency, max_tokens) < 1:
        raise click.BadParameter("--requests, --concurrency and --max-tokens must be at least 1")
    r = bench_http({k: str(v) for k, v in demo_models().items()}, requests, concurrency, max_tokens)
    click.echo(
        f"{r.requests} requests, {r.concurrency} concurrent, {r.max_tokens} tokens each (streaming)"
    )
    click.echo("path         req/s  TTFT p50  TTFT p99  TPOT p50  TPOT p99   (seconds)")
    for name, f in (("http", r.http), ("in-process", r.inprocess)):
        click.echo(
            f"{name:10s} {f.requests_per_s:7.2f} {f.ttft_p50:9.4f} {f.ttft_p99:9.4f} {f.tpot_p50:9.4f} "
            f"{f.tpot_p99:9.4f}"
        )
    click.echo(f"in-process / http throughput: {r.overhead:.2f}x")


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

    from aegaeon.errors import AegaeonError

    try:
        r = bench_swap(_bench_model(model), device, blocks, link_gbps=link_gbps)
    except AegaeonError as exc:
        raise _fail(exc) from None
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
    from aegaeon.errors import AegaeonError

    if total_context < 8 * batch:
        raise click.BadParameter(
            f"needs at least 8 tokens per sequence ({8 * batch})", param_hint="--total-context"
        )
    try:
        points = bench_attention(_bench_model(model), batch, total_context, steps, device)
    except AegaeonError as exc:
        raise _fail(exc) from None
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


@bench.command("detok")
@click.option(
    "--model",
    default=None,
    help="Checkpoint dir whose tokenizer.json to use [default: the demo models'].",
)
@click.option("--tokens", default=1800, show_default=True, type=click.IntRange(min=1))
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(min=1))
def bench_detok_cmd(model: str | None, tokens: int, repeats: int) -> None:
    """Detokenising one stream token by token: a full decode per chunk vs incremental (DecodeStream)."""
    from tokenizers import Tokenizer

    from aegaeon.bench.detok import bench_detok
    from aegaeon.models.demo import demo_models

    folder = Path(model) if model else next(iter(demo_models().values()))
    r = bench_detok(Tokenizer.from_file(str(folder / "tokenizer.json")), tokens, repeats)

    def spread(xs):
        return f"median {statistics.median(xs) * 1e3:.1f} ms (min {min(xs) * 1e3:.1f}, max {max(xs) * 1e3:.1f})"

    click.echo(f"tokenizer:              {folder / 'tokenizer.json'}")
    click.echo(f"stream of {r.tokens} tokens, one per chunk, {r.repeats} runs each")
    click.echo(f"full decode per chunk:  {spread(r.full_decode_s)}")
    click.echo(f"incremental:            {spread(r.incremental_s)}")
    click.echo(f"ratio full / incr.:     {r.speedup:.1f}x")
    click.echo(f"same final text:        {r.same_text}")
