"""What the workers measured, as the proxy saw it: a bounded event log and per-model totals.

Workers send `Trace` messages (model switches with their stages, KV swaps,
per-request prefill and decode timings, arena usage samples). /metrics reads
the totals; the end-to-end benchmark copies the events of its run into its
result JSON, from which figures 14-16 are drawn.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from dataclasses import asdict

from prometheus_client.core import CounterMetricFamily, Metric

from aegaeon.ipc.messages import Trace

MAX_EVENTS = 200_000  # a few hours of a busy CPU node; older events are dropped first


class Telemetry:
    def __init__(self, max_events: int = MAX_EVENTS):
        self._lock = threading.Lock()
        self._events: deque[Trace] = deque(maxlen=max_events)
        self.switches: dict[str, int] = defaultdict(int)
        self.switch_seconds: dict[str, float] = defaultdict(float)
        self.swap_bytes: dict[tuple[str, str], int] = defaultdict(
            int
        )  # (model, swap label) -> bytes
        self._kv: dict[
            int, tuple[int, int]
        ] = {}  # worker id -> (KV bytes used, KV bytes free), latest sample

    def record(self, trace: Trace) -> None:
        with self._lock:
            self._events.append(trace)
            if trace.kind == "switch":
                self.switches[trace.model] += 1
                self.switch_seconds[trace.model] += trace.seconds
            elif trace.kind == "swap":
                self.swap_bytes[(trace.model, trace.label)] += trace.nbytes
            elif trace.kind == "memory":
                self._kv[trace.worker_id] = (
                    int(trace.detail.get("kv_used", 0)),
                    int(trace.detail.get("kv_free", 0)),
                )

    def events(self, since: float = 0.0) -> list[dict]:
        """Events that ended at or after wall-clock time `since`, oldest first, as plain dicts."""
        with self._lock:
            return [asdict(e) for e in self._events if e.time >= since]

    def kv_usage(self) -> dict[int, tuple[int, int]]:
        """Per worker, its latest arena sample: (KV bytes used, KV bytes free)."""
        with self._lock:
            return dict(self._kv)

    def metric_families(self) -> list[Metric]:
        switches = CounterMetricFamily(
            "aegaeon_model_switches",
            "Model switches, per model switched to.",
            labels=["model_name"],
        )
        seconds = CounterMetricFamily(
            "aegaeon_model_switch_seconds",
            "Seconds spent switching to each model.",
            labels=["model_name"],
        )
        swapped = CounterMetricFamily(
            "aegaeon_kv_swap_bytes",
            "KV bytes moved, by kind: out/in (preemption "
            "to and from host memory), export/import (prefill to decode handoff).",
            labels=["model_name", "kind"],
        )
        with self._lock:
            for model, n in sorted(self.switches.items()):
                switches.add_metric([model], n)
                seconds.add_metric([model], self.switch_seconds[model])
            for (model, kind), n in sorted(self.swap_bytes.items()):
                swapped.add_metric([model, kind], n)
        return [switches, seconds, swapped]
