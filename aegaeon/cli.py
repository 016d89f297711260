"""The `aegaeon` command. Thin: options are parsed here, work is done in the library."""

from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from aegaeon.sched.decode import DEFAULT_MAX_QUOTA


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        filename=os.environ.get("AEGAEON_LOG_FILE"),
    )


@contextmanager
def _request_progress(label: str):
    """A progress bar whose total is learnt from the first report; yields the `progress(done, total)` callback."""
    with click.progressbar(length=1, label=label, file=sys.stderr) as bar:
        def advance(done: int, total: int) -> None:
            bar.length = total
            bar.update(done - bar.pos)
        yield advance


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


def _bench_model(model: str | None) -> Path:
    from aegaeon.bench.engine import default_bench_model
    from aegaeon.models.demo import aegaeon_home

    return Path(model) if model else default_bench_model(aegaeon_home())


@bench.command("switch")
@click.option("--model", default=None, help="Checkpoint dir [default: a 20M-parameter model made on first use].")
@click.option("--device", default="cpu", show_default=True)
@click.option("--switches", default=20, show_default=True)
def bench_switch_cmd(model: str | None, device: str, switches: int) -> None:
    """Model switch (scale-up) time vs a plain copy of the same bytes (and, on a GPU, vs pinned H2D bandwidth)."""
    from aegaeon.bench.engine import bench_switch

    r = bench_switch(_bench_model(model), device, switches)
    click.echo(f"device:                 {r.device}")
    click.echo(f"bytes per switch:       {r.bytes_per_switch:,}")
    click.echo(f"median switch:          {r.median_switch_s * 1e3:.3f} ms over {r.switches} switches")
    click.echo(f"median plain copy:      {r.median_plain_copy_s * 1e3:.3f} ms")
    click.echo(f"switch / plain copy:    {r.ratio_to_plain_copy:.2f}x")
    if r.pinned_h2d_gb_s:
        click.echo(f"pinned H2D bandwidth:   {r.pinned_h2d_gb_s:.2f} GB/s")
        click.echo(f"switch / (bytes / bw):  {r.ratio_to_pcie_bound:.2f}x")


@bench.command("ipc")
@click.option("--round-trips", default=20000, show_default=True)
def bench_ipc_cmd(round_trips: int) -> None:
    """Round trip between two processes: the shm ring vs a multiprocessing.Pipe, same message."""
    from aegaeon.bench.ipc import bench_ipc

    if round_trips < 1:
        raise click.BadParameter("must be at least 1", param_hint="--round-trips")
    r = bench_ipc(round_trips)
    click.echo(f"round trips:            {r.round_trips} of a {r.message_bytes}-byte Tokens message")
    click.echo(f"shm ring:               median {r.ring_median_us:.1f} us, p99 {r.ring_p99_us:.1f} us")
    click.echo(f"multiprocessing.Pipe:   median {r.pipe_median_us:.1f} us, p99 {r.pipe_p99_us:.1f} us")
    click.echo(f"ratio ring / pipe:      {r.ratio:.2f}x")


@bench.command("e2e")
@click.option("--num-models", default=12, show_default=True, help="Models synth_model_00.. (a tiny market on CPU).")
@click.option("--arrival-rate", "rates", default="0.5", show_default=True,
              help="Requests/s per model; a list 0.5,1.0 runs each.")
@click.option("--inlen-scale", default=0.2, show_default=True, help="Input lengths x this (CPU default 0.2).")
@click.option("--outlen-scale", default=0.2, show_default=True, help="Output lengths x this (CPU default 0.2).")
@click.option("--nnodes", default=1, show_default=True,
              help="Nodes on this machine, joined over the TCP link on loopback; each gets --instances workers.")
@click.option("--ttft-slo", type=float, default=None, help="Seconds [env AEGAEON_TTFT_SLO, default 10].")
@click.option("--tpot-slo", type=float, default=None, help="Seconds [env AEGAEON_TPOT_SLO, default 0.1].")
@click.option("--duration", default=60.0, show_default=True, help="Seconds of arrivals replayed.")
@click.option("--instances", default=4, show_default=True, help="Virtual CPU instances (worker processes).")
@click.option("--prefill-instances", default=1, show_default=True)
@click.option("--policy", "policies", default="aegaeon", show_default=True,
              help="aegaeon (token-level) and/or sllm (request-level decode scaling), e.g. aegaeon,sllm.")
@click.option("--seed", default=0, show_default=True, help="Seed of a generated workload.")
@click.option("--workloads", "workloads_dir", default="workloads", show_default=True,
              type=click.Path(file_okay=False), help="Where synth-N-R-X-Y.csv is read (or generated).")
