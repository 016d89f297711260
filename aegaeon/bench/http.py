"""The HTTP layer's overhead: the same closed-loop load through the OpenAI-compatible API
(streaming, httpx) and through the in-process client, on one node."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from aegaeon.client import Client
from aegaeon.config.serving import ApiConfig, EngineConfig, NodeConfig
from aegaeon.serve.node import Node


@dataclass(frozen=True)
class PathFigures:
    requests_per_s: float
    ttft_p50: float
    ttft_p99: float
    tpot_p50: float
    tpot_p99: float


@dataclass(frozen=True)
class HttpBench:
    requests: int
    concurrency: int
    max_tokens: int
    http: PathFigures
    inprocess: PathFigures

    @property
    def overhead(self) -> float:
        """In-process requests/s over HTTP requests/s (1.0: no overhead)."""
        return self.inprocess.requests_per_s / self.http.requests_per_s


def bench_http(
    models: dict[str, str],
    requests: int = 64,
    concurrency: int = 8,
    max_tokens: int = 32,
    prompt: str = "the model serves many requests from one pool",
) -> HttpBench:
    import socket

    import uvicorn

    from aegaeon.serve.openai_api import create_app
    from aegaeon.serve.server import uvicorn_config

    config = NodeConfig(
        models,
        num_instances=3,
        prefill_instances=1,
        cluster_id="benchhttp",
        engine=EngineConfig(kv_bytes=32 * 2**20),
    )
    with Node(config) as node:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        api = ApiConfig(port=port, max_body_bytes=64 * 2**20)
        server = uvicorn.Server(
            uvicorn_config(
                create_app(node.proxy, {k: Path(v) for k, v in models.items()}, api), api
            )
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        names = list(models)
        url = f"http://127.0.0.1:{port}/v1/completions"
        # The HTTP load runs in its own process, as a real client would: in this one it would fight the
        # server's event loop and the proxy threads for the GIL and measure that instead of the HTTP layer.
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(1) as pool:
            http = pool.apply(_http_load, (url, names, prompt, max_tokens, requests, concurrency))
        client = Client(node.proxy)
        ids = {name: _prompt_ids(path, prompt) for name, path in models.items()}
        inprocess = _closed_loop(
            lambda i: _client_request(client, names[i % len(names)], ids, max_tokens),
            requests,
            concurrency,
        )
        server.should_exit = True
        thread.join(timeout=10)
    return HttpBench(requests, concurrency, max_tokens, http, inprocess)


def _http_load(
    url: str, names: list[str], prompt: str, max_tokens: int, requests: int, concurrency: int
) -> PathFigures:
    import httpx

    # One pooled client, as a real client keeps: a new httpx client per request would load its TLS CA
    # bundle every time (tens of ms) and that would be measured as "HTTP overhead".
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as http:
        return _closed_loop(
            lambda i: _http_request(http, url, names[i % len(names)], prompt, max_tokens),
            requests,
            concurrency,
        )


def _prompt_ids(path: str, prompt: str) -> list[int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(f"{path}/tokenizer.json").encode(prompt).ids


def _http_request(http, url: str, model: str, prompt: str, max_tokens: int) -> list[float]:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    times = [time.perf_counter()]
    with http.stream("POST", url, json=body) as response:
        for line in response.iter_lines():
            if (
                line.startswith("data: ")
                and line != "data: [DONE]"
                and json.loads(line[6:])["choices"][0]["text"]
            ):
                times.append(time.perf_counter())
    return times


def _client_request(
    client: Client, model: str, ids: dict[str, list[int]], max_tokens: int
) -> list[float]:
    times = [time.perf_counter()]
    for _token in client.stream(client.submit(model, ids[model], max_tokens)):
        times.append(time.perf_counter())
    return times


def _closed_loop(request, total: int, concurrency: int) -> PathFigures:
    """`concurrency` threads issue `total` requests back to back; returns throughput and latency percentiles."""
    results: list[list[float]] = []
    counter = iter(range(total))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            times = request(index)
            with lock:
                results.append(times)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    ttft = [r[1] - r[0] for r in results if len(r) > 1]
    tpot = [(r[-1] - r[1]) / (len(r) - 2) for r in results if len(r) > 2]
    return PathFigures(
        total / elapsed,
        percentile(ttft, 50),
        percentile(ttft, 99),
        percentile(tpot, 50),
        percentile(tpot, 99),
    )


def percentile(values: list[float], p: int) -> float:
    """The nearest-rank p-th percentile (nan for no values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]
