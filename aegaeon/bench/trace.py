"""What the workers measured during a live run (`aegaeon.bench.e2e`), as its result JSON's `trace` and
each request's latency `breakdown`: the proxy's telemetry events, timed from the run's start."""

from __future__ import annotations

from aegaeon.ipc.events import (
    DecodeEvent,
    Event,
    MemoryEvent,
    PrefillEvent,
    QuantumEvent,
    SwapEvent,
    SwitchEvent,
)
from aegaeon.sched.request import RequestState

BREAKDOWN_PARTS = (
    "queue",
    "prefill_switch",
    "prefill_compute",
    "handoff",
    "decode_switch",
    "decode_compute",
    "decode_wait",
)


def add_trace(
    result: dict,
    states: list[RequestState],
    proxy_ids: list[int],
    events: list[Event],
    start: float,
    nodes: dict[str, str],
) -> None:
    """Give each request record of `result` its breakdown, and `result` the run's trace (switches, swaps,
    memory samples and decode quanta; `nodes`: worker id -> the node it ran on). The JSON schema is
    docs/results.md's."""
    by_proxy_id = {proxy_ids[i]: i for i in range(len(states))}
    breakdowns = request_breakdowns(states, proxy_ids, events, start)
    for record, breakdown in zip(result["requests"], breakdowns):
        record["breakdown"] = breakdown

    def common(event: Event) -> dict:
        return {"t": event.time - start, "worker": event.worker_id, "model": event.model}

    result["trace"] = {
        "start": start,
        "switches": [
            {**common(e), "seconds": e.seconds, "bytes": e.bytes_copied, **e.stages}
            for e in events
            if isinstance(e, SwitchEvent)
        ],
        "swaps": [
            {
                **common(e),
                "seconds": e.seconds,
                "bytes": e.nbytes,
                "label": e.direction,
                "request": by_proxy_id.get(e.request_id),
            }
            for e in events
            if isinstance(e, SwapEvent)
        ],
        "memory": [
            {**common(e), **{name: getattr(e, name) for name in MEMORY_FIELDS}}
            for e in events
            if isinstance(e, MemoryEvent)
        ],
        "quanta": [
            {
                **common(e),
                "seconds": e.compute,
                "steps": e.steps,
                "batch": e.batch,
                "context": e.context,
                "wall": e.wall,
            }
            for e in events
            if isinstance(e, QuantumEvent)
        ],
        "nodes": nodes,  # worker id -> the node it ran on ("local": the head)
    }


MEMORY_FIELDS = (
    "total",
    "weight_region",
    "weights",
    "kv_used",
    "kv_free",
    "internal_fragmentation",
    "external_fragmentation",
)


def request_breakdowns(
    states: list[RequestState], proxy_ids: list[int], events: list[Event], start: float
) -> list[dict[str, float] | None]:
    """Where each finished request's latency went (seconds; the parts sum to finish - arrival).

    queue: arrival to its prefill group's start; prefill_switch / prefill_compute: the group's model switch, and
    the rest until the first token (its own and earlier chunks' prefill); handoff: first token until a decode
    worker has its KV (export, routing, waiting for room, import); decode_switch / decode_compute: switches and
    decode steps of the quanta it took part in; decode_wait: the rest (other models' turns, routing, tokens).
    """
    prefill = {e.request_id: e for e in events if isinstance(e, PrefillEvent)}
    decode = {e.request_id: e for e in events if isinstance(e, DecodeEvent)}
    out: list[dict[str, float] | None] = []
    for state, proxy_id in zip(states, proxy_ids):
        p, d = prefill.get(proxy_id), decode.get(proxy_id)
        if not state.finished or p is None or (d is None and state.spec.output_len > 1):
            out.append(None)
            continue
        arrival = start + state.spec.arrival
        first, last = (
            start + state.token_times[0],
            start + state.token_times[state.spec.output_len - 1],
        )
        parts = {"queue": p.group_start - arrival, "prefill_switch": p.switch}
        parts["prefill_compute"] = first - p.group_start - p.switch
        if d is None:  # finished at its first token
            parts.update(handoff=0.0, decode_switch=0.0, decode_compute=0.0, decode_wait=0.0)
        else:
            parts["handoff"] = d.admitted - first
            parts["decode_switch"] = d.switch
            parts["decode_compute"] = d.compute
            parts["decode_wait"] = last - d.admitted - d.switch - d.compute
        out.append(parts)
    return out


def decode_switch_figures(events: list, prefill_instances: int, instances: int) -> dict:
    """The switch time decode turns paid (what prefetch did not hide), p50 and p99, on the head node's decode
    workers (ids `prefill_instances` to `instances` - 1)."""
    import numpy as np

    exposed = [
        e.seconds
        for e in events
        if isinstance(e, SwitchEvent) and prefill_instances <= e.worker_id < instances
    ]
    if not exposed:
        return {"decode_exposed_switch_p50": None, "decode_exposed_switch_p99": None}
    return {
        "decode_exposed_switch_p50": float(np.percentile(exposed, 50)),
        "decode_exposed_switch_p99": float(np.percentile(exposed, 99)),
        "decode_switches": len(exposed),
    }