@click.option("--out", "out_dir", default="plots/json", show_default=True, type=click.Path(file_okay=False))
def bench_e2e_cmd(num_models: int, rates: str, inlen_scale: float, outlen_scale: float, nnodes: int,
                  ttft_slo: float | None, tpot_slo: float | None, duration: float, instances: int,
                  prefill_instances: int, policies: str, seed: int, workloads_dir: str, out_dir: str) -> None:
    """Launch a CPU node of tiny models, replay workloads/synth-N-R-X-Y.csv in real time, and report
    SLO attainment and goodput; writes live-*.json (the simulator's schema plus traces) for `aegaeon plot`."""
    import signal

    from aegaeon.bench.e2e import E2ERun, run_e2e
    from aegaeon.errors import AegaeonError
    from aegaeon.models.demo import aegaeon_home
    from aegaeon.sched.slo import SLO
    from aegaeon.sim.runner import write_result
    from aegaeon.sim.sweep import parse_list

    names = [p.strip() for p in policies.split(",") if p.strip()]
    if not names or any(p not in ("aegaeon", "sllm") for p in names):
        raise click.BadParameter(f"{policies!r}: use aegaeon and/or sllm", param_hint="--policy")
    # SIGTERM unwinds like Ctrl-C, so the node stops its workers and removes its shared memory.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        rate_values = parse_list(rates, float, "--arrival-rate")
        slo = SLO.from_env(ttft_slo, tpot_slo)
        rows = []
        for rate in rate_values:
            for policy in names:
                run = E2ERun(num_models, rate, duration, inlen_scale, outlen_scale, instances, prefill_instances,
                             policy, seed, slo, nnodes)
                with _request_progress(f"{policy} rate {rate:g}") as advance:
                    result = run_e2e(run, aegaeon_home() / "market", Path(workloads_dir), advance)
                path = write_result(Path(out_dir), result)
                rows.append((policy, rate, result))
                click.echo(f"wrote {path}", err=True)
        click.echo("policy    models  rate requests SLO att. met both goodput p99 TTFT p99 TPOT switches")
        for policy, rate, r in rows:
            click.echo(f"{policy:8s} {num_models:6d} {rate:5g} {r['num_requests']:8d} {r['slo_attainment']:7.1%} "
                       f"{r['met_both_share']:8.1%} {r['goodput']:7.2f} {r['ttft_p99'] or 0:8.3f} "
                       f"{r['tpot_p99'] or 0:8.3f} {len(r['trace']['switches']):8d}")
    except AegaeonError as exc:
        raise _fail(exc) from None


@bench.command("sim-vs-live")
@click.option("--num-models", default=8, show_default=True)
@click.option("--arrival-rate", "rates", default="1,2,3,4", show_default=True, help="Requests/s per model, a list.")
@click.option("--inlen-scale", default=0.2, show_default=True)
@click.option("--outlen-scale", default=0.2, show_default=True)
@click.option("--duration", default=40.0, show_default=True, help="Seconds of arrivals per run.")
@click.option("--instances", default=None, type=int, help="Worker processes [default: one per core, at least 2].")
@click.option("--prefill-instances", default=1, show_default=True)
@click.option("--ttft-slo", type=float, default=None, help="Seconds [env AEGAEON_TTFT_SLO, default 10].")
@click.option("--tpot-slo", type=float, default=None, help="Seconds [env AEGAEON_TPOT_SLO, default 0.1].")
@click.option("--seeds", default="0", show_default=True,
              help="Workload seeds, a list: each rate runs once per seed and the figures are means over them "
                   "(seeds other than 0 keep their workloads in seed<K>/ under --workloads; with several seeds "
                   "the results go to seed<K>/ under --out).")
@click.option("--workloads", "workloads_dir", default="workloads", show_default=True, type=click.Path(file_okay=False))
@click.option("--profiles", "profiles_dir", default="profiles", show_default=True, type=click.Path(file_okay=False),
              help="Where this machine's profiles are written (<dir>/cpu-<threads>t/).")
@click.option("--profile-input-lens", default="8,16,32,64,128,256,384", show_default=True)
@click.option("--profile-batches", default="1,2,4,8", show_default=True)
@click.option("--calibration-runs", default=0, show_default=True, type=click.IntRange(min=0),
              help="Extra live runs (the listed rates in turn, highest first, on workloads of other seeds) added "
                   "to the calibration; each compared run is always calibrated on all the other runs.")
