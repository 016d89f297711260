"""Measure a cost-model profile of a checkpoint on the local device.

Runs the engine's own model runner over a grid of (input length, batch)
points: the time of one batched prefill, and the mean time of a decode step
right after it. The host->device copy bandwidth and the throughput of a real
model switch and KV swap give the link fields. With `tp` > 1 the instance is a tensor-parallel group
(aegaeon.parallel) and the profile is one rank's: its shard's sizes, its link, the group's step times. The
table goes through the same
fit as the shipped H100 profiles (`aegaeon.profiles.build_profile`), so the
simulator reads the result like any other profile.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from aegaeon.config import ModelSpec
from aegaeon.config.serving import EngineConfig
from aegaeon.engine.executor import StepExecutor
from aegaeon.errors import ConfigError
from aegaeon.models.config import ArchConfig
from aegaeon.models.sampler import SamplingParams
from aegaeon.parallel.launch import standalone_instance
from aegaeon.profiles import TablePoint, build_profile
from aegaeon.sched.cost import LinkCost

log = logging.getLogger(__name__)

DEFAULT_INPUT_LENS = (16, 32, 64, 128, 256)
DEFAULT_BATCHES = (1, 2, 4, 8)


@dataclass(frozen=True)
class ProfileRequest:
    model: Path
    name: str
    device: str = "cpu"
    device_name: str = "cpu"  # the folder under profiles/
    input_lens: tuple[int, ...] = DEFAULT_INPUT_LENS
    batches: tuple[int, ...] = DEFAULT_BATCHES
    decode_steps: int = 4
    repeats: int = 2
    tp: int = (
        1  # tensor-parallel degree: ranks on `device` (cpu) or on consecutive GPUs from `device`
    )


def spec_of(name: str, config: ArchConfig, dtype_bytes: int) -> ModelSpec:
    """The cost model's view of `config`; of a shard's config (tensor parallelism), one rank's sizes."""
    return ModelSpec(
        name,
        config.hidden_size,
        config.intermediate_size,
        config.num_layers,
        config.num_heads,
        config.num_kv_heads,
        config.vocab_rows,
        config.max_position,
        config.qkv_bias,
        config.tie_word_embeddings,
        dtype_bytes,
        head_size=config.head_dim
        if config.head_dim * config.num_heads != config.hidden_size
        else 0,
    )


