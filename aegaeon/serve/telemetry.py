"""What the workers measured, as the proxy saw it: a bounded log of typed events and per-model totals.

Workers send the events of aegaeon.ipc.events (model switches with their stages, KV swaps, per-request
prefill and decode timings, decode quanta, arena samples). /metrics reads the totals; the end-to-end
benchmark copies the events of its run into its result JSON (aegaeon.bench.trace), from which figures
14-16 are drawn.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque

from prometheus_client.core import CounterMetricFamily, Metric

from aegaeon.ipc.events import Event, MemoryEvent, SwapEvent, SwitchEvent

MAX_EVENTS = 200_000  # a few hours of a busy CPU node; older events are dropped first


class Telemetry:
    def __init__(self, max_events: int = MAX_EVENTS):
        self._lock = threading.Lock()
        self._events: deque[Event] = deque(maxlen=max_events)
        self.switches: dict[str, int] = defaultdict(int)
        self.switch_seconds: dict[str, float] = defaultdict(float)
        self.swap_bytes: dict[tuple[str, str], int] = defaultdict(
            int
        )  # (model, direction) -> bytes
        self._kv: dict[
            int, tuple[int, int]
        ] = {}  # worker id -> (KV bytes used, free), latest sample

    def record(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)
            if isinstance(event, SwitchEvent):
                self.switches[event.model] += 1
                self.switch_seconds[event.model] += event.seconds
            elif isinstance(event, SwapEvent):
                self.swap_bytes[(event.model, event.direction)] += event.nbytes
            elif isinstance(event, MemoryEvent):
                self._kv[event.worker_id] = (event.kv_used, event.kv_free)

    def events(self, since: float = 0.0) -> list[Event]:
        """Events that ended at or after wall-clock time `since`, oldest first."""
        with self._lock:
            return [e for e in self._events if e.time >= since]

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
