"""Tensor-parallel instances side by side: decode step time, model switch time and the collectives' share
of a step at each degree, on the same two models in one run (so the machine's noise hits every degree).

A switch alternates between two models of the same shape: every rank copies its own shard from the host
cache at once, so a switch should take about 1/N of the whole copy where the ranks have their own links
(GPUs); on a CPU the ranks share the cores and the memory bus. The collectives' share is rank 0's time
inside all-reduce and all-gather over the decode steps' time; it includes waiting for the slowest rank.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

from aegaeon.config.serving import EngineConfig
from aegaeon.models.config import ArchConfig
from aegaeon.models.maker import config_for, make_model
from aegaeon.models.sampler import SamplingParams
from aegaeon.parallel.launch import standalone_instance
from aegaeon.parallel.shard import check_degree
from aegaeon.profiler import sync

log = logging.getLogger(__name__)

# about 450 MB in float32: 4 layers of a 1024-wide model with a 32k vocabulary
DEFAULT_SHAPE = config_for(
    "llama", layers=4, hidden=1024, heads=16, kv_heads=8, intermediate=2816, vocab=32000
)


@dataclass(frozen=True)
class TpPoint:
    tp: int
    weight_mib: (
        float  # the ranks' shards together (the whole model, plus a padded vocabulary's rows)
    )
    decode_step_s: tuple[float, ...]  # every timed step
    switch_s: tuple[float, ...]  # every timed switch
    comm_share: float  # collectives' seconds / decode seconds, rank 0

    @property
    def step_median_s(self) -> float:
        return statistics.median(self.decode_step_s)

    @property
    def switch_median_s(self) -> float:
        return statistics.median(self.switch_s)


def bench_models(root: Path, shape: ArchConfig = DEFAULT_SHAPE) -> dict[str, str]:
    """Two models of `shape` (made once under `root`), the pair a switch alternates between."""
    models = {}
    for name, seed in (("a", 1), ("b", 2)):
        path = root / f"tp-{shape.hidden_size}x{shape.num_layers}-{name}"
        if not (path / "model.safetensors").exists():
            make_model(path, shape, seed=seed)
        models[name] = str(path)
    return models


def bench_tp(
    models: dict[str, str],
    degrees: tuple[int, ...] = (1, 2, 4),
    batch: int = 8,
    steps: int = 16,
    switches: int = 6,
    threads: int = 1,
    config: EngineConfig = EngineConfig(),
    progress=None,
) -> list[TpPoint]:
    """Measure each degree in turn on `models` (exactly two, of one shape)."""
    from aegaeon.models.config import load_arch_config

    if len(models) != 2:
        raise ValueError("give two models of one shape: a switch alternates between them")
    arch = load_arch_config(next(iter(models.values())))
    for tp in degrees:
        check_degree(arch, tp, next(iter(models)))
    points = []
    for tp in degrees:
        points.append(_measure(models, tp, batch, steps, switches, threads, config, arch))
        if progress:
            progress(points[-1])
    return points


def _measure(models, tp, batch, steps, switches, threads, config, arch) -> TpPoint:
    kv_bytes = 2 * batch * 64 * arch.num_layers * arch.num_kv_heads * arch.head_dim * 4 + 16 * 2**20
    engine_config = replace(config, tp_size=tp, kv_bytes=kv_bytes, max_batch_size=batch)
    first, second = list(models)
    with standalone_instance(models, engine_config, threads) as instance:
        for name in models:
            instance.host_cache.wait(name)
        instance.switch_to(first)
        weight_bytes = instance.entry(first).weights.total_bytes * tp  # every rank's shard
        ids = list(range(batch))
        for request_id in ids:
            instance.add(
                request_id,
                first,
                [(7 * request_id + j) % arch.vocab_size + 1 for j in range(32)],
                SamplingParams(max_tokens=steps + 3, ignore_eos=True),
            )
        instance.step(first, ids)  # prefill
        instance.step(first, ids)  # warm up one decode step
        group = getattr(instance, "group", None)
        comm_before = group.comm_seconds if group is not None else 0.0
        step_times = []
        for _ in range(steps):
            sync(config.device)
            start = time.perf_counter()
            instance.step(first, ids)
            sync(config.device)
            step_times.append(time.perf_counter() - start)
        comm = (group.comm_seconds - comm_before) if group is not None else 0.0
        for request_id in ids:
            instance.remove(request_id)
        switch_times = []
        for i in range(switches + 1):
            target = second if i % 2 == 0 else first
            sync(config.device)
            start = time.perf_counter()
            instance.switch_to(target)  # at TP > 1 it returns once every rank has switched
            sync(config.device)
            if i:  # the first switch warms the second model's pages up
                switch_times.append(time.perf_counter() - start)
    return TpPoint(
        tp, weight_bytes / 2**20, tuple(step_times), tuple(switch_times), comm / sum(step_times)
    )
