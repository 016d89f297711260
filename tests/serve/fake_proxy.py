"""A stand-in for the node's proxy: the HTTP layer's tests run against it without worker processes.

It checks what the API would send a worker (the sampling parameters must pass the worker's own
validation) and answers every request with a few tokens at once."""

from __future__ import annotations

import time

from aegaeon.ipc.messages import Submit, Tokens
from aegaeon.models.sampler import SamplingParams
from aegaeon.serve.requests import LiveRequest
from aegaeon.serve.telemetry import Telemetry


class FakeProxy:
    def __init__(self, *, refuse: Exception | None = None, serving: tuple[bool, str] = (True, "")):
        self.refuse = refuse
        self.serving = serving
        self.submitted: list[Submit] = []
        self.cancelled_ids: list[int] = []
        self.cancelled = self.restarts = 0
        self.links: dict = {}
        self.telemetry = Telemetry()
        self.table = _NoTable()

    def submit(
        self,
        model,
        prompt_ids,
        max_tokens=16,
        temperature=0.0,
        top_p=1.0,
        seed=None,
        ignore_eos=False,
        top_k=0,
        min_p=0.0,
        **penalties,
    ):
        if self.refuse is not None:
            raise self.refuse
        penalties = {k: tuple(v) if k == "stop_token_ids" else v for k, v in penalties.items()}
        SamplingParams(
            max_tokens, temperature, top_p, seed, ignore_eos, top_k, min_p, **penalties
        ).validate()
        submit = Submit(
            len(self.submitted) + 1,
            model,
            tuple(prompt_ids),
            max_tokens,
            temperature,
            top_p,
            seed,
            ignore_eos,
            top_k,
            min_p,
            **penalties,
        )
        self.submitted.append(submit)
        return LiveRequest(submit, time.time())

    def listen(self, request: LiveRequest, listener) -> None:
        n = min(3, request.submit.max_tokens)
        listener(Tokens(request.request_id, tuple(range(5, 5 + n)), (time.time(),) * n, "length"))

    def cancel(self, request_id: int, by_client: bool = True) -> None:
        self.cancelled_ids.append(request_id)

    def request_counts(self) -> dict[str, tuple[int, int]]:
        return {}  # every request is answered at once: none is ever in flight

    def health(self):
        ok, reason = self.serving
        return ok, reason, {"workers": {"prefill": int(ok), "decode": int(ok)}}


class _NoTable:
    rerun = 0
