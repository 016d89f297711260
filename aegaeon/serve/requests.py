"""The proxy's table of requests in flight: what each asked for, where it is, what its client has seen.

A request's client sees one stream of tokens. The table keeps every token delivered, so that a request
whose worker dies can be run again from what is known (its prompt plus the tokens already streamed) and
its stream continues with no duplicate and no gap: tokens from a dead worker's incarnation are never
delivered (the proxy drops messages of dead links), and the re-run's first token is the next one.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from aegaeon.config.serving import AdmissionLimits
from aegaeon.errors import AegaeonError
from aegaeon.ipc.messages import Submit, Tokens


class OverloadedError(AegaeonError):
    """The node holds as many requests as its admission limits allow: retry later (HTTP 429)."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class LiveRequest:
    submit: Submit  # what the client asked for
    arrival: float
    tokens: "queue.Queue[Tokens]" = field(default_factory=queue.Queue)
    listener: Callable[[Tokens], None] | None = (
        None  # set by async front ends instead of reading `tokens`
    )
    prefill_worker: int | None = None
    decode_worker: int | None = None
    unreleased: tuple[int, ...] = ()  # host KV handles handed to a decode worker, not yet released
    delivered: list[int] = field(default_factory=list)  # every token the client has been sent
    run: Submit | None = None  # what its current run was dispatched with (see `next_run`)
    reruns: int = 0
    # when (the proxy's clock) its first decode token is due by the SLO, once its prefill's token came
    first_decode_due: float | None = None
    suspected: int = (
        0  # losses of a worker while it was computing this request (aegaeon.serve.recovery)
    )
    done: bool = False

    @property
    def request_id(self) -> int:
        return self.submit.request_id

    @property
    def model(self) -> str:
        return self.submit.model

    def deliver(self, message: Tokens) -> None:
        self.delivered.extend(message.token_ids)
        if self.listener is not None:
            self.listener(message)
        else:
            self.tokens.put(message)

    def next_run(self) -> Submit:
        """The request as it continues after the tokens already delivered: the Submit of its next run (the
        client's own, before any token)."""
        return replace(
            self.submit,
            prompt_ids=self.submit.prompt_ids + tuple(self.delivered),
            max_tokens=self.submit.max_tokens - len(self.delivered),
            output_before=len(self.delivered),
            # the client has the prompt's logprobs once it has a token
            prompt_logprobs=self.submit.prompt_logprobs if not self.delivered else None,
        )


class RequestTable:
    def __init__(self, limits: AdmissionLimits = AdmissionLimits()):
        self.limits = limits
        self.requests: dict[int, LiveRequest] = {}
        self.per_model: dict[str, int] = {}
        self._next_id = 0
        self.cancelled = 0
        self.rerun = 0
        self.refused = 0

    def admit(self, submit_fields: dict, arrival: float) -> LiveRequest:
        """A new request (its id assigned here); OverloadedError beyond the admission limits."""
        model = submit_fields["model"]
        if len(self.requests) >= self.limits.max_requests:
            self.refused += 1
            raise OverloadedError(
                f"the node holds {len(self.requests)} requests, its limit (--max-requests): "
                f"retry later",
                self.limits.retry_after,
            )
        if self.per_model.get(model, 0) >= self.limits.max_requests_per_model:
            self.refused += 1
            raise OverloadedError(
                f"model {model} has {self.per_model[model]} requests in flight, its limit "
                f"(--max-requests-per-model): retry later",
                self.limits.retry_after,
            )
        request = LiveRequest(Submit(self._next_id, **submit_fields), arrival)
        self._next_id += 1
        self.requests[request.request_id] = request
        self.per_model[model] = self.per_model.get(model, 0) + 1
        return request

    def get(self, request_id: int) -> LiveRequest | None:
        return self.requests.get(request_id)

    def end(self, request: LiveRequest) -> None:
        """The request is over (finished, failed or cancelled): it leaves the table."""
        request.done = True
        if self.requests.pop(request.request_id, None) is not None:
            self.per_model[request.model] -= 1

    def fail(self, request: LiveRequest, reason: str, unavailable: bool = True) -> None:
        request.deliver(Tokens(request.request_id, (), (), None, reason, unavailable=unavailable))
        self.end(request)

    def held_by(self, worker_id: int, role: str) -> list[LiveRequest]:
        """The requests a worker holds: a decode worker's, or a prefill worker's not yet handed to decode."""
        if role == "decode":
            return [r for r in self.requests.values() if r.decode_worker == worker_id]
        return [
            r
            for r in self.requests.values()
            if r.prefill_worker == worker_id and r.decode_worker is None
        ]

    def __len__(self) -> int:
        return len(self.requests)
