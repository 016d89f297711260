"""Requests as the scheduler sees them: lengths, arrival, progress, token times."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RequestSpec:
    """One line of a workload: what arrives and when (seconds from the start)."""

    request_id: int
    model: str
    arrival: float
    input_len: int
    output_len: int


@dataclass
class RequestState:
    """A request in flight. `token_times` holds each output token's time."""

    spec: RequestSpec
    token_times: list[float] = field(default_factory=list)
    failed: str | None = None

    @property
    def model(self) -> str:
        return self.spec.model

    @property
    def generated(self) -> int:
        return len(self.token_times)

    @property
    def remaining(self) -> int:
        return self.spec.output_len - self.generated

    @property
    def finished(self) -> bool:
        return self.remaining <= 0

    @property
    def context_len(self) -> int:
        return self.spec.input_len + self.generated
