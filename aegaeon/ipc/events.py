"""Telemetry events: what a worker measured, one frozen dataclass per kind, sent to the proxy as messages.

The proxy keeps them (aegaeon.serve.telemetry) for /metrics; the end-to-end benchmark copies a run's into
its result JSON (aegaeon.bench.trace; schema in docs/results.md), from which figures 14-16 are drawn.
Every event names its worker, the model it concerns and the wall-clock time (time.time()) it ended.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SwitchEvent:
    """A model switch (aegaeon.engine.runner.SwitchRecord)."""

    worker_id: int
    model: str  # the model switched to
    time: float
    seconds: float
    bytes_copied: int
    # where the time went: waiting for the host cache, moving KV out of the weight region, the weight
    # copy, re-binding the parameter views (names as SwitchRecord.stages)
    stages: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SwapEvent:
    """One KV copy between the arena and host memory."""

    worker_id: int
    model: str
    time: float
    seconds: float
    nbytes: int
    request_id: int
    direction: str  # out / in (preemption), export / import (the prefill -> decode handoff)


@dataclass(frozen=True)
class PrefillEvent:
    """A request's prefill on a prefill worker."""

    worker_id: int
    model: str
    time: float
    request_id: int
    compute: float  # seconds of its prefill step
    group_start: float  # wall clock when its group began (switch included)
    switch: float  # seconds of its group's model switch


@dataclass(frozen=True)
class DecodeEvent:
    """A request left a decode worker (finished, failed or cancelled)."""

    worker_id: int
    model: str
    time: float
    request_id: int
    admitted: float  # wall clock when the worker had its KV
    compute: float  # seconds of the decode steps it took part in
    switch: float  # seconds of the switches of its turns


@dataclass(frozen=True)
class QuantumEvent:
    """One decode turn's steps of one model."""

    worker_id: int
    model: str
    time: float
    compute: float  # seconds in decode steps
    steps: int
    batch: float  # mean sequences per step
    context: float  # mean context tokens per step
    wall: float  # seconds from the turn's first step to its last


@dataclass(frozen=True)
class MemoryEvent:
    """A sample of the worker's arena (aegaeon.arena.ArenaUsage), in bytes."""

    worker_id: int
    model: str  # the model bound then ("" before the first)
    time: float
    total: int
    weight_region: int
    weights: int
    kv_used: int
    kv_free: int
    internal_fragmentation: int
    external_fragmentation: int


EVENT_TYPES: tuple[type, ...] = (
    SwitchEvent,
    SwapEvent,
    PrefillEvent,
    DecodeEvent,
    QuantumEvent,
    MemoryEvent,
)
Event = SwitchEvent | SwapEvent | PrefillEvent | DecodeEvent | QuantumEvent | MemoryEvent
