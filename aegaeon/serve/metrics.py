"""Prometheus text metrics of a node, per model (no client library needed for this format)."""

from __future__ import annotations

import threading
from collections import defaultdict

from aegaeon.sched.slo import SLO, request_attainment

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TPOT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                self.counts[i] += 1

    def lines(self, name: str, model: str) -> list[str]:
        out = [f'{name}_bucket{{model="{model}",le="{edge}"}} {count}' for edge, count in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{model="{model}",le="+Inf"}} {self.total}')
        out.append(f'{name}_sum{{model="{model}"}} {self.sum}')
        out.append(f'{name}_count{{model="{model}"}} {self.total}')
        return out


class Metrics:
    def __init__(self, slo: SLO | None = None, link_gbps: float | None = None):
        self.slo = slo or SLO.from_env()
        self.link_gbps = link_gbps
        self.lock = threading.Lock()
        self.requests: dict[str, int] = defaultdict(int)
        self.tokens: dict[str, int] = defaultdict(int)
        self.attainment: dict[str, list[float]] = defaultdict(list)
        self.ttft: dict[str, _Histogram] = defaultdict(lambda: _Histogram(TTFT_BUCKETS))
        self.tpot: dict[str, _Histogram] = defaultdict(lambda: _Histogram(TPOT_BUCKETS))

    def started(self, model: str) -> None:
        with self.lock:
            self.requests[model] += 1

    def finished(self, model: str, arrival: float, token_times: list[float]) -> None:
        with self.lock:
            self.tokens[model] += len(token_times)
            if not token_times:
                return
            self.ttft[model].observe(max(0.0, token_times[0] - arrival))
            if len(token_times) > 1:
                self.tpot[model].observe((token_times[-1] - token_times[0]) / (len(token_times) - 1))
            self.attainment[model].append(request_attainment(arrival, token_times, len(token_times), self.slo))

    def render(self, proxy) -> str:
        with self.lock:
            lines = ["# TYPE aegaeon_requests_total counter"]
            lines += [f'aegaeon_requests_total{{model="{m}"}} {n}' for m, n in sorted(self.requests.items())]
            lines.append("# TYPE aegaeon_tokens_total counter")
            lines += [f'aegaeon_tokens_total{{model="{m}"}} {n}' for m, n in sorted(self.tokens.items())]
            lines.append("# TYPE aegaeon_ttft_seconds histogram")
            for m, hist in sorted(self.ttft.items()):
                lines += hist.lines("aegaeon_ttft_seconds", m)
            lines.append("# TYPE aegaeon_tpot_seconds histogram")
            for m, hist in sorted(self.tpot.items()):
                lines += hist.lines("aegaeon_tpot_seconds", m)
            lines.append("# TYPE aegaeon_slo_attainment gauge")
            lines += [f'aegaeon_slo_attainment{{model="{m}"}} {sum(v) / len(v)}'
                      for m, v in sorted(self.attainment.items()) if v]
        if self.link_gbps:
            lines.append("# HELP aegaeon_emulated_link_gbps CPU workers' host<->device transfers are paced to this")
            lines.append("# TYPE aegaeon_emulated_link_gbps gauge")
            lines.append(f"aegaeon_emulated_link_gbps {self.link_gbps}")
        lines.append("# TYPE aegaeon_cancelled_total counter")
        lines.append(f"aegaeon_cancelled_total {proxy.cancelled}")
        lines.append("# TYPE aegaeon_worker_restarts_total counter")
        lines.append(f"aegaeon_worker_restarts_total {proxy.restarts}")
        lines.append("# TYPE aegaeon_requests_rerun_total counter")
        lines.append(f"aegaeon_requests_rerun_total {proxy.table.rerun}")
        lines.append("# TYPE aegaeon_worker_switches_total counter")
        lines += [f'aegaeon_worker_switches_total{{worker="{w.worker_id}",role="{w.role}"}} {w.switches}'
                  for w in proxy.links.values()]
        lines += proxy.telemetry.prometheus_lines()
        return "\n".join(lines) + "\n"
