"""A node that joins a head, in a process of its own (as `aegaeon-launch start --join` runs one), for the
benchmarks that kill a whole node or measure the link under load. Its workers are its children, so a
SIGKILL of it takes them with it (they notice a dead parent within a second)."""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace

from aegaeon.config.link import LinkConfig
from aegaeon.config.serving import NodeConfig


def join_config(head: NodeConfig, address: str, cluster_id: str, instances: int = 2) -> NodeConfig:
    """The head's pool and settings for a node of `instances` workers (one prefill) joining at `address`."""
    return replace(
        head,
        num_instances=instances,
        prefill_instances=1,
        cluster_id=cluster_id,
        link_role="join",
        link_address=address,
        node_name=cluster_id,
    )


def head_config(config: NodeConfig, token: str, heartbeat_timeout: float) -> NodeConfig:
    """`config` as a head listening on a free loopback port."""
    return replace(
        config,
        link_role="head",
        link_address="127.0.0.1:0",
        link=LinkConfig(token, heartbeat_timeout=heartbeat_timeout),
        node_name=config.cluster_id,
    )


def start_joined_node(config: NodeConfig) -> mp.Process:
    # not a daemon: a daemonic process may not have the worker processes a node starts
    process = mp.get_context("spawn").Process(target=_run, args=(config,), name=config.node_name)
    process.start()
    return process


def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    """Poll `condition` until it holds (True) or `seconds` pass (False)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@contextmanager
def stopping(processes: list):
    """Stop the joined nodes in `processes` (SIGTERM, then SIGKILL) however the benchmark ends."""
    try:
        yield
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()


def _run(config: NodeConfig) -> None:
    from aegaeon.serve.node import Node

    def stop(*_):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    with Node(config):
        while True:
            time.sleep(1.0)
