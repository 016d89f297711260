"""Model switch time vs a plain copy of the same bytes (and, on a GPU, vs pinned host->device bandwidth; with
an emulated link, vs the link's rate), and the host weight cache's load vs a raw read of the files."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from aegaeon.config.serving import EngineConfig
from aegaeon.engine.executor import StepExecutor
from aegaeon.ipc.shm import ShmNamespace
from aegaeon.models.sampler import SamplingParams
from aegaeon.profiler import sync
from aegaeon.weights.checkpoint import open_checkpoint
from aegaeon.weights.host_cache import HostWeightCache


@dataclass(frozen=True)
class SwitchBench:
    device: str
    bytes_per_switch: int
    switches: int
    median_switch_s: float
    median_plain_copy_s: float
    pinned_h2d_gb_s: float | None  # GPU only
    decode_step_s: (
        float  # one decode step of a batch of 8 on the same engine: the unit a switch is paid in
    )
    link_gbps: float | None = None  # the emulated link, when there was one

    @property
    def switch_per_step(self) -> float:
        """How many decode steps one switch costs (about 0.1 on a CPU, about 25 for a 7B model on an H100)."""
        return self.median_switch_s / self.decode_step_s

    @property
    def achieved_gb_s(self) -> float:
        return self.bytes_per_switch / self.median_switch_s / 1e9

    @property
    def ratio_to_plain_copy(self) -> float:
        return self.median_switch_s / self.median_plain_copy_s

    @property
    def ratio_to_pcie_bound(self) -> float | None:
        if not self.pinned_h2d_gb_s:
            return None
        return self.median_switch_s / (self.bytes_per_switch / (self.pinned_h2d_gb_s * 1e9))


def bench_switch(
    model: Path, device: str = "cpu", switches: int = 20, link_gbps: float | None = None
) -> SwitchBench:
    """Alternate two copies of `model` in one engine; compare with copying the same bytes, and with a decode
    step of the same engine."""
    config = EngineConfig(device=device, kv_bytes=32 * 2**20, link_gbps=link_gbps)
    with StepExecutor({"first": model, "second": model}, config) as engine:
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
        step_s = decode_step_time(engine, "first", device)
    return SwitchBench(
        device,
        nbytes,
        switches,
        statistics.median(times),
        statistics.median(copies),
        pinned_h2d_bandwidth(nbytes) if device.startswith("cuda") else None,
        step_s,
        link_gbps,
    )


def decode_step_time(
    engine: StepExecutor, model: str, device: str, batch: int = 8, steps: int = 16
) -> float:
    """Median seconds of one decode step of `batch` short sequences of `model` (bound already)."""
    seqs = list(range(10_000, 10_000 + batch))
    for request_id in seqs:
        engine.add(
            request_id,
            model,
            [3, 1, 4, 1, 5, 9, 2, 6],
            SamplingParams(max_tokens=steps + 4, ignore_eos=True),
        )
    engine.step(model, seqs)  # prefill
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        engine.step(model, seqs)
        sync(device)
        times.append(time.perf_counter() - start)
    for request_id in seqs:
        engine.remove(request_id)
    return statistics.median(times)


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
    return WeightLoadBench(
        file_bytes, min(load_times[1:]), min(populate_times[1:]), min(raw_times[1:])
    )