@click.option("--out", "out_dir", default="plots/json", show_default=True, type=click.Path(file_okay=False))
def bench_sim_vs_live_cmd(num_models: int, rates: str, inlen_scale: float, outlen_scale: float, duration: float,
                          instances: int | None, prefill_instances: int, ttft_slo: float | None,
                          tpot_slo: float | None, seeds: str, workloads_dir: str, profiles_dir: str,
                          profile_input_lens: str, profile_batches: str, calibration_runs: int,
                          out_dir: str) -> None:
    """Profile this machine, then run each workload live and in the simulator fed with that profile;
    prints both SLO attainments and their gap in points (the design's target: within 5)."""
    import signal

    from aegaeon.bench.e2e import E2ERun
    from aegaeon.bench.sim_vs_live import calibration_runs as calibration_runs_of
    from aegaeon.bench.sim_vs_live import compare_rates, default_instances, fit_calibration, profile_market
    from aegaeon.errors import AegaeonError
    from aegaeon.models.demo import aegaeon_home
    from aegaeon.sched.slo import SLO
    from aegaeon.sim.runner import write_result
    from aegaeon.sim.sweep import parse_list

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        slo = SLO.from_env(ttft_slo, tpot_slo)
        models_root = aegaeon_home() / "market"
        listed = parse_list(rates, float, "--arrival-rate")
        seed_list = parse_list(seeds, int, "--seeds")
        if len(set(seed_list)) != len(seed_list):
            raise click.BadParameter(f"{seeds!r} repeats a seed", param_hint="--seeds")
        base = E2ERun(num_models, 1.0, duration, inlen_scale, outlen_scale, instances or default_instances(),
                      prefill_instances, "aegaeon", seed_list[0], slo)
        base.validate()
        market = profile_market(base, models_root, Path(profiles_dir), lambda text: click.echo(text, err=True),
                                tuple(parse_list(profile_input_lens, int, "--profile-input-lens")),
                                tuple(parse_list(profile_batches, int, "--profile-batches")))
        click.echo(f"profiles: {', '.join(market.paths)}", err=True)
        extra = calibration_runs_of(base, listed, models_root, Path(workloads_dir), calibration_runs,
                                    _request_progress)

        def written(seed: int, result) -> None:
            folder = Path(out_dir) if len(seed_list) == 1 else Path(out_dir) / f"seed{seed}"
            for record in (result.live, result.sim, result.bare, result.in_situ):
                click.echo(f"wrote {write_result(folder, record)}", err=True)

        rows = compare_rates(base, listed, seed_list, models_root, Path(workloads_dir), market, extra,
                             _request_progress, written)
        lives = [c.live for r in rows for c in r.comparisons] + extra
        click.echo(f"{num_models} models on {base.instances} CPU instances ({prefill_instances} prefill), profile "
                   f"{market.device}, seeds {seeds}; each run predicted with the profile calibrated on the other "
                   f"runs (over all of them: serving decode step = {fit_calibration(lives, market).describe()}); "
                   f"mean SLO attainment:")
        click.echo(" rate requests   live  live range    sim  sim-live  bare-sim  bare-live  steps/profile  in-situ"
                   "  in-situ-live")
        for r in rows:
            low, high = r.live_range
            click.echo(f"{r.rate:5g} {r.requests:8.0f} {r.mean('live'):6.1%} {low:5.1%}-{high:5.1%} "
                       f"{r.mean('sim'):6.1%} {r.gap_points('sim'):+9.1f} {r.mean('bare'):9.1%} "
                       f"{r.gap_points('bare'):+10.1f} {r.decode_scale:13.2f}x {r.mean('in_situ'):8.1%} "
                       f"{r.gap_points('in_situ'):+13.1f}")
        click.echo(f"largest gap (points): {max(abs(r.gap_points('sim')) for r in rows):.1f} predicted from the "
                   f"calibrated profile, {max(abs(r.gap_points('bare')) for r in rows):.1f} from the bare profile, "
                   f"{max(abs(r.gap_points('in_situ')) for r in rows):.1f} with each run's measured quanta")
    except AegaeonError as exc:
        raise _fail(exc) from None


@bench.command("sched")
def bench_sched_cmd() -> None:
    """Scheduling decisions per second: grouped-FCFS placements and weighted-round-robin rounds."""
    from aegaeon.bench.sched import bench_sched

    r = bench_sched()
    click.echo(f"prefill placements:     {r.prefill_decisions_per_s:,.0f} /s (grouped FCFS, {r.models} models, 4 instances)")
    click.echo(f"decode rounds:          {r.decode_rounds_per_s:,.0f} /s ({r.requests_per_round} requests regrouped "
               f"and given quotas per round)")


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
    click.echo(f"{r.requests} requests, {r.concurrency} concurrent, {r.max_tokens} tokens each (streaming)")
    click.echo("path         req/s  TTFT p50  TTFT p99  TPOT p50  TPOT p99   (seconds)")
    for name, f in (("http", r.http), ("in-process", r.inprocess)):
        click.echo(f"{name:10s} {f.requests_per_s:7.2f} {f.ttft_p50:9.4f} {f.ttft_p99:9.4f} {f.tpot_p50:9.4f} "
                   f"{f.tpot_p99:9.4f}")
    click.echo(f"in-process / http throughput: {r.overhead:.2f}x")


@bench.command("swap")
@click.option("--model", default=None, help="Checkpoint dir [default: a 20M-parameter model made on first use].")
@click.option("--device", default="cpu", show_default=True)
@click.option("--blocks", default=512, show_default=True, help="KV blocks per swap.")
@click.option("--threads", default=None, type=int,
              help="torch compute threads (on CPU, leave a core to the swap thread) [default: torch's].")
