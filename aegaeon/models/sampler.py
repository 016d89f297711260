"""Greedy and temperature/top-p sampling, reproducible per request."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from aegaeon.errors import RequestError

GREEDY_BELOW = 1e-5  # temperatures under this decode greedily (as vLLM does): dividing by them overflows


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False  # benchmarks: always generate max_tokens
    top_k: int = 0  # keep the k most likely tokens; 0 or -1 (vLLM's "off"): all
    min_p: float = 0.0  # drop tokens less likely than min_p x the most likely one

    def validate(self) -> None:
        if self.max_tokens < 1:
            raise RequestError(f"max_tokens={self.max_tokens} must be at least 1")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise RequestError(f"temperature={self.temperature} must be >= 0")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise RequestError(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k < -1:
            raise RequestError(f"top_k={self.top_k} must be -1 or 0 (off), or at least 1")
        if not (math.isfinite(self.min_p) and 0 <= self.min_p <= 1):
            raise RequestError(f"min_p={self.min_p} must be in [0, 1]")


def new_generator(params: SamplingParams) -> torch.Generator | None:
    """A per-request generator, so the tokens drawn do not depend on batching."""
    if params.temperature < GREEDY_BELOW:
        return None
    generator = torch.Generator()
    generator.manual_seed(params.seed if params.seed is not None else torch.seed())
    return generator


def sample_one(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token from a [vocab] row of logits. RequestError (that request fails, the worker carries on) when
    the logits are not finite: no sampling from NaN."""
    if not bool(torch.isfinite(logits).all()):
        raise RequestError("the model produced non-finite logits for this request; it cannot be sampled")
    if params.temperature < GREEDY_BELOW:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float().cpu() / params.temperature, dim=-1)
    if params.top_p >= 1 and params.top_k <= 0 and params.min_p <= 0:
        return int(torch.multinomial(probs, 1, generator=generator))
    sorted_probs, order = torch.sort(probs, descending=True)
    if params.top_k > 0:  # top-k first, then top-p on what it left (renormalised), as vLLM does
        sorted_probs[params.top_k:] = 0
        sorted_probs = sorted_probs / sorted_probs.sum()
    keep = torch.ones_like(sorted_probs, dtype=torch.bool)
    if params.top_p < 1:  # the smallest prefix whose mass reaches top_p
        keep &= torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p
    if params.min_p > 0:
        keep &= sorted_probs >= params.min_p * sorted_probs[0]
    keep[0] = True  # the most likely token always stays (a top_p below float32's least value would drop it)
    sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
    choice = torch.multinomial(sorted_probs, 1, generator=generator)
    return int(order[choice])
