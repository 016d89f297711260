"""The node's /metrics, through prometheus_client: vLLM's series names and labels where vLLM has one (so its
dashboards read this node), the project's own (`aegaeon_*`) for switching, KV movement and SLO attainment.

Request series are recorded as requests end; the node's state (requests running and waiting, KV usage,
restarts, switches) is read from the proxy and the workers' telemetry at each scrape. The library writes
the HELP lines and escapes label values (a model may be named with quotes or newlines).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from aegaeon.sched.slo import SLO, request_attainment

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
INTER_TOKEN_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
E2E_BUCKETS = (0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
ABORTED = "abort"  # vLLM's finished_reason for a request that did not end by stop or length
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, proxy, slo: SLO | None = None, link_gbps: float | None = None):
        self.slo = slo or SLO.from_env()
        self.registry = CollectorRegistry()
        registry, by_model = self.registry, ["model_name"]
        self._requests = Counter(
            "aegaeon_requests", "Requests admitted, per model.", by_model, registry=registry
        )
        self._prompt_tokens = Counter(
            "vllm:prompt_tokens",
            "Prompt tokens of the requests admitted.",
            by_model,
            registry=registry,
        )
        self._generation_tokens = Counter(
            "vllm:generation_tokens",
            "Tokens generated and sent to clients.",
            by_model,
            registry=registry,
        )
        self._success = Counter(
            "vllm:request_success",
            "Requests that ended, by finished_reason (stop, length; "
            "abort for a client that left or a request that failed).",
            ["model_name", "finished_reason"],
            registry=registry,
        )
        self._ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Arrival at the API to the first token.",
            by_model,
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self._inter_token = Histogram(
            "vllm:inter_token_latency_seconds",
            "Time between consecutive tokens of a request (one observation per gap).",
            by_model,
            buckets=INTER_TOKEN_BUCKETS,
            registry=registry,
        )
        self._e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Arrival at the API to the last token.",
            by_model,
            buckets=E2E_BUCKETS,
            registry=registry,
        )
        self._lock = threading.Lock()
        self._attainment: dict[str, list[float]] = defaultdict(
            lambda: [0.0, 0]
        )  # model -> [sum, count]
        registry.register(_NodeState(self, proxy, link_gbps))

    def started(self, model: str, prompt_tokens: int) -> None:
        self._requests.labels(model).inc()
        self._prompt_tokens.labels(model).inc(prompt_tokens)

    def finished(
        self, model: str, arrival: float, token_times: list[float], finished_reason: str | None
    ) -> None:
        """A request ended. `arrival` and `token_times` are wall-clock seconds (the workers' stamps)."""
        self._success.labels(model, finished_reason or ABORTED).inc()
        if not token_times:
            return
        self._generation_tokens.labels(model).inc(len(token_times))
        self._ttft.labels(model).observe(max(0.0, token_times[0] - arrival))
        self._e2e.labels(model).observe(max(0.0, token_times[-1] - arrival))
        inter_token = self._inter_token.labels(model)
        for earlier, later in zip(token_times, token_times[1:]):
            inter_token.observe(max(0.0, later - earlier))
        attained = request_attainment(arrival, token_times, len(token_times), self.slo)
        with self._lock:
            entry = self._attainment[model]
            entry[0] += attained
            entry[1] += 1

    def attainment(self) -> dict[str, float]:
        with self._lock:
            return {
                model: total / count for model, (total, count) in self._attainment.items() if count
            }

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _NodeState:
    """A custom collector: what the proxy and the workers' telemetry say at the moment of the scrape."""

    def __init__(self, metrics: Metrics, proxy, link_gbps: float | None):
        self.metrics, self.proxy, self.link_gbps = metrics, proxy, link_gbps

    def collect(self) -> Iterator[Metric]:
        proxy = self.proxy
        running = GaugeMetricFamily(
            "vllm:num_requests_running", "Requests being decoded.", labels=["model_name"]
        )
        waiting = GaugeMetricFamily(
            "vllm:num_requests_waiting",
            "Requests admitted and not yet handed to a "
            "decode instance (queued for prefill or being prefilled).",
            labels=["model_name"],
        )
        for model, (decoding, queued) in sorted(proxy.request_counts().items()):
            running.add_metric([model], decoding)
            waiting.add_metric([model], queued)
        yield running
        yield waiting

        kv = GaugeMetricFamily(
            "vllm:kv_cache_usage_perc",
            "Fraction of a worker's KV region in use (0 to 1), from its latest arena sample.",
            labels=["worker", "role"],
        )
        links = dict(proxy.links)
        for worker_id, (used, free) in sorted(proxy.telemetry.kv_usage().items()):
            role = links[worker_id].role if worker_id in links else "unknown"
            kv.add_metric([str(worker_id), role], used / (used + free) if used + free else 0.0)
        yield kv

        attainment = GaugeMetricFamily(
            "aegaeon_slo_attainment",
            "Mean SLO attainment of the requests ended "
            "so far (aegaeon.sched.slo: TTFT and per-token deadlines).",
            labels=["model_name"],
        )
        for model, value in sorted(self.metrics.attainment().items()):
            attainment.add_metric([model], value)
        yield attainment
        slo = GaugeMetricFamily(
            "aegaeon_slo_seconds",
            "The SLO this node plans decode quotas for and scores attainment against.",
            labels=["kind"],
        )
        slo.add_metric(["ttft"], self.metrics.slo.ttft)
        slo.add_metric(["tpot"], self.metrics.slo.tpot)
        yield slo

        yield CounterMetricFamily(
            "aegaeon_cancelled", "Requests cancelled by their clients.", proxy.cancelled
        )
        yield CounterMetricFamily(
            "aegaeon_worker_restarts", "Workers replaced after they exited.", proxy.restarts
        )
        yield CounterMetricFamily(
            "aegaeon_requests_rerun",
            "Requests re-run after their worker was lost.",
            proxy.table.rerun,
        )
        worker_switches = CounterMetricFamily(
            "aegaeon_worker_switches", "Model switches per worker.", labels=["worker", "role"]
        )
        for link in links.values():
            worker_switches.add_metric([str(link.worker_id), link.role], link.switches)
        yield worker_switches
        yield from proxy.telemetry.metric_families()
        if self.link_gbps:
            yield GaugeMetricFamily(
                "aegaeon_emulated_link_gbps",
                "CPU workers' host<->device transfers are paced to this many GB/s.",
                self.link_gbps,
            )