def bench_swap_cmd(model: str | None, device: str, blocks: int, threads: int | None) -> None:
    """KV swap out/in throughput vs a plain copy of the same bytes, and decode slowdown during swaps."""
    import torch

    from aegaeon.bench.engine import bench_swap

    if threads is not None:
        if threads < 1:
            raise click.BadParameter("must be at least 1", param_hint="--threads")
        torch.set_num_threads(threads)

    r = bench_swap(_bench_model(model), device, blocks)
    gb = r.nbytes / 1e9
    click.echo(f"device:                 {r.device}")
    click.echo(f"swap size:              {r.blocks} blocks x {r.block_bytes:,} B = {r.nbytes:,} B")
    click.echo(f"swap out (to host):     {r.swap_out_s * 1e3:.2f} ms ({gb / r.swap_out_s:.2f} GB/s)")
    click.echo(f"swap in (from host):    {r.swap_in_s * 1e3:.2f} ms ({gb / r.swap_in_s:.2f} GB/s)")
    click.echo(f"plain copy, same bytes: {r.plain_copy_s * 1e3:.2f} ms ({gb / r.plain_copy_s:.2f} GB/s)")
    click.echo(f"slower swap / copy:     {r.ratio_to_plain_copy:.2f}x")
    click.echo(f"decode step, batch 8:   {r.decode_step_s * 1e3:.2f} ms alone, "
               f"{r.decode_step_with_swap_s * 1e3:.2f} ms during swaps ({r.decode_slowdown:+.1%})")


@bench.command("weights")
@click.option("--model", default=None, help="Checkpoint dir [default: a 20M-parameter model made on first use].")
def bench_weights_cmd(model: str | None) -> None:
    """Host weight-cache load throughput vs a raw sequential read of the same safetensors files."""
    from aegaeon.bench.engine import bench_weight_load

    r = bench_weight_load(_bench_model(model))
    click.echo(f"checkpoint bytes:       {r.file_bytes:,}")
    click.echo(f"weight cache load:      {r.cache_gb_s:.2f} GB/s ({r.cache_load_s * 1e3:.1f} ms)")
    click.echo(f"  + faulting in pages:  {r.populate_s * 1e3:.1f} ms (first touch of the shm segment)")
    click.echo(f"raw sequential read:    {r.raw_gb_s:.2f} GB/s ({r.raw_read_s * 1e3:.1f} ms)")
    click.echo(f"ratio cache / raw:      {r.ratio:.2f}x")


@bench.command("decode")
@click.option("--model", default=None, help="Checkpoint dir [default: a 20M-parameter model made on first use].")
@click.option("--batch", default=8, show_default=True)
@click.option("--steps", default=64, show_default=True)
@click.option("--device", default="cpu", show_default=True)
def bench_decode_cmd(model: str | None, batch: int, steps: int, device: str) -> None:
    """Decode tokens/s of one batch in the engine vs Hugging Face transformers on the same model."""
    from aegaeon.bench.engine import bench_decode

    r = bench_decode(_bench_model(model), batch, steps, device)
    click.echo(f"batch {r.batch}, {r.steps} decode steps")
    click.echo(f"aegaeon engine:         {r.tokens_per_s:,.0f} tokens/s")
    if r.reference_tokens_per_s is None:
        click.echo("transformers:           not installed, reference skipped")
    else:
        click.echo(f"transformers:           {r.reference_tokens_per_s:,.0f} tokens/s")
        click.echo(f"ratio aegaeon / hf:     {r.ratio:.2f}x")


@bench.command("attention")
@click.option("--model", default=None, help="Checkpoint dir [default: a 20M-parameter model made on first use].")
@click.option("--batch", default=8, show_default=True, type=click.IntRange(min=2))
@click.option("--total-context", default=2048, show_default=True, type=click.IntRange(min=16),
              help="Context tokens summed over the batch.")
@click.option("--steps", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="cpu", show_default=True)
def bench_attention_cmd(model: str | None, batch: int, total_context: int, steps: int, device: str) -> None:
    """Decode step time with the KV padded to the longest context vs laid back to back (the engine's layout),
    for even contexts and for skewed ones with the same sum."""
    from aegaeon.bench.engine import bench_attention
    from aegaeon.errors import AegaeonError

    if total_context < 8 * batch:
        raise click.BadParameter(f"needs at least 8 tokens per sequence ({8 * batch})", param_hint="--total-context")
    try:
        points = bench_attention(_bench_model(model), batch, total_context, steps, device)
    except AegaeonError as exc:
        raise _fail(exc) from None
    click.echo(f"batch {batch}, {total_context} context tokens in all, median of {steps} decode steps")
    click.echo("layout  contexts                      step (ms)")
    for p in points:
        shape = "even " + str(p.contexts[0]) if len(set(p.contexts)) == 1 else \
            f"skewed {p.contexts[0]} x{len(p.contexts) - 1} + {p.contexts[-1]}"
        click.echo(f"{p.layout:7s} {shape:29s} {p.step_s * 1e3:9.2f}")


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
            raise click.BadParameter(f"model {item!r} has no name: use NAME=DIR or a directory path", param_hint="--models")
        if name in models:
            raise click.BadParameter(f"model name {name!r} appears twice: use NAME=DIR to tell them apart",
                                     param_hint="--models")
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
            bar = bars[model] = click.progressbar(length=total, label=f"{label} {model}", file=sys.stderr)
            bar.__enter__()
        bar.update(done - bar.pos)
        if done >= total:
            bar.__exit__(None, None, None)

    return report


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--models", "models_spec", default=None,
              help="Comma-separated checkpoint dirs (or NAME=DIR) [default: the embedded demo pool].")