def measure_profile(
    req: ProfileRequest, progress: Callable[[int, int], None] | None = None
) -> dict:
    """Measure the table and the link on `req.device`; returns the profile dict (schema aegaeon-profile/1)."""
    if not req.input_lens or not req.batches or req.decode_steps < 1 or req.repeats < 1:
        raise ConfigError(
            "give at least one input length and batch size, and decode_steps/repeats >= 1"
        )
    longest = max(req.input_lens) + req.decode_steps + 1
    kv_mib = max(64, 2 * max(req.batches) * longest * 1024 // 2**20 + 64)
    config = EngineConfig(
        device=req.device,
        kv_bytes=kv_mib * 2**20,
        max_batch_size=max(req.batches),
        steps_per_turn=1,
        tp_size=req.tp,
        tp_devices=rank_devices(req.device, req.tp) if req.tp > 1 else (),
    )
    with standalone_instance({req.name: str(req.model)}, config) as engine:
        if req.name in engine.unavailable:
            raise ConfigError(engine.unavailable[req.name])
        entry = engine.runner.entries[req.name]
        if longest > entry.max_position:
            raise ConfigError(
                f"model {req.name}: --input-lens up to {max(req.input_lens)} exceed its context "
                f"of {entry.max_position} tokens"
            )
        engine.switch_to(req.name)
        grid = [(i, b) for i in req.input_lens for b in req.batches]
        points = []
        for done, (input_len, batch) in enumerate(grid, 1):
            points.append(_measure_point(engine, req, input_len, batch))
            if progress:
                progress(done, len(grid))
        link = _measure_link(engine, req)
        itemsize = torch.empty((), dtype=entry.weights.dtype).element_size()
        spec = spec_of(req.name, entry.checkpoint.config, itemsize)
        block_size = entry.kv.block_size
    return build_profile(req.device_name, spec, points, link, block_size, req.tp)


def rank_devices(device: str, tp: int) -> tuple[str, ...]:
    """Rank i's device: `device` itself on a CPU, the i-th GPU from `device` on a GPU."""
    if not device.startswith("cuda"):
        return (device,) * tp
    first = int(device.partition(":")[2] or 0)
    return tuple(f"cuda:{first + rank}" for rank in range(tp))


def _measure_point(
    engine: StepExecutor, req: ProfileRequest, input_len: int, batch: int
) -> TablePoint:
    rng = random.Random(input_len * 1000 + batch)
    vocab = engine.runner.entries[req.name].checkpoint.config.vocab_size
    prefills, decodes = [], []
    for _ in range(req.repeats + 1):  # the first round warms up
        prompts = [[rng.randrange(vocab) for _ in range(input_len)] for _ in range(batch)]
        prefill, steps = time_batch(engine, req.name, prompts, req.decode_steps, req.device)
        prefills.append(prefill)
        decodes.extend(steps)
    decodes = decodes[req.decode_steps :]
    return TablePoint(input_len, batch, min(prefills[1:]), sum(decodes) / len(decodes))


def time_batch(
    engine: StepExecutor, model: str, prompts: list[list[int]], decode_steps: int, device: str
) -> tuple[float, list[float]]:
    """Prefill `prompts` as one batch of the bound `model`, then run `decode_steps` decode steps; returns the
    prefill's seconds and each step's, and frees the sequences."""
    ids = list(range(len(prompts)))
    for request_id, prompt in zip(ids, prompts):
        engine.add(
            request_id, model, prompt, SamplingParams(max_tokens=decode_steps + 1, ignore_eos=True)
        )
    prefill = timed(device, lambda: engine.step(model, ids))
    steps = [timed(device, lambda: engine.step(model, ids)) for _ in range(decode_steps)]
    for request_id in ids:
        engine.remove(request_id)
    return prefill, steps


def timed(device: str, fn: Callable[[], None]) -> float:
    """Wall seconds of `fn`, with the device's queued work drained before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _measure_link(engine: StepExecutor, req: ProfileRequest) -> LinkCost:
    """Copy bandwidth host cache -> arena, and the share a weight copy and a KV round trip achieve."""
    entry = engine.runner.entries[req.name]
    src = engine.host_cache.region(req.name)
    dst = torch.empty_like(src, device=req.device)
    copy_s = min(timed(req.device, lambda: dst.copy_(src)) for _ in range(5))
    bandwidth = src.numel() / copy_s
    switch_s = min(
        timed(
            req.device,
            lambda: engine.runner.entries[req.name].model.bind(
                entry.weights.views(_copy_weights(engine, req.name))
            ),
        )
        for _ in range(5)
    )
    engine.add(0, req.name, [1] * (entry.kv.block_size * 8), SamplingParams(max_tokens=2))
    engine.reserve_kv(0)
    blocks, block_bytes = engine.kv_blocks(0)  # a host block holds every rank's shard of it
    swap_s, swap_bytes = [], blocks * block_bytes // req.tp
    for _ in range(5):
        swap_s.append(timed(req.device, lambda: (engine.swap_out(0), engine.swap_in(0))) / 2)
    engine.remove(0)
    switch_eff = min(1.0, (src.numel() / switch_s) / bandwidth)
    swap_eff = min(1.0, (swap_bytes / min(swap_s)) / bandwidth)
    return LinkCost(
        bandwidth,
        switch_eff,
        swap_eff,
        _device_memory(req.device),
        fast_switch_efficiency=switch_eff,
    )


def _copy_weights(engine: StepExecutor, name: str) -> torch.Tensor:
    entry = engine.runner.entries[name]
    region = engine.arena.weight_view(0, torch.uint8, (entry.weights.total_bytes,))
    region.copy_(engine.host_cache.region(name))
    return region


def _device_memory(device: str) -> int:
    if device.startswith("cuda"):
        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
