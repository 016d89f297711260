"""In-process client of a node's proxy: submit requests and stream their tokens, no HTTP."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from aegaeon.errors import RequestError
from aegaeon.ipc.messages import Tokens
from aegaeon.serve.proxy import Proxy
from aegaeon.serve.requests import LiveRequest


@dataclass
class Completion:
    request_id: int
    model: str
    token_ids: list[int] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)  # wall clock (time.time()) of each token
    arrival: float = 0.0
    finish_reason: str | None = None
    error: str | None = None


class Client:
    def __init__(self, proxy: Proxy, timeout: float = 120.0):
        self.proxy = proxy
        self.timeout = timeout

    def submit(
        self, model: str, prompt_ids: list[int], max_tokens: int = 16, **sampling
    ) -> LiveRequest:
        """Submit a request; `sampling` as Proxy.submit takes it (temperature, top_p, seed, ignore_eos,
        top_k, min_p, and the extras: penalties, min_tokens, stop_token_ids, logprobs)."""
        if not prompt_ids:
            raise RequestError(f"model {model}: the prompt is empty")
        if max_tokens < 1:
            raise RequestError(f"max_tokens={max_tokens} must be at least 1")
        return self.proxy.submit(model, prompt_ids, max_tokens, **sampling)

    def stream(self, state: LiveRequest) -> Iterator[tuple[int, float]]:
        """(token id, time) pairs as they arrive; raises RequestError if the request fails."""
        for message in self._messages(state):
            yield from zip(message.token_ids, message.times)
            if message.error is not None:
                raise RequestError(message.error)

    def _messages(self, state: LiveRequest) -> Iterator[Tokens]:
        """The request's token messages up to and including its last (finished or failed) one."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                message = state.tokens.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(
                    f"request {state.submit.request_id}: no token within {self.timeout} s"
                ) from None
            yield message
            if message.error is not None or message.finish_reason is not None:
                return

    def complete(self, state: LiveRequest) -> Completion:
        done = Completion(state.submit.request_id, state.submit.model, arrival=time.time())
        for message in self._messages(state):
            done.token_ids += message.token_ids
            done.token_times += message.times
            done.finish_reason = "error" if message.error is not None else message.finish_reason
            done.error = message.error
        return done

    def complete_many(
        self, requests: list[tuple[str, list[int]]], max_tokens: int = 16
    ) -> list[Completion]:
        """Submit all requests at once, then wait for each (in order)."""
        states = [self.submit(model, ids, max_tokens) for model, ids in requests]
        return [self.complete(state) for state in states]