@click.option("--instances", default=3, show_default=True, help="Worker processes (virtual CPU instances).")
@click.option("--prefill-instances", default=1, show_default=True)
@click.option("--cluster-id", default="serve", show_default=True)
@click.option("--api-key", default=None, help="Require `Authorization: Bearer KEY` on /v1/ endpoints.")
def serve(host: str, port: int, models_spec: str | None, instances: int, prefill_instances: int, cluster_id: str,
          api_key: str | None) -> None:
    """Serve an OpenAI-compatible API from a node of worker processes (CPU: the demo pool by default)."""
    from aegaeon.errors import AegaeonError
    from aegaeon.serve.node import NodeConfig
    from aegaeon.serve.server import serve_node

    config = NodeConfig(_parse_models(models_spec), instances, prefill_instances, cluster_id=cluster_id)
    try:
        serve_node(config, host, port, api_key, announce=lambda line: click.echo(line, err=True))
    except AegaeonError as exc:
        raise _fail(exc) from None


@main.command("make-model")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--arch", type=click.Choice(["llama", "qwen2"]), default="llama", show_default=True)
@click.option("--like", type=click.Choice(["qwen2.5-7b", "yi-1.5-9b", "llama-2-13b"]), default=None,
              help="Use the published configuration of this model (real size, random weights).")
@click.option("--layers", default=2, show_default=True)
@click.option("--hidden", default=64, show_default=True)
@click.option("--heads", default=4, show_default=True)
@click.option("--kv-heads", default=2, show_default=True)
@click.option("--intermediate", default=128, show_default=True)
@click.option("--vocab", default=512, show_default=True)
@click.option("--max-position", default=2048, show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default=None,
              help="Weight dtype [default: float32, or the preset's].")
@click.option("--seed", default=0, show_default=True)
@click.option("--shard-mib", default=2048, show_default=True, help="Largest safetensors shard.")
def make_model_cmd(out_dir: str, arch: str, like: str | None, layers: int, hidden: int, heads: int, kv_heads: int,
                   intermediate: int, vocab: int, max_position: int, dtype: str | None, seed: int,
                   shard_mib: int) -> None:
    """Write a Hugging Face checkpoint with random weights and a working tokenizer to OUT_DIR."""
    from dataclasses import replace

    from aegaeon.errors import AegaeonError
    from aegaeon.models.maker import PRESETS, config_for, make_model

    try:
        if like:
            config = PRESETS[like] if dtype is None else replace(PRESETS[like], dtype=dtype)
        else:
            config = config_for(arch, layers, hidden, heads, kv_heads, intermediate, vocab, max_position,
                                dtype or "float32")
        total = config.num_parameters() * (4 if config.dtype == "float32" else 2)
        with click.progressbar(length=total, label="writing weights", file=sys.stderr) as bar:
            path = make_model(out_dir, config, seed=seed, shard_bytes=shard_mib * 2**20,
                              progress=lambda done, _total: bar.update(done - bar.pos))
    except AegaeonError as exc:
        raise _fail(exc) from None
    click.echo(f"wrote {config.arch} model, {config.num_parameters():,} parameters, to {path}")


@main.command()
@click.option("--models", "models_spec", default=None,
              help="Comma-separated checkpoint dirs (or NAME=DIR) [default: the embedded demo pool].")
@click.option("--prompt", "prompts", multiple=True, help="A prompt; repeat for more. Each goes to every model.")
@click.option("--max-tokens", default=16, show_default=True)
@click.option("--temperature", default=0.0, show_default=True, help="0 means greedy.")
@click.option("--top-p", default=1.0, show_default=True)
@click.option("--seed", default=None, type=int, help="Seed for sampling (with --temperature > 0).")
@click.option("--steps-per-turn", default=4, show_default=True,
              help="Decode steps a model runs before the engine switches to the next model.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default=None,
              help="Convert weights to this dtype [default: keep the checkpoint's].")
@click.option("--kv-mib", default=64, show_default=True, help="Arena memory for the KV cache beyond the weights.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--prefetch-order", default=None,
              help="Comma-separated model names to load into the host cache first [default: as given].")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per (model, prompt) and line.")
