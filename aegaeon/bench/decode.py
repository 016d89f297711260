"""Decode throughput vs Hugging Face transformers, and decode step time padded vs ragged KV layouts."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from aegaeon.config.serving import EngineConfig
from aegaeon.engine.executor import StepExecutor
from aegaeon.engine.local import LocalEngine
from aegaeon.errors import ConfigError
from aegaeon.models.config import load_arch_config
from aegaeon.models.sampler import SamplingParams
from aegaeon.profiler import spec_of, sync, time_batch


@dataclass(frozen=True)
class DecodeBench:
    batch: int
    steps: int
    tokens_per_s: float
    reference_tokens_per_s: float | None  # transformers, when installed

    @property
    def ratio(self) -> float | None:
        return (
            self.tokens_per_s / self.reference_tokens_per_s if self.reference_tokens_per_s else None
        )


def bench_decode(model: Path, batch: int = 8, steps: int = 64, device: str = "cpu") -> DecodeBench:
    """Decode tokens/s of one batch (prompt prefill excluded) in our engine and in transformers."""
    prompt = "the model serves many requests from one pool"
    with LocalEngine(
        {"m": model}, EngineConfig(device=device, max_batch_size=batch, steps_per_turn=1)
    ) as engine:
        prompt_ids = engine.tokenizers["m"].encode(prompt).ids
        executor = engine.executor
        ids = list(range(batch))
        for request_id in ids:
            executor.add(
                request_id, "m", prompt_ids, SamplingParams(max_tokens=steps + 1, ignore_eos=True)
            )
        executor.switch_to("m")
        executor.step("m", ids)  # prefill and the first token
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            executor.step("m", ids)
        sync(device)
        ours = batch * steps / (time.perf_counter() - start)
    return DecodeBench(
        batch, steps, ours, _reference_decode(model, prompt_ids, batch, steps, device)
    )


def _reference_decode(
    model: Path, prompt_ids: list[int], batch: int, steps: int, device: str
) -> float | None:
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


def bench_attention(
    model: Path, batch: int = 8, total_context: int = 2048, steps: int = 16, device: str = "cpu"
) -> list[AttentionPoint]:
    """Decode step time, padded vs ragged layout, for even contexts and for skewed ones of the same sum."""
    short = max(1, total_context // (8 * batch))
    shapes = (
        (total_context // batch,) * batch,
        (short,) * (batch - 1) + (total_context - short * (batch - 1),),
    )
    longest = max(max(c) for c in shapes) + steps + 1
    per_token = spec_of(
        "m", load_arch_config(model), 4
    ).kv_bytes_per_token  # at most 4 bytes per value
    tokens = total_context + batch * (steps + 1)
    config = EngineConfig(
        device=device,
        max_batch_size=batch,
        steps_per_turn=1,
        kv_bytes=2 * tokens * per_token + 64 * 2**20,
    )
    points = []
    with StepExecutor({"m": model}, config) as engine:
        entry = engine.entry("m")
        if longest > entry.max_position:
            raise ConfigError(
                f"--total-context {total_context} makes a context of {longest} tokens, over the "
                f"model's {entry.max_position}: lower it"
            )
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
