"""Can one client stall the others? Small streaming requests through the HTTP API, measured undisturbed and
while hostile clients work on the same server: 10 MB prompts, slow clients that never finish their request,
clients that disconnect mid-stream, and fuzzed bodies.

The small load and the hostile clients run in processes of their own, as real clients would (in the
server's process they would fight its event loop for the GIL and measure that). The server's body limit is
raised above 10 MB for the run, so that the big prompts are read and tokenised, not refused unread.
The hostile clients themselves are in aegaeon.bench.hostile_clients.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import resource
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from aegaeon.bench.hostile_clients import run_hostile_clients
from aegaeon.bench.http import percentile
from aegaeon.bench.joined_node import (
    head_config,
    join_config,
    start_joined_node,
    stopping,
    wait_for,
)
from aegaeon.config.serving import ApiConfig, EngineConfig, NodeConfig
from aegaeon.errors import LinkError
from aegaeon.serve.node import Node

log = logging.getLogger(__name__)

LINK_TIMEOUT = 5.0  # the launcher's default heartbeat timeout: what a real head would give up at
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
    # with a joined node: the longest silence the head heard from it, and whether it was still joined after
    link_silence_s: float | None = None
    still_joined: bool | None = None


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
            f"{'peak RSS':>9s}{'  link silence':14s}  hostile clients got"
        ]
        for r in self.rows:
            got = ", ".join(f"{k}: {v}" for k, v in sorted(r.hostile.items())) or "-"
            link = (
                ""
                if r.link_silence_s is None
                else f"  {r.link_silence_s:5.2f} s {'joined' if r.still_joined else 'LEFT'}"
            )
            lines.append(
                f"{r.condition:36s} {r.small_requests:5d} {r.small_failed:6d} {r.p50_s:6.2f} {r.p99_s:6.2f} "
                f"{self.ratio(r.condition):7.2f}x {r.peak_rss_mib:6.0f} MiB{link:14s}  {got}"
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
    join_node: bool = False,
) -> StallBench:
    """`join_node`: the server is a head with a node joined over the TCP link (its own process), and each
    condition reports how long the link went silent: the 6 MB prompt that once made a joined node leave."""
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
    if join_node:
        config = head_config(config, "stall-bench-token", LINK_TIMEOUT)
    joined: list = []
    with Node(config) as node, stopping(joined):
        if join_node:
            joiner = join_config(config, f"127.0.0.1:{node.link.port}", "benchstall_join")
            joined.append(start_joined_node(joiner))
            if not wait_for(
                lambda: _remote(node) == joiner.num_instances or not joined[0].is_alive(), 120
            ):
                raise LinkError("stall: the joined node did not join the head within 120 s")
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
                if join_node:
                    node.link.take_longest_silence()
                stop, tally = ctx.Event(), manager.dict() if condition != "calm" else None
                hostile = None
                if condition != "calm":
                    hostile = ctx.Process(
                        target=run_hostile_clients,
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
                        node.link.take_longest_silence() if join_node else None,
                        _remote(node) == joiner.num_instances if join_node else None,
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


def _remote(node: Node) -> int:
    return node.proxy.health()[2]["remote_workers"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
