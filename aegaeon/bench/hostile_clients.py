"""The hostile clients of `aegaeon bench stall` (aegaeon.bench.stall): big prompts, slow clients that
never finish their request, clients that leave mid-stream, and fuzzed bodies, each kind on a thread of
its own in one process, counting what the server answered."""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
from collections.abc import MutableMapping
from multiprocessing.synchronize import Event

log = logging.getLogger(__name__)


def run_hostile_clients(
    base: str,
    names: list[str],
    condition: str,
    prompt_mib: float,
    slow_clients: int,
    seed: int,
    stop: Event,
    tally: MutableMapping[str, int],
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
