"""Greedy and temperature/top-k/top-p/min-p sampling with vLLM's penalties, reproducible per request."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from aegaeon.errors import RequestError

MAX_LOGPROBS = 20  # as OpenAI's top_logprobs
GREEDY_BELOW = (
    1e-5  # temperatures under this decode greedily (as vLLM does): dividing by them overflows
)


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False  # benchmarks: always generate max_tokens
    top_k: int = 0  # keep the k most likely tokens; 0 or -1 (vLLM's "off"): all
    min_p: float = 0.0  # drop tokens less likely than min_p x the most likely one
    presence_penalty: float = 0.0  # OpenAI's: minus this for every token the output already has
    frequency_penalty: float = 0.0  # OpenAI's: minus this times how often the output has the token
    repetition_penalty: float = (
        1.0  # vLLM's: tokens of the prompt or output, positive logits / it, others x it
    )
    min_tokens: int = (
        0  # vLLM's: EOS and stop_token_ids cannot end the output before this many tokens
    )
    stop_token_ids: tuple[int, ...] = ()  # vLLM's: these tokens end the output as EOS does
    # Tokens at the end of the prompt that are this request's own output from an earlier run (a re-run after
    # its worker was lost): the penalties and min_tokens count them as output.
    output_before: int = 0
    # None: off; k >= 0: the drawn token's log-probability and the k most likely
    logprobs: int | None = None
    prompt_logprobs: int | None = (
        None  # the same for every prompt token (completions' echo with logprobs)
    )

    @property
    def penalised(self) -> bool:
        return bool(
            self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0
        )

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
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not (math.isfinite(value) and -2 <= value <= 2):
                raise RequestError(f"{name}={value} must be in [-2, 2]")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise RequestError(f"repetition_penalty={self.repetition_penalty} must be > 0 (1: off)")
        if self.min_tokens < 0 or self.min_tokens > self.output_before + self.max_tokens:
            raise RequestError(f"min_tokens={self.min_tokens} must be in [0, max_tokens]")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_LOGPROBS:
                raise RequestError(f"{name}={value} must be in [0, {MAX_LOGPROBS}]")
        if self.output_before < 0 or any(
            not isinstance(t, int) or t < 0 for t in self.stop_token_ids
        ):
            raise RequestError("stop_token_ids must be token ids (integers >= 0)")


def new_generator(params: SamplingParams) -> torch.Generator | None:
    """A per-request generator, so the tokens drawn do not depend on batching."""
    if params.temperature < GREEDY_BELOW:
        return None
    generator = torch.Generator()
    generator.manual_seed(params.seed if params.seed is not None else torch.seed())
    return generator


def sample_one(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None,
    context_ids: list[int] | None = None,
    num_output: int = 0,
    banned: tuple[int, ...] = (),
) -> int:
    """One token from a [vocab] row of logits. RequestError (that request fails, the worker carries on) when
    the logits are not finite: no sampling from NaN. `context_ids` are the request's prompt and output so
    far, the last `num_output` of them output (needed when it has penalties); `banned` tokens cannot be
    drawn (EOS before min_tokens)."""
    if not bool(torch.isfinite(logits).all()):
        raise RequestError(
            "the model produced non-finite logits for this request; it cannot be sampled"
        )
    if params.penalised or banned:
        logits = adjust_logits(logits, params, context_ids or [], num_output, banned)
    if params.temperature < GREEDY_BELOW:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float().cpu() / params.temperature, dim=-1)
    if params.top_p >= 1 and params.top_k <= 0 and params.min_p <= 0:
        return int(torch.multinomial(probs, 1, generator=generator))
    sorted_probs, order = torch.sort(probs, descending=True)
    if params.top_k > 0:  # top-k first, then top-p on what it left (renormalised), as vLLM does
        sorted_probs[params.top_k :] = 0
        sorted_probs = sorted_probs / sorted_probs.sum()
    keep = torch.ones_like(sorted_probs, dtype=torch.bool)
    if params.top_p < 1:  # the smallest prefix whose mass reaches top_p
        keep &= torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p
    if params.min_p > 0:
        keep &= sorted_probs >= params.min_p * sorted_probs[0]
    keep[0] = (
        True  # the most likely token always stays (a top_p below float32's least value would drop it)
    )
    sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
    choice = torch.multinomial(sorted_probs, 1, generator=generator)
    return int(order[choice])


def adjust_logits(
    logits: torch.Tensor,
    params: SamplingParams,
    context_ids: list[int],
    num_output: int,
    banned: tuple[int, ...] = (),
) -> torch.Tensor:
    """vLLM's penalties on a copy of one row, in its order (repetition over prompt and output, then frequency
    and presence over the output: the last `num_output` of `context_ids`), and `banned` tokens set to -inf."""
    logits = logits.float().clone()
    vocab = logits.shape[-1]
    if params.repetition_penalty != 1.0 and context_ids:
        seen = torch.unique(torch.tensor(context_ids, dtype=torch.long))
        seen = seen[seen < vocab]
        picked = logits[seen]
        logits[seen] = torch.where(
            picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty
        )
    output = context_ids[len(context_ids) - min(num_output, len(context_ids)) :]
    if (params.presence_penalty or params.frequency_penalty) and output:
        counts = torch.bincount(torch.tensor(output, dtype=torch.long), minlength=vocab)[
            :vocab
        ].float()
        logits -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).float()
    allowed = sorted({t for t in banned if t < vocab})
    if allowed and len(allowed) < vocab:  # never ban every token
        logits[torch.tensor(allowed, dtype=torch.long)] = float("-inf")
    return logits


def token_logprobs(
    logits: torch.Tensor, token: int, k: int
) -> tuple[float, tuple[tuple[int, float], ...]]:
    """The drawn token's log-probability and the k most likely tokens', under the model's own distribution
    (raw logits: before temperature and penalties, as vLLM reports them by default)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    top = torch.topk(logprobs, min(k, logprobs.shape[-1])) if k else None
    alternatives = () if top is None else tuple(zip(top.indices.tolist(), top.values.tolist()))
    return float(logprobs[token]), alternatives


