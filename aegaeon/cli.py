"""The `aegaeon` command. Thin: options are parsed here, work is done in the library."""

from __future__ import annotations

import json
import logging
import os

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


if __name__ == "__main__":
    main()