def generate(models_spec: str | None, prompts: tuple[str, ...], max_tokens: int, temperature: float, top_p: float,
             seed: int | None, steps_per_turn: int, dtype: str | None, kv_mib: int, device: str,
             prefetch_order: str | None, as_json: bool) -> None:
    """Serve prompts for several models from one engine that switches models between decode steps."""
    from aegaeon.engine.engine import Engine, EngineConfig
    from aegaeon.errors import AegaeonError
    from aegaeon.models.demo import DEMO_PROMPTS
    from aegaeon.models.sampler import SamplingParams

    models = _parse_models(models_spec)
    sampling = SamplingParams(max_tokens, temperature, top_p, seed)
    config = EngineConfig(device=device, kv_bytes=kv_mib * 2**20, steps_per_turn=steps_per_turn, dtype=dtype)
    try:
        sampling.validate()
        order = [m.strip() for m in (prefetch_order or "").split(",") if m.strip()]
        unknown = [m for m in order if m not in models]
        if unknown:
            raise click.BadParameter(f"{unknown} are not among --models {sorted(models)}", param_hint="--prefetch-order")
        with Engine(models, config, prefetch_order=order, progress=_progress_bar("loading")) as engine:
            for name, reason in engine.unavailable.items():
                click.echo(f"warning: {reason}", err=True)
            results = engine.generate([(m, p) for p in (prompts or DEMO_PROMPTS) for m in models], sampling)
            switches = len(engine.runner.switches)
    except AegaeonError as exc:
        raise _fail(exc) from None
    for r in results:
        if as_json:
            payload = {"model": r.model, "prompt": r.prompt, "token_ids": r.token_ids, "text": r.text}
            if r.error:
                payload["error"] = r.error
            click.echo(json.dumps(payload))
        elif r.error:
            click.echo(f"[{r.model}] error: {r.error}")
        else:
            click.echo(f"[{r.model}] {r.prompt!r} -> {r.text!r} ({len(r.token_ids)} tokens, {r.finish_reason})")
    if not as_json:
        click.echo(f"{len(results)} completions from {len(models)} models, {switches} model switches", err=True)
    if all(r.error for r in results):
        raise SystemExit(1)


@main.group()
def workload() -> None:
    """Synthetic workloads in the paper's CSV format."""