MAX_PROMPT_LOGIT_ELEMENTS = 64 * 2**20  # 256 MiB of float32 logits for one prompt's logprobs


def check_prompt_logprobs_size(prompt_len: int, vocab: int) -> None:
    if prompt_len * vocab > MAX_PROMPT_LOGIT_ELEMENTS:
        raise RequestError(
            f"the logprobs of a {prompt_len}-token prompt need {prompt_len * vocab * 4 / 2**20:.0f} MiB "
            f"of logits, over {MAX_PROMPT_LOGIT_ELEMENTS * 4 // 2**20} MiB: use a shorter prompt or no echo"
        )


def prompt_token_logprobs(logits: torch.Tensor, prompt_ids: list[int], k: int) -> tuple:
    """Per prompt token, its log-probability given the tokens before it and the k most likely there;
    None for the first token, which nothing predicts. `logits` [len(prompt_ids) - 1, vocab] are the
    predictions after each prompt token but the last."""
    if not bool(torch.isfinite(logits).all()):
        raise RequestError(
            "the model produced non-finite logits over this prompt; no logprobs for it"
        )
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    following = torch.tensor(prompt_ids[1:], dtype=torch.long).unsqueeze(1)
    chosen = logprobs.gather(1, following).squeeze(1).tolist()
    if k:
        top = torch.topk(logprobs, min(k, logprobs.shape[-1]), dim=-1)
        alternatives = [tuple(zip(i, v)) for i, v in zip(top.indices.tolist(), top.values.tolist())]
    else:
        alternatives = [()] * len(chosen)
    return (None,) + tuple(zip(chosen, alternatives))
