"""The `aegaeon bench` group, and its benches of one host-side component: allocator, IPC, scheduling,
HTTP, detokenising. The engine's benches on a checkpoint are in cli.bench_engine, a whole node's in
cli.bench_e2e, cli.bench_sim_vs_live and cli.bench_disruption."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import click

from aegaeon.cli.root import main


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


@bench.command("artifact-gap")
@click.option(
    "--json-dir", default="plots/json", show_default=True, type=click.Path(file_okay=False)
)
@click.option(
    "--reference",
    default="benchmarks/reference/artifact_sim.jsonl",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The artifact simulator's own figures (benchmarks/reference/README.md).",
)
@click.option("--variant", default="", help="Compare results of this variant tag (e.g. projlat).")
def bench_artifact_gap(json_dir: str, reference: str, variant: str) -> None:
    """The artifact-faithful baselines' SLO attainment (the artifact's scorer) against the artifact's
    simulator, point by point."""
    from aegaeon.bench.artifact_gap import artifact_gaps, render_gaps

    click.echo(render_gaps(artifact_gaps(Path(json_dir), Path(reference), variant)))


@bench.command("headline")
@click.option(
    "--json-dir", default="plots/json", show_default=True, type=click.Path(file_okay=False)
)
@click.option(
    "--panel", "panels", multiple=True, help="Figure specs (default: every one with results)."
)
def bench_headline(json_dir: str, panels: tuple[str, ...]) -> None:
    """Per figure panel: each system's largest N (or rate) at >= 90 % SLO attainment and Aegaeon's ratio
    over each baseline, by this project's scorer and by the paper's."""
    from aegaeon.bench.headline import headline, render_headline

    click.echo(render_headline(headline(Path(json_dir), list(panels) or None)))
