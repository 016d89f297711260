"""The faults of `aegaeon bench chaos`: workers and a joined node killed with SIGKILL under load, and the
checks that the cluster came back whole; plus the node's memory sampled while they land."""

from __future__ import annotations

import logging
import os
import random
import signal
import threading

from aegaeon.bench.joined_node import start_joined_node, wait_for
from aegaeon.config.serving import NodeConfig
from aegaeon.serve.node import Node

log = logging.getLogger(__name__)

RSS_PERIOD = 0.5  # seconds between samples of the node's memory under faults
# seconds: how soon the head gives a silent node up (the launcher's default is 5)
HEARTBEAT_TIMEOUT = 2.0


def kill_workers(
    node: Node, kills: int, rng: random.Random, stop: threading.Event, killed: list[int]
) -> None:
    for _ in range(kills):
        if stop.wait(rng.uniform(0.2, 0.8)):
            return
        busy = {
            wid for r in node.proxy.requests.values() for wid in (r.prefill_worker, r.decode_worker)
        }
        alive = [wid for wid, proc in enumerate(node.processes) if proc.is_alive()]
        alive = [wid for wid in alive if wid in busy] or alive  # rather one that holds work
        if not alive:
            continue
        victim = rng.choice(alive)
        process = node.processes[victim]
        log.info("chaos: SIGKILL worker %d", victim)
        os.kill(process.pid, signal.SIGKILL)
        killed.append((victim, process))


def kill_node(
    node: Node,
    joiner: NodeConfig | None,
    whole: int,
    joined: list,
    rng: random.Random,
    stop: threading.Event,
    rejoins: list[bool],
) -> None:
    """SIGKILL the joined node under load, wait until the head has counted its workers lost, and start a
    new node that joins in its place (the same cluster id: its start clears the dead run's segments)."""
    if joiner is None or stop.wait(rng.uniform(0.5, 1.5)):
        return
    victim = joined[-1]
    log.info("chaos: SIGKILL the joined node (pid %d)", victim.pid)
    os.kill(victim.pid, signal.SIGKILL)
    victim.join()
    lost = wait_for(
        lambda: node.proxy.health()[2]["remote_workers"] == 0, 3 * HEARTBEAT_TIMEOUT + 10
    )
    joined.append(start_joined_node(joiner))
    rejoins.append(
        lost
        and wait_for(lambda: full_strength(node, whole) or not joined[-1].is_alive(), 120)
        and joined[-1].is_alive()
    )


def all_replaced(node: Node, killed: list[tuple[int, object]]) -> bool:
    """Every killed process has been noticed and its slot holds a replacement (health alone could still
    count a worker killed a moment ago that the supervisor has not polled yet)."""
    return all(node.processes[wid] is not process for wid, process in killed)


def full_strength(node: Node, instances: int) -> bool:
    serving, _, details = node.proxy.health()
    return serving and sum(details["workers"].values()) == instances


def sample_rss(stop: threading.Event, samples: list[float]) -> None:
    while not stop.wait(RSS_PERIOD):
        samples.append(rss_mib())


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0
