"""Round-trip latency between two processes: the shm ring vs multiprocessing.Pipe.

Both sides send the same encoded `Tokens` message and echo it back; the figure
is the median of many round trips after a warm-up.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
from dataclasses import dataclass

from aegaeon.ipc.messages import Tokens, encode
from aegaeon.ipc.ring import Ring
from aegaeon.ipc.shm import ShmNamespace

_CTX = mp.get_context("spawn")


@dataclass(frozen=True)
class IpcBench:
    round_trips: int
    message_bytes: int
    ring_median_us: float
    ring_p99_us: float
    pipe_median_us: float
    pipe_p99_us: float

    @property
    def ratio(self) -> float:
        return self.ring_median_us / self.pipe_median_us


def _ring_echo(cluster: str, count: int) -> None:
    inbox, outbox = Ring.attach(cluster, "ping", reader=True), Ring.attach(cluster, "pong")
    for _ in range(count):
        outbox.put(inbox.get())


def _pipe_echo(conn, count: int) -> None:
    for _ in range(count):
        conn.send_bytes(conn.recv_bytes())


def bench_ipc(round_trips: int = 20000, warmup: int = 1000) -> IpcBench:
    payload = encode(Tokens(1, tuple(range(8)), tuple(float(i) for i in range(8))))
    total = round_trips + warmup
    cluster = f"benchipc{os.getpid()}"
    with ShmNamespace(cluster) as ns:
        ping, pong = Ring.create(ns, "ping", 64, 1024), Ring.create(ns, "pong", 64, 1024)
        echo = _CTX.Process(target=_ring_echo, args=(cluster, total))
        echo.start()
        ring_times = _measure(lambda: (ping.put(payload), pong.get()), total)[warmup:]
        echo.join()
    parent, child = _CTX.Pipe()
    echo = _CTX.Process(target=_pipe_echo, args=(child, total))
    echo.start()
    pipe_times = _measure(lambda: (parent.send_bytes(payload), parent.recv_bytes()), total)[warmup:]
    echo.join()
    return IpcBench(
        round_trips,
        len(payload),
        _us(statistics.median(ring_times)),
        _us(_p99(ring_times)),
        _us(statistics.median(pipe_times)),
        _us(_p99(pipe_times)),
    )


def _measure(round_trip, count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        round_trip()
        times.append(time.perf_counter() - start)
    return times


def _p99(values: list[float]) -> float:
    return sorted(values)[int(0.99 * (len(values) - 1))]


def _us(seconds: float) -> float:
    return seconds * 1e6
