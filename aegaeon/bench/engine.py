"""Engine benchmarks: model switch vs a plain copy, weight-cache load vs a raw
file read, and decode throughput vs Hugging Face transformers.

Each returns a dataclass of measured figures; the CLI prints them. On a GPU the
switch benchmark also measures pinned host->device bandwidth, the bound a
switch should approach.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from aegaeon.engine.engine import Engine, EngineConfig
from aegaeon.errors import ConfigError
from aegaeon.ipc.shm import ShmNamespace
from aegaeon.models.config import load_arch_config
from aegaeon.models.sampler import SamplingParams
from aegaeon.profiler import spec_of, sync, time_batch, timed
from aegaeon.weights.checkpoint import open_checkpoint
from aegaeon.weights.host_cache import HostWeightCache

BENCH_CONFIG = dict(arch="llama", layers=4, hidden=512, heads=8, kv_heads=4, intermediate=1408, vocab=8192)


def default_bench_model(root: Path) -> Path:
    """A ~20M-parameter model, big enough that copies dominate fixed costs on a CPU."""
    from aegaeon.models.maker import config_for, make_model

    path = root / "bench-llama-20m"
    if not (path / "config.json").is_file():
        make_model(path, config_for(**BENCH_CONFIG), seed=0)
    return path


@dataclass(frozen=True)
class SwitchBench:
    device: str
    bytes_per_switch: int
    switches: int
    median_switch_s: float
    median_plain_copy_s: float
    pinned_h2d_gb_s: float | None  # GPU only

    @property
    def ratio_to_plain_copy(self) -> float:
        return self.median_switch_s / self.median_plain_copy_s

    @property
    def ratio_to_pcie_bound(self) -> float | None:
        if not self.pinned_h2d_gb_s:
            return None
        return self.median_switch_s / (self.bytes_per_switch / (self.pinned_h2d_gb_s * 1e9))


def bench_switch(model: Path, device: str = "cpu", switches: int = 20) -> SwitchBench:
    """Alternate two copies of `model` in one engine; compare with copying the same bytes."""
    config = EngineConfig(device=device, kv_bytes=8 * 2**20)
    with Engine({"first": model, "second": model}, config) as engine:
        for name in ("first", "second"):
            engine.host_cache.wait(name)
        engine.runner.switch_to("first")
        times = []
        for i in range(switches):
            record = engine.runner.switch_to("second" if i % 2 == 0 else "first")
            sync(device)
            times.append(record.seconds)
        nbytes = engine.runner.entries["first"].weights.total_bytes
        src = engine.host_cache.region("first")
        dst = torch.empty(nbytes, dtype=torch.uint8, device=device)
        copies = []
        for _ in range(switches):
            start = time.perf_counter()
            dst.copy_(src)
            sync(device)
            copies.append(time.perf_counter() - start)
    return SwitchBench(device, nbytes, switches, statistics.median(times), statistics.median(copies),
                       pinned_h2d_bandwidth(nbytes) if device.startswith("cuda") else None)


def pinned_h2d_bandwidth(nbytes: int, repeats: int = 5) -> float:
    """GB/s of a pinned host->device copy of `nbytes` (the best of `repeats`)."""
    src = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return nbytes / best / 1e9


@dataclass(frozen=True)
class WeightLoadBench:
    file_bytes: int
    cache_load_s: float  # reading the checkpoint into already faulted-in shm pages
    populate_s: float  # faulting in those pages first (once per node start)
    raw_read_s: float

    @property
    def cache_gb_s(self) -> float:
        return self.file_bytes / self.cache_load_s / 1e9

    @property
    def raw_gb_s(self) -> float:
        return self.file_bytes / self.raw_read_s / 1e9

    @property
    def ratio(self) -> float:
        return self.cache_gb_s / self.raw_gb_s


def bench_weight_load(model: Path, repeats: int = 3) -> WeightLoadBench:
    """Load into the shm cache vs read the same files sequentially (page cache warm for both)."""
    ckpt = open_checkpoint(model)
    files = sorted({source.file for source in ckpt.tensors.values()})
    raw_times, load_times, populate_times = [], [], []
    for i in range(repeats + 1):
        start = time.perf_counter()
        for file in files:
            with open(file, "rb") as f:
                while f.read(16 * 2**20):
                    pass
        raw_times.append(time.perf_counter() - start)
        with ShmNamespace(f"benchload{i}") as ns:
            cache = HostWeightCache(ns, [ckpt])
            cache.load(ckpt.name)
            cache.wait(ckpt.name)
            load_times.append(cache.load_stats[ckpt.name].copy_s)
            populate_times.append(cache.load_stats[ckpt.name].populate_s)
    file_bytes = sum(f.stat().st_size for f in files)
    return WeightLoadBench(file_bytes, min(load_times[1:]), min(populate_times[1:]), min(raw_times[1:]))


@dataclass(frozen=True)
class DecodeBench:
    batch: int
    steps: int
    tokens_per_s: float
    reference_tokens_per_s: float | None  # transformers, when installed

    @property
    def ratio(self) -> float | None:
        return self.tokens_per_s / self.reference_tokens_per_s if self.reference_tokens_per_s else None


def bench_decode(model: Path, batch: int = 8, steps: int = 64, device: str = "cpu") -> DecodeBench:
    """Decode tokens/s of one batch (prompt prefill excluded) in our engine and in transformers."""
    prompt = "the model serves many requests from one pool"
    with Engine({"m": model}, EngineConfig(device=device, max_batch_size=batch, steps_per_turn=1)) as engine:
        seqs = [engine.submit("m", prompt, SamplingParams(max_tokens=steps + 1)) for _ in range(batch)]
        engine.run_turn()  # prefill and the first token
        sync(device)
        start = time.perf_counter()
        engine.run()
        sync(device)
        ours = batch * steps / (time.perf_counter() - start)
        prompt_ids = seqs[0].prompt_ids
    return DecodeBench(batch, steps, ours, _reference_decode(model, prompt_ids, batch, steps, device))


def _reference_decode(model: Path, prompt_ids: list[int], batch: int, steps: int, device: str) -> float | None:
    try:
        import transformers
    except ImportError:
        return None
    import inspect

    hf = transformers.AutoModelForCausalLM.from_pretrained(model).to(device).eval()
    # transformers 5 renamed `past_key_values` to `cache`; use whichever this version has.
    key = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
    ids = torch.tensor([prompt_ids] * batch, device=device)
    with torch.no_grad():
        out = hf(ids, use_cache=True)
        cache, token = getattr(out, key), out.logits[:, -1].argmax(-1, keepdim=True)
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            out = hf(token, use_cache=True, **{key: cache})
            cache, token = getattr(out, key), out.logits[:, -1].argmax(-1, keepdim=True)
        sync(device)
    return batch * steps / (time.perf_counter() - start)


@dataclass(frozen=True)
class AttentionPoint:
    layout: str  # "padded" or "ragged"
    contexts: tuple[int, ...]
    step_s: float  # median decode step


def bench_attention(model: Path, batch: int = 8, total_context: int = 2048, steps: int = 16,
                    device: str = "cpu") -> list[AttentionPoint]:
    """Decode step time, padded vs ragged layout, for even contexts and for skewed ones of the same sum."""
    short = max(1, total_context // (8 * batch))
    shapes = ((total_context // batch,) * batch, (short,) * (batch - 1) + (total_context - short * (batch - 1),))
    longest = max(max(c) for c in shapes) + steps + 1
    per_token = spec_of("m", load_arch_config(model), 4).kv_bytes_per_token  # at most 4 bytes per value
    tokens = total_context + batch * (steps + 1)
    config = EngineConfig(device=device, max_batch_size=batch, steps_per_turn=1,
                          kv_bytes=2 * tokens * per_token + 64 * 2**20)
    points = []
    with Engine({"m": model}, config) as engine:
        entry = engine.entry("m")
        if longest > entry.max_position:
            raise ConfigError(f"--total-context {total_context} makes a context of {longest} tokens, over the "
                              f"model's {entry.max_position}: lower it")
        vocab = entry.checkpoint.config.vocab_size
        engine.runner.switch_to("m")
        for layout in ("padded", "ragged"):
            engine.runner.ragged_decode = layout == "ragged"
            for contexts in shapes:
                prompts = [[(7 * i + j) % vocab for j in range(n)] for i, n in enumerate(contexts)]
                _, times = time_batch(engine, "m", prompts, steps, device)
                points.append(AttentionPoint(layout, contexts, statistics.median(times)))
        engine.runner.ragged_decode = True
    return points


@dataclass(frozen=True)
class SwapBench:
    device: str
    blocks: int
    block_bytes: int
    swap_out_s: float  # arena -> host, all blocks, one copy call
    swap_in_s: float  # host -> arena
    plain_copy_s: float  # one contiguous copy of the same bytes host -> device (pinned on a GPU)
    decode_step_s: float  # batch of 8, alone
    decode_step_with_swap_s: float  # the same while swaps run continuously

    @property
    def nbytes(self) -> int:
        return self.blocks * self.block_bytes

    @property
    def ratio_to_plain_copy(self) -> float:
        return max(self.swap_out_s, self.swap_in_s) / self.plain_copy_s

    @property
    def decode_slowdown(self) -> float:
        return self.decode_step_with_swap_s / self.decode_step_s - 1


def bench_swap(model: Path, device: str = "cpu", blocks: int = 512, steps: int = 32) -> SwapBench:
    """KV swap throughput vs a plain copy, and the slowdown of decode steps while swaps run."""
    import threading

    with Engine({"m": model}, EngineConfig(device=device, kv_bytes=256 * 2**20, steps_per_turn=1)) as engine:
        engine.runner.switch_to("m")
        layout = engine.runner.entries["m"].kv
        handles = [engine.arena.allocate_block(layout.block_bytes) for _ in range(blocks)]
        nbytes = blocks * layout.block_bytes
        host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=device.startswith("cuda"))
        host_offsets = [i * layout.block_bytes for i in range(blocks)]
        swapper = engine.kv.swapper

        def swap(out: bool) -> None:
            if out:
                ticket = swapper.copy(engine.arena.buffer, handles, host, host_offsets, layout.block_bytes)
            else:
                ticket = swapper.copy(host, host_offsets, engine.arena.buffer, handles, layout.block_bytes)
            ticket.wait()
            if ticket.event is not None:
                ticket.event.synchronize()

        out_s = min(timed(device, lambda: swap(True)) for _ in range(5))
        in_s = min(timed(device, lambda: swap(False)) for _ in range(5))
        dst = torch.empty(nbytes, dtype=torch.uint8, device=device)
        plain_s = min(timed(device, lambda: dst.copy_(host, non_blocking=True)) for _ in range(5))

        seqs = [engine.submit("m", "the model serves many requests", SamplingParams(max_tokens=2 * steps + 4))
                for _ in range(8)]
        engine.step_batch("m", list(seqs))  # prefill
        alone = _decode_steps(engine, seqs, steps, device)
        stop = threading.Event()
        background = threading.Thread(target=_swap_until, args=(stop, swap), name="bench-swap")
        background.start()
        busy = _decode_steps(engine, seqs, steps, device)
        stop.set()
        background.join()
        for handle in handles:
            engine.arena.free_block(handle)
    return SwapBench(device, blocks, layout.block_bytes, out_s, in_s, plain_s, alone, busy)


def _swap_until(stop, swap) -> None:
    out = True
    while not stop.is_set():
        swap(out)
        out = not out


def _decode_steps(engine: Engine, seqs: list, steps: int, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        engine.step_batch("m", list(seqs))
    sync(device)
    return (time.perf_counter() - start) / steps