@workload.command("gen")
@click.option("--num-models", required=True, help="Model counts: 16,20 or 16:80:4.")
@click.option("--arrival-rate", required=True, help="Requests/s per model: 0.1,0.5 or a range.")
@click.option("--duration", default=300.0, show_default=True, help="Seconds of arrivals.")
@click.option("--inlen-scale", default=1.0, show_default=True)
@click.option("--outlen-scale", default=1.0, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--out", "out_dir", default="workloads", show_default=True, type=click.Path(file_okay=False))
def workload_gen(num_models: str, arrival_rate: str, duration: float, inlen_scale: float, outlen_scale: float,
                 seed: int, out_dir: str) -> None:
    """Write workloads/synth-N-R-X-Y.csv for every N and R given."""
    from aegaeon.errors import AegaeonError
    from aegaeon.sim.sweep import parse_list
    from aegaeon.workload import WorkloadSpec, generate, write_workload

    try:
        for n in parse_list(num_models, int, "--num-models"):
            for rate in parse_list(arrival_rate, float, "--arrival-rate"):
                spec = WorkloadSpec(n, rate, duration, inlen_scale, outlen_scale, seed)
                requests = generate(spec)
                path = write_workload(Path(out_dir) / spec.filename, requests)
                click.echo(f"{path}: {len(requests)} requests")
    except AegaeonError as exc:
        raise _fail(exc) from exc


@main.command()
@click.option("--num-models", required=True, help="Model counts: 16,20 or 16:80:4.")
@click.option("--arrival-rate", required=True, help="Requests/s per model: 0.1 or 0.1:1.0:0.1.")
@click.option("--inlen-scale", default=1.0, show_default=True)
@click.option("--outlen-scale", default=1.0, show_default=True)
@click.option("--policy", default="aegaeon,sllm,sllm+,muxserve", show_default=True)
@click.option("--num-gpus", default=16, show_default=True)
@click.option("--prefill-instances", type=int, default=None, help="Aegaeon prefill GPUs [default: a quarter].")
@click.option("--duration", default=300.0, show_default=True, help="Seconds of arrivals for generated workloads.")
@click.option("--seed", default=0, show_default=True, help="Seed for generated workloads.")
@click.option("--ttft-slo", type=float, default=None, help="Seconds [env AEGAEON_TTFT_SLO, default 10].")
@click.option("--tpot-slo", type=float, default=None, help="Seconds [env AEGAEON_TPOT_SLO, default 0.1].")
@click.option("--slo-scale", default=1.0, show_default=True, help="Multiply both SLOs (0.5, 0.3 in the paper).")
@click.option("--device", default="H100", show_default=True, help="Profiles under profiles/<device>/.")
@click.option("--profiles", "profiles_root", type=click.Path(file_okay=False), default=None)
@click.option("--aegaeon-switch-efficiency", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Share of PCIe bandwidth Aegaeon switches at [default: the profile's fast_switch_efficiency].")
@click.option("--max-quota", type=click.FloatRange(0, min_open=True), default=DEFAULT_MAX_QUOTA, show_default=True,
              help="Aegaeon's decode quota cap Q in seconds. A setting other than the defaults of this and "
                   "--aegaeon-switch-efficiency is tagged in the JSON's variant and file name.")
@click.option("--workloads", "workloads_dir", default="workloads", show_default=True, type=click.Path(file_okay=False))
@click.option("--out", "out_dir", default="plots/json", show_default=True, type=click.Path(file_okay=False))
def sim(num_models: str, arrival_rate: str, inlen_scale: float, outlen_scale: float, policy: str, num_gpus: int,
        prefill_instances: int | None, duration: float, seed: int, ttft_slo: float | None, tpot_slo: float | None,
        slo_scale: float, device: str, profiles_root: str | None, aegaeon_switch_efficiency: float | None,
        max_quota: float, workloads_dir: str, out_dir: str) -> None:
    """Simulate systems over a sweep; one result JSON per point under --out.

    The table's "busy P/D" (aegaeon) is the busy seconds (switching and
    computing) per prefill / decode instance per second of workload. Decode
    instances decode ahead of the TPOT schedule whenever they hold requests, so
    theirs nears 1 at moderate load already; the prefill share shows how close
    grouped FCFS is to its limit. "2nd-tok p90" is the 90th percentile of the
    gap between a request's first and second token: for Aegaeon, the KV
    handoff plus the wait for its model's first decode turn."""
    from aegaeon.errors import AegaeonError
    from aegaeon.profiles import cost_model_for_workload
    from aegaeon.sched.slo import SLO
    from aegaeon.sim.core import SimConfig
    from aegaeon.sim.runner import run_sweep
    from aegaeon.sim.sweep import ensure_workload, parse_list, parse_policies, sweep_points

    try:
        slo = SLO.from_env(ttft_slo, tpot_slo).scaled(slo_scale)
        if num_gpus < 2:
            raise click.BadParameter("--num-gpus must be at least 2 (Aegaeon needs a prefill and a decode GPU)")
        points = sweep_points(parse_policies(policy), parse_list(num_models, int, "--num-models"),
                              parse_list(arrival_rate, float, "--arrival-rate"), inlen_scale, outlen_scale)
        config = SimConfig(num_gpus=num_gpus, prefill_instances=prefill_instances, max_quota=max_quota)
        root = Path(profiles_root) if profiles_root else None
        rows = []
        with click.progressbar(length=len(points), label="simulating", file=sys.stderr) as bar:
            def progress(name: str, result: dict) -> None:
                rows.append((name, result))
                bar.update(1)

            run_sweep(points, lambda label: ensure_workload(label, Path(workloads_dir), duration, seed),
                      lambda reqs: cost_model_for_workload({r.model for r in reqs}, device, root),
                      slo, config, Path(out_dir), progress, aegaeon_switch_efficiency)
    except AegaeonError as exc:
        raise _fail(exc) from exc
    click.echo(f"{'policy':<9} {'models':>6} {'rate':>5} {'SLO att.':>8} {'met both':>8} {'goodput':>8} {'p99 TTFT':>8}"
               f" {'2nd-tok p90':>11} {'busy P/D':>9}")
    for name, r in rows:
        p99 = "-" if r["ttft_p99"] is None else f"{r['ttft_p99']:.2f}"
        gap = "-" if r["second_token_gap_p90"] is None else f"{r['second_token_gap_p90']:.2f}"
        load = r.get("instance_load")
        load_text = f"{load['prefill']:.2f}/{load['decode']:.2f}" if load else "-"
        click.echo(f"{name:<9} {r['num_models']:>6} {r['arrival_rate']:>5g} {100 * r['slo_attainment']:>7.1f}% "
                   f"{100 * r['met_both_share']:>7.1f}% {r['goodput']:>8.2f} {p99:>8} {gap:>11} {load_text:>9}")
    click.echo(f"wrote {len(rows)} results to {out_dir}/")


@main.group(invoke_without_command=True)
@click.option("--model", "model_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="Measure a profile of this checkpoint on the local device.")
@click.option("--name", default=None, help="Model name in the profile [default: the directory name].")
@click.option("--device", default="cpu", show_default=True, help="torch device to measure on (cpu, cuda, cuda:1).")
@click.option("--device-name", default=None, help="Folder under the output dir [default: cpu, or the GPU's name].")
@click.option("--input-lens", default="16,32,64,128,256", show_default=True)
@click.option("--batches", default="1,2,4,8", show_default=True)
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Output root [default: the profiles/ folder, or AEGAEON_PROFILES].")
@click.pass_context
def profile(ctx: click.Context, model_dir: str | None, name: str | None, device: str, device_name: str | None,
            input_lens: str, batches: str, out_dir: str | None) -> None:
    """Cost-model profiles (profiles/<device>/<model>.json): measure one with --model, or `fit` measured tables."""
    if ctx.invoked_subcommand is not None:
        return
    if model_dir is None:
        click.echo(ctx.get_help())
        return
    from aegaeon.errors import AegaeonError
    from aegaeon.profiler import ProfileRequest, measure_profile
    from aegaeon.profiles import profiles_dir, write_profile

    def ints(flag: str, text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise click.BadParameter(f"{text!r} is not a comma-separated list of integers", param_hint=flag) from None
        if not values or min(values) <= 0:
            raise click.BadParameter("give positive integers", param_hint=flag)
        return values

    if device_name is None:
        import torch

        device_name = "cpu" if device == "cpu" else torch.cuda.get_device_name(torch.device(device)).replace(" ", "_")
    req = ProfileRequest(Path(model_dir), name or Path(model_dir).name, device, device_name,
                         ints("--input-lens", input_lens), ints("--batches", batches))
    grid = len(req.input_lens) * len(req.batches)
    try:
        with click.progressbar(length=grid, label="profiling", file=sys.stderr) as bar:
            result = measure_profile(req, progress=lambda done, _total: bar.update(done - bar.pos))
        path = write_profile(result, Path(out_dir) if out_dir else profiles_dir())
    except AegaeonError as exc:
        raise _fail(exc) from None
    err = result["fit_error"]
    click.echo(f"wrote {path}")
    click.echo(f"fit error: prefill mean {err['prefill_mean_rel']:.1%} max {err['prefill_max_rel']:.1%}; "
               f"decode mean {err['decode_mean_rel']:.1%} max {err['decode_max_rel']:.1%}")


@profile.command("fit")
@click.argument("raw_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--device", default="H100", show_default=True)
@click.option("--out", "out_dir", default="profiles", show_default=True, type=click.Path(file_okay=False))
def profile_fit(raw_dir: str, device: str, out_dir: str) -> None:
    """Fit profiles from measured tables RAW_DIR/<model>/i<I>b<B>.json."""
    from aegaeon.errors import AegaeonError
    from aegaeon.profiles import fit_directory

    try:
        written = fit_directory(Path(raw_dir), device, Path(out_dir))
    except AegaeonError as exc:
        raise _fail(exc) from exc
    if not written:
        raise click.ClickException(f"no known model folders under {raw_dir}")
    for path in written:
        err = json.loads(path.read_text())["fit_error"]
        click.echo(f"{path}: prefill error mean {100 * err['prefill_mean_rel']:.1f}% max "
                   f"{100 * err['prefill_max_rel']:.1f}%, decode mean {100 * err['decode_mean_rel']:.1f}% "
                   f"max {100 * err['decode_max_rel']:.1f}%")


@main.group()
def plot() -> None:
    """Figures from result JSON."""


@plot.command("e2e")
@click.option("--spec", "specs", multiple=True, required=True,
              help="Figure: 0.1, 0.5, 40, 0.1-ix2, 0.1-ox2, 0.5-ix2, 0.5-ox2, slo0.5, slo0.3 (repeatable).")
@click.option("--json-dir", default="plots/json", show_default=True, type=click.Path(file_okay=False))
@click.option("--out", "out_dir", default="plots/out", show_default=True, type=click.Path(file_okay=False))
def plot_e2e_cmd(specs: tuple[str, ...], json_dir: str, out_dir: str) -> None:
    """SLO attainment per system (paper figures 11-13), PDF and PNG."""
    from aegaeon.errors import AegaeonError
    from aegaeon.plotting import plot_e2e

    try:
        for spec in specs:
            for path in plot_e2e(spec, Path(json_dir), Path(out_dir)):
                click.echo(str(path))
    except AegaeonError as exc:
        raise _fail(exc) from exc


def _trace_plot_command(figure: str, summary: str) -> None:
    @plot.command(figure, short_help=summary,
                  help=f"{summary}, from `aegaeon bench e2e` results (PDF and PNG, plus the numbers behind it).")
    @click.option("--json", "sources", multiple=True, type=click.Path(exists=True),
                  help="Result files or folders (repeatable) [default: plots/json].")
    @click.option("--policy", default=None, help="Only runs of this policy (aegaeon or sllm).")
    @click.option("--out", "out_dir", default="plots/out", show_default=True, type=click.Path(file_okay=False))
    def command(sources: tuple[str, ...], policy: str | None, out_dir: str) -> None:
        from aegaeon.errors import AegaeonError
        from aegaeon.trace_plots import PLOTTERS, load_traced_runs

        try:
            runs = load_traced_runs([Path(s) for s in sources or ("plots/json",)], policy)
            paths, text = PLOTTERS[figure](runs, Path(out_dir))
        except AegaeonError as exc:
            raise _fail(exc) from None
        click.echo(text)
        for path in paths:
            click.echo(str(path))


for _figure, _summary in (("breakdown", "Fig. 14: request latency and model switch breakdowns"),
                          ("autoscale-cdf", "Fig. 15: CDF of scale-up (model switch) latency"),
                          ("kvcache-cdf", "Fig. 16: CDF of KV-cache swap latency"),
                          ("frag", "KV-region fragmentation of every worker's arena over time")):
    _trace_plot_command(_figure, _summary)


if __name__ == "__main__":
    main()
