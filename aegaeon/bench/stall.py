"""Can one client stall the others? Small streaming requests through the HTTP API, measured undisturbed and
while hostile clients work on the same server: 10 MB prompts, slow clients that never finish their request,
clients that disconnect mid-stream, and fuzzed bodies.

The small load and the hostile clients run in processes of their own, as real clients would (in the
server's process they would fight its event loop for the GIL and measure that). The server's body limit is
raised above 10 MB for the run, so that the big prompts are read and tokenised, not refused unread.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import random
import resource
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from aegaeon.bench.http import percentile
from aegaeon.config.serving import ApiConfig, EngineConfig, NodeConfig
from aegaeon.serve.node import Node

log = logging.getLogger(__name__)

CONDITIONS = ("calm", "slow, leaving and fuzzing clients", "10 MB prompts")


@dataclass(frozen=True)
class ConditionFigures:
    condition: str
    small_requests: int
    small_failed: int
    p50_s: float  # end-to-end latency of the small requests
    p99_s: float
    hostile: dict[str, int]  # what the hostile clients got: "<kind> <status>" -> count
    peak_rss_mib: float  # the server process's peak so far


@dataclass(frozen=True)
class StallBench:
    prompt_mib: float
    rows: tuple[ConditionFigures, ...]

    def ratio(self, condition: str) -> float:
        """p99 under `condition` over the calm p99."""
        by = {r.condition: r for r in self.rows}
        return by[condition].p99_s / by["calm"].p99_s

    def render(self) -> str:
        lines = [
            f"{'condition':36s} {'small':>5s} {'failed':>6s} {'p50 s':>6s} {'p99 s':>6s} {'p99/calm':>8s} "
            f"{'peak RSS':>9s}  hostile clients got"
        ]
        for r in self.rows:
            got = ", ".join(f"{k}: {v}" for k, v in sorted(r.hostile.items())) or "-"
            lines.append(
                f"{r.condition:36s} {r.small_requests:5d} {r.small_failed:6d} {r.p50_s:6.2f} {r.p99_s:6.2f} "
                f"{self.ratio(r.condition):7.2f}x {r.peak_rss_mib:6.0f} MiB  {got}"
            )
        return "\n".join(lines)


def bench_stall(
    models: dict[str, str],
    requests: int = 64,
    concurrency: int = 4,
    max_tokens: int = 8,
    prompt_mib: float = 10.0,
    slow_clients: int = 64,
    seed: int = 0,
) -> StallBench:
    import uvicorn

    from aegaeon.serve.openai_api import create_app
    from aegaeon.serve.server import uvicorn_config

    config = NodeConfig(
        models,
        num_instances=3,
        prefill_instances=1,
        cluster_id="benchstall",
        engine=EngineConfig(kv_bytes=32 * 2**20),
    )
    with Node(config) as node:
        port = _free_port()
        api = ApiConfig(port=port, max_body_bytes=int((prompt_mib + 1) * 2**20))
        server = uvicorn.Server(
            uvicorn_config(
                create_app(node.proxy, {k: Path(v) for k, v in models.items()}, api), api
            )
        )
        thread = threading.Thread(target=server.run, name="bench-stall-api", daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        names = sorted(models)
        rows = []
        ctx = mp.get_context("spawn")
        with ctx.Pool(1) as load, ctx.Manager() as manager:
            load.apply(
                _small_load, (base, names, 8, max_tokens, min(concurrency, 8))
            )  # warm every model
            for condition in CONDITIONS:
                stop, tally = ctx.Event(), manager.dict() if condition != "calm" else None
                hostile = None
                if condition != "calm":
                    hostile = ctx.Process(
                        target=_hostile,
                        args=(base, names, condition, prompt_mib, slow_clients, seed, stop, tally),
                        daemon=True,
                    )
                    hostile.start()
                    time.sleep(2.0)  # let the hostile clients get under way
                latencies, failed = load.apply(
                    _small_load, (base, names, requests, max_tokens, concurrency)
                )
                got = dict(tally) if tally is not None else {}
                if hostile is not None:
                    stop.set()
                    hostile.join(timeout=5)
                    if hostile.is_alive():  # blocked on a big prompt the server is still reading
                        hostile.terminate()
                        hostile.join()
                rows.append(
                    ConditionFigures(
                        condition,
                        len(latencies),
                        failed,
                        percentile(latencies, 50),
                        percentile(latencies, 99),
                        got,
                        _peak_rss_mib(),
                    )
                )
                log.info("stall bench: %s done (p99 %.2f s)", condition, rows[-1].p99_s)
        server.should_exit = True
        thread.join(timeout=10)
    return StallBench(prompt_mib, tuple(rows))


def _small_load(
    base: str, names: list[str], requests: int, max_tokens: int, concurrency: int
) -> tuple[list[float], int]:
    import httpx

    latencies: list[float] = []
    failed = 0
    counter = iter(range(requests))
    lock = threading.Lock()

    def worker() -> None:
        nonlocal failed
        with httpx.Client(timeout=120) as http:
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                body = {
                    "model": names[index % len(names)],
                    "prompt": "one pool serves many models",
                    "max_tokens": max_tokens,
                    "temperature": 0,
                    "stream": True,
                    "ignore_eos": True,
                }
                began = time.perf_counter()
                ok = False
                try:
                    with http.stream("POST", f"{base}/v1/completions", json=body) as response:
                        ok = response.status_code == 200
                        for _line in response.iter_lines():
                            pass
                except httpx.HTTPError:
                    ok = False
                with lock:
                    if ok:
                        latencies.append(time.perf_counter() - began)
                    else:
                        failed += 1

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, failed


def _hostile(
    base: str,
    names: list[str],
    condition: str,
    prompt_mib: float,
    slow_clients: int,
    seed: int,
    stop,
    tally,
) -> None:
    """Keep hostile clients going until `stop`; count what each kind got in `tally`."""
    rng = random.Random(seed)
    lock = threading.Lock()

    def count(kind: str, outcome: object) -> None:
        with lock:
            key = f"{kind} {outcome}"
            tally[key] = tally.get(key, 0) + 1

    threads = []
    if condition == "10 MB prompts":
        threads.append(
            threading.Thread(target=_big_prompts, args=(base, names[0], prompt_mib, stop, count))
        )
    else:
        threads.append(
            threading.Thread(target=_slow_clients, args=(base, slow_clients, stop, count))
        )
        threads.append(threading.Thread(target=_leaving_clients, args=(base, names, stop, count)))
        threads.append(
            threading.Thread(target=_fuzzing_client, args=(base, names, rng, stop, count))
        )
    for t in threads:
        t.daemon = True
        t.start()
    for t in threads:
        t.join()


def _big_prompts(base: str, model: str, prompt_mib: float, stop, count) -> None:
    import httpx

    words = int(prompt_mib * 2**20 / 5)
    body = json.dumps({"model": model, "prompt": "many " * words, "max_tokens": 1}).encode()
    with httpx.Client(timeout=300) as http:
        while not stop.is_set():
            count("big prompt", "sent")
            try:
                status = http.post(
                    f"{base}/v1/completions",
                    content=body,
                    headers={"content-type": "application/json"},
                ).status_code
            except httpx.HTTPError as err:
                status = type(err).__name__
            count("big prompt", status)


def _slow_clients(base: str, clients: int, stop, count) -> None:
    """Connections that send half a request and then nothing (slowloris): reopened once the server closes."""
    host, port = base.removeprefix("http://").split(":")
    open_socks: list[socket.socket] = []
    while not stop.is_set():
        while len(open_socks) < clients:
            s = socket.create_connection((host, int(port)), timeout=1)
            s.sendall(
                b'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"model"'
            )
            s.setblocking(False)
            open_socks.append(s)
            count("slow client", "opened")
        for s in list(open_socks):
            try:
                closed = s.recv(4096) == b""
            except BlockingIOError:
                continue
            except OSError:
                closed = True
            if closed:
                count("slow client", "closed by the server")
                open_socks.remove(s)
                s.close()
        stop.wait(0.2)
    for s in open_socks:
        s.close()


def _leaving_clients(base: str, names: list[str], stop, count) -> None:
    """Streaming requests for many tokens whose client reads the first chunk and leaves."""
    import httpx

    index = 0
    while not stop.is_set():
        body = {
            "model": names[index % len(names)],
            "prompt": "a long answer",
            "max_tokens": 200,
            "ignore_eos": True,
            "stream": True,
        }
        index += 1
        try:
            with (
                httpx.Client(timeout=60) as http,
                http.stream("POST", f"{base}/v1/completions", json=body) as response,
            ):
                for _line in response.iter_lines():
                    break
                count("leaving client", response.status_code)
        except httpx.HTTPError as err:
            count("leaving client", type(err).__name__)


def _fuzzing_client(base: str, names: list[str], rng: random.Random, stop, count) -> None:
    import httpx

    values = [
        None,
        -1,
        0,
        1e-300,
        1e300,
        "16",
        True,
        "yes",
        [],
        {},
        "\ud800",
        2**70,
        float("nan"),
        "x" * 10_000,
    ]
    fields = [
        "model",
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "seed",
        "stream",
        "n",
        "stop",
        "logprobs",
    ]
    with httpx.Client(timeout=60) as http:
        while not stop.is_set():
            body = {"model": rng.choice(names), "prompt": "fuzz", "max_tokens": 4}
            for _ in range(rng.randint(1, 3)):
                body[rng.choice(fields)] = rng.choice(values)
            raw = json.dumps(
                body, allow_nan=True
            ).encode()  # ascii: a lone surrogate goes as its \\u escape
            try:
                status = http.post(
                    f"{base}/v1/completions",
                    content=raw,
                    headers={"content-type": "application/json"},
                ).status_code
            except httpx.HTTPError as err:
                status = type(err).__name__
            if isinstance(status, int) and status >= 500:
                log.warning("fuzzed body got a %d: %r", status, raw[:300])
            count("fuzzed body", f"{status // 100}xx" if isinstance(status, int) else status)
            stop.wait(0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
