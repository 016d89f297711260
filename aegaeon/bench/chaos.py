"""Load with faults: the same requests served twice on one node, undisturbed and then while workers are
killed with SIGKILL (and, with `node_kill`, a whole joined node is killed and another joins in its place);
every request must finish with the tokens of its undisturbed run (nothing lost, no duplicate or missing
token), and the cluster must end at full strength."""

from __future__ import annotations

import logging
import random
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from aegaeon.bench.faults import (
    HEARTBEAT_TIMEOUT,
    RSS_PERIOD,
    all_replaced,
    full_strength,
    kill_node,
    kill_workers,
    rss_mib,
    sample_rss,
)
from aegaeon.bench.joined_node import (
    head_config,
    join_config,
    start_joined_node,
    stopping,
    wait_for,
)
from aegaeon.client import Client, Completion
from aegaeon.config.serving import EngineConfig, NodeConfig
from aegaeon.errors import LinkError
from aegaeon.serve.node import Node

log = logging.getLogger(__name__)

PROMPTS = (
    "one pool serves many models",
    "hot and cold models share the devices",
    "a switch between two steps",
    "the quota comes from the slo",
)


@dataclass(frozen=True)
class ChaosBench:
    requests: int  # sent while faults were injected (the undisturbed phase sends the same, once)
    kills: int
    completed: int
    failed: int
    lost: int  # no answer at all within the client's timeout
    wrong: int  # finished, but with tokens other than the undisturbed run's
    rerun: int
    restarts: int
    hostile: int  # bad requests sent during the faults (each must be refused or fail alone)
    hostile_served: (
        int  # of those, how many the node still answered (refused, failed or served: never hung)
    )
    back_to_full: bool
    node_kills: int  # joined nodes killed with SIGKILL (their workers with them)
    rejoined: bool  # a new node joined after each, and the cluster was whole again
    p50_s: tuple[float, float]  # (undisturbed, with faults)
    p99_s: tuple[float, float]
    rss_mib: tuple[float, float]  # the node process at the start and at the end
    rss_over_time: tuple[float, ...] = ()  # the node process every RSS_PERIOD seconds under faults
    refused: int = 0  # 429s: requests beyond the admission limits (the client retries them)

    def _rss_line(self) -> str:
        samples = self.rss_over_time
        if not samples:
            return "-"
        shown = samples if len(samples) <= 12 else samples[:: -(-len(samples) // 12)]
        return f"{' '.join(f'{v:.0f}' for v in shown)} MiB (every {RSS_PERIOD:g} s; max {max(samples):.0f})"

    def render(self) -> str:
        return "\n".join(
            [
                f"requests sent:        {self.requests} under faults; {self.kills} workers killed with SIGKILL",
                f"completed / failed:   {self.completed} / {self.failed}",
                f"lost / wrong tokens:  {self.lost} / {self.wrong}",
                f"re-run / restarts:    {self.rerun} / {self.restarts}; back to full strength: {self.back_to_full}",
                f"joined nodes killed:  {self.node_kills}; a new node joined each time: {self.rejoined}",
                f"hostile requests:     {self.hostile} sent, {self.hostile_served} answered",
                f"latency p50:          {self.p50_s[0]:.2f} s undisturbed, {self.p50_s[1]:.2f} s with faults",
                f"latency p99:          {self.p99_s[0]:.2f} s undisturbed, {self.p99_s[1]:.2f} s with faults",
                f"refused (429):        {self.refused}",
                f"node RSS:             {self.rss_mib[0]:.0f} MiB at the start, {self.rss_mib[1]:.0f} MiB at the end",
                f"node RSS over time:   {self._rss_line()}",
            ]
        )


def bench_chaos(
    models: dict[str, str],
    requests: int = 48,
    kills: int = 3,
    max_tokens: int = 24,
    instances: int = 5,
    prefill_instances: int = 2,
    seed: int = 0,
    cluster_id: str = "chaos",
    timeout: float = 180.0,
    node_kill: bool = False,
) -> ChaosBench:
    from tokenizers import Tokenizer

    rng = random.Random(seed)
    names = sorted(models)
    ids = {
        (m, p): Tokenizer.from_file(str(Path(models[m]) / "tokenizer.json")).encode(p).ids
        for m in names
        for p in PROMPTS
    }
    work = [
        (names[i % len(names)], PROMPTS[(i // len(names)) % len(PROMPTS)]) for i in range(requests)
    ]
    config = NodeConfig(
        models,
        num_instances=instances,
        prefill_instances=prefill_instances,
        cluster_id=cluster_id,
        engine=EngineConfig(kv_bytes=16 * 2**20),
        host_kv_bytes=32 * 2**20,
    )
    if node_kill:
        config = head_config(config, "chaos-bench-token", HEARTBEAT_TIMEOUT)
    joined: list = []  # the joined node's process, the current one last
    with Node(config) as node, stopping(joined):
        whole = instances
        if node_kill:
            joiner = join_config(config, f"127.0.0.1:{node.link.port}", f"{cluster_id}_join")
            joined.append(start_joined_node(joiner))
            whole += joiner.num_instances
            up = wait_for(lambda: full_strength(node, whole) or not joined[-1].is_alive(), 120)
            if not up or not joined[-1].is_alive():
                raise LinkError(
                    "chaos: the joined node did not join the head within 120 s (see its log)"
                )
        client = Client(node.proxy, timeout=timeout)
        rss_start = rss_mib()
        refused_before = node.proxy.table.refused
        calm, calm_latency = _serve(client, work, ids, max_tokens)
        rerun_before, restarts_before = node.proxy.table.rerun, node.proxy.restarts
        stop = threading.Event()
        killed: list[tuple[int, object]] = []  # (worker id, the process killed)
        killer = threading.Thread(
            target=kill_workers, args=(node, kills, rng, stop, killed), name="chaos-killer"
        )
        killer.start()
        rejoins: list[bool] = []
        node_killer = threading.Thread(
            target=kill_node,
            args=(node, joiner if node_kill else None, whole, joined, rng, stop, rejoins),
            name="chaos-node-killer",
        )
        node_killer.start()
        hostile_sent: list[bool] = []  # one entry per hostile request: answered or not
        hostile = threading.Thread(
            target=_send_hostile, args=(client, names, stop, hostile_sent), name="chaos-hostile"
        )
        hostile.start()
        rss_samples: list[float] = []
        sampler = threading.Thread(target=sample_rss, args=(stop, rss_samples), name="chaos-rss")
        sampler.start()
        stormy, stormy_latency, rounds = [], [], 0
        # keep the node loaded until every kill has landed, then one whole round more, so that the last lost
        # worker is noticed and replaced under load too
        while True:
            last = not killer.is_alive() and not node_killer.is_alive()
            results, latency = _serve(client, work, ids, max_tokens)
            stormy += results
            stormy_latency += latency
            rounds += 1
            if last:
                break
        stop.set()
        killer.join()
        node_killer.join()
        hostile.join()
        sampler.join()
        wait_for(lambda: all_replaced(node, killed) and full_strength(node, whole), 60)
        back = all_replaced(node, killed) and full_strength(node, whole)
        rerun, restarts = (
            node.proxy.table.rerun - rerun_before,
            node.proxy.restarts - restarts_before,
        )
        rss_end = rss_mib()
        refused = node.proxy.table.refused - refused_before
    failed = sum(r is not None and r.error is not None for r in stormy)
    lost = sum(r is None for r in stormy)
    expected = calm * rounds
    wrong = sum(
        r is not None and r.error is None and c is not None and r.token_ids != c.token_ids
        for r, c in zip(stormy, expected)
    )
    completed = sum(r is not None and r.error is None for r in stormy)
    return ChaosBench(
        len(stormy),
        len(killed),
        completed,
        failed,
        lost,
        wrong,
        rerun,
        restarts,
        len(hostile_sent),
        sum(hostile_sent),
        back,
        len(rejoins),
        all(rejoins),
        (_pct(calm_latency, 50), _pct(stormy_latency, 50)),
        (_pct(calm_latency, 99), _pct(stormy_latency, 99)),
        (rss_start, rss_end),
        tuple(rss_samples),
        refused,
    )


def _serve(
    client: Client, work, ids, max_tokens: int
) -> tuple[list[Completion | None], list[float]]:
    began = time.time()
    states = [client.submit(m, ids[(m, p)], max_tokens) for m, p in work]
    results: list[Completion | None] = []
    latencies = []
    for state in states:
        try:
            done = client.complete(state)
        except TimeoutError:
            results.append(None)
            continue
        results.append(done)
        if done.token_times:
            latencies.append(done.token_times[-1] - began)
    return results, latencies


# What a careless or hostile client sends: token ids outside the vocabulary, sampling at the edges of float32,
# more tokens than any context, an unknown model.
HOSTILE = (
    {"prompt_ids": [10**9], "max_tokens": 4},
    {"prompt_ids": [-1, 2], "max_tokens": 4},
    {"prompt_ids": [1, 2], "max_tokens": 4, "temperature": 1.0, "top_p": 1e-300},
    {"prompt_ids": [1, 2], "max_tokens": 4, "temperature": 1e-300},
    {"prompt_ids": [1, 2], "max_tokens": 4, "temperature": 1e30, "seed": 2**64 - 1},
    {"prompt_ids": [1] * 3000, "max_tokens": 10**6},
    {"prompt_ids": [1, 2], "max_tokens": 4, "model": "nope"},
)


def _send_hostile(
    client: Client, names: list[str], stop: threading.Event, answered: list[bool]
) -> None:
    from aegaeon.errors import RequestError

    index = 0
    while not stop.wait(0.05):
        fields = dict(HOSTILE[index % len(HOSTILE)])
        model = fields.pop("model", names[index % len(names)])
        index += 1
        try:
            done = client.complete(client.submit(model, **fields))
        except RequestError:  # refused before it reached a worker
            answered.append(True)
        except TimeoutError:
            answered.append(False)
        else:
            answered.append(done is not None)


def _pct(values: list[float], q: int) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1] if q < 100 else max(values)
    )
