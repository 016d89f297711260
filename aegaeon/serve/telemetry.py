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

from aegaeon.ipc.messages import Trace

MAX_EVENTS = 200_000  # a few hours of a busy CPU node; older events are dropped first


class Telemetry:
    def __init__(self, max_events: int = MAX_EVENTS):
        self._lock = threading.Lock()
        self._events: deque[Trace] = deque(maxlen=max_events)
        self.switches: dict[str, int] = defaultdict(int)
        self.switch_seconds: dict[str, float] = defaultdict(float)
        self.swap_bytes: dict[tuple[str, str], int] = defaultdict(int)  # (model, swap label) -> bytes

    def record(self, trace: Trace) -> None:
        with self._lock:
            self._events.append(trace)
            if trace.kind == "switch":
                self.switches[trace.model] += 1
                self.switch_seconds[trace.model] += trace.seconds
            elif trace.kind == "swap":
                self.swap_bytes[(trace.model, trace.label)] += trace.nbytes

    def events(self, since: float = 0.0) -> list[dict]:
        """Events that ended at or after wall-clock time `since`, oldest first, as plain dicts."""
        with self._lock:
            return [asdict(e) for e in self._events if e.time >= since]

    def prometheus_lines(self) -> list[str]:
        with self._lock:
            lines = ["# TYPE aegaeon_model_switches_total counter"]
            lines += [f'aegaeon_model_switches_total{{model="{m}"}} {n}' for m, n in sorted(self.switches.items())]
            lines.append("# TYPE aegaeon_model_switch_seconds_total counter")
            lines += [f'aegaeon_model_switch_seconds_total{{model="{m}"}} {s}'
                      for m, s in sorted(self.switch_seconds.items())]
            lines.append("# TYPE aegaeon_kv_swap_bytes_total counter")
            lines += [f'aegaeon_kv_swap_bytes_total{{model="{m}",kind="{k}"}} {n}'
                      for (m, k), n in sorted(self.swap_bytes.items())]
        return lines
