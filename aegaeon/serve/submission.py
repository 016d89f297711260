"""Submitting an API request to the node: its sampling fields normalised and checked against the model,
its `n` choices submitted all or none, and the node's refusals turned into API errors (429, 503, 400)."""

from __future__ import annotations

from aegaeon.errors import RequestError
from aegaeon.models.sampler import GREEDY_BELOW, check_prompt_logprobs_size
from aegaeon.serve.api_errors import ApiError, unavailable
from aegaeon.serve.proxy import Proxy, UnavailableError
from aegaeon.serve.requests import LiveRequest, OverloadedError
from aegaeon.serve.served_model import ServedModel


def submit_choices(
    proxy: Proxy,
    model: ServedModel,
    prompt_ids: list[int],
    body,
    max_tokens: int,
    logprobs: int | None,
    prompt_logprobs: int | None = None,
) -> tuple[LiveRequest, ...]:
    """Submit an API request's `n` choices (each its own request on the node, seeded seed, seed+1, ...);
    all or none: a refusal cancels the choices already submitted."""
    if not prompt_ids:
        raise ApiError(400, "the prompt is empty", "prompt")
    if prompt_logprobs is not None:
        try:  # refused here, before it queues, rather than by the prefill worker
            check_prompt_logprobs_size(len(prompt_ids), model.vocab_size)
        except RequestError as err:
            raise ApiError(400, str(err), "echo") from None
    if len(prompt_ids) + max_tokens > model.max_position:
        raise ApiError(
            400,
            f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({max_tokens}) "
            f"exceeds the context of {model.max_position} tokens",
            "max_tokens",
            "context_length_exceeded",
        )
    temperature = 1.0 if body.temperature is None else body.temperature
    if temperature < GREEDY_BELOW:  # as vLLM does: a temperature this small is greedy decoding
        temperature = 0.0
    top_p = 1.0 if body.top_p is None else body.top_p
    extras = sampling_extras(body, model, max_tokens)
    if logprobs is not None:
        extras["logprobs"] = logprobs
    if prompt_logprobs is not None:
        extras["prompt_logprobs"] = prompt_logprobs
    states: list[LiveRequest] = []
    try:
        for index in range(body.n or 1):
            seed = body.seed if body.seed is None or index == 0 else (body.seed + index) % 2**64
            states.append(
                proxy.submit(
                    model.name,
                    prompt_ids,
                    max_tokens,
                    temperature,
                    top_p,
                    seed,
                    bool(body.ignore_eos),
                    body.top_k or 0,
                    body.min_p or 0.0,
                    **extras,
                )
            )
    except (OverloadedError, UnavailableError, RequestError) as err:
        for state in states:
            proxy.cancel(state.submit.request_id, by_client=False)
        if isinstance(err, OverloadedError):
            raise ApiError(
                429,
                str(err),
                None,
                "too_many_requests",
                "rate_limit_error",
                {"Retry-After": str(max(1, round(err.retry_after)))},
            ) from None
        if isinstance(err, UnavailableError):
            raise unavailable(str(err)) from None
        raise ApiError(400, str(err)) from None
    return tuple(states)


def sampling_extras(body, model: ServedModel, max_tokens: int) -> dict:
    """The penalty and stopping fields an API request set, checked against its model and max_tokens."""
    given = {
        name: getattr(body, name)
        for name in (
            "presence_penalty",
            "frequency_penalty",
            "repetition_penalty",
            "min_tokens",
            "stop_token_ids",
        )
        if getattr(body, name) is not None
    }
    if given.get("min_tokens", 0) > max_tokens:
        raise ApiError(
            400,
            f"min_tokens ({given['min_tokens']}) must not exceed max_tokens ({max_tokens})",
            "min_tokens",
        )
    outside = [t for t in given.get("stop_token_ids", ()) if t >= model.vocab_size]
    if outside:
        raise ApiError(
            400,
            f"stop_token_ids {outside} are not tokens of {model.name} (vocabulary of "
            f"{model.vocab_size})",
            "stop_token_ids",
        )
    return given
