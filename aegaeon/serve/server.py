"""Run a node and its HTTP API until the process is told to stop (Ctrl-C or SIGTERM)."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from aegaeon.config.serving import ApiConfig, NodeConfig
from aegaeon.errors import LinkError
from aegaeon.serve.node import Node


def uvicorn_config(app, api: ApiConfig):
    """uvicorn's settings for the API: its connection cap (503 beyond it), keep-alive timeout, and a protocol
    that closes a connection that does not deliver a whole request within `api.header_timeout`."""
    import uvicorn

    from aegaeon.serve.api_guard import deadline_protocol

    return uvicorn.Config(
        app,
        host=api.host,
        port=api.port,
        log_level="warning",
        http=deadline_protocol(api.header_timeout),
        limit_concurrency=api.limit_concurrency,
        timeout_keep_alive=api.keep_alive_seconds,
        lifespan="on",
    )


def serve_node(
    config: NodeConfig,
    api: ApiConfig = ApiConfig(),
    announce: Callable[[str], None] = lambda line: None,
) -> None:
    """Start the node, serve the OpenAI-compatible API on api.host:api.port, and stop everything on exit.

    uvicorn turns SIGINT and SIGTERM into a graceful shutdown; the node then stops its workers and
    unlinks every shared-memory object it made.
    """
    import uvicorn

    from aegaeon.serve.openai_api import create_app

    # uvicorn shuts down gracefully on SIGTERM, then re-raises it with the handler that was there before;
    # make that handler unwind (SystemExit) so `finally` below stops the node and removes its shm objects.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    node = Node(config)
    proxy = node.start()
    try:
        good = {
            name: Path(path) for name, path in config.models.items() if name not in node.unavailable
        }
        for reason in node.unavailable.values():
            announce(f"warning: {reason}")
        link = config.engine.link_gbps
        announce(
            f"serving {sorted(good)} on http://{api.host}:{api.port}/v1 with {config.num_instances} "
            f"instances ({config.prefill_instances} prefill), policy {config.policy}, SLO TTFT "
            f"{config.slo.ttft:g} s / TPOT {config.slo.tpot:g} s"
            + (f", host<->device link emulated at {link:g} GB/s" if link else "")
        )
        if node.link is not None:
            announce(
                f"listening for nodes on {config.link_address.rpartition(':')[0]}:{node.link.port}"
            )
        uvicorn.Server(
            uvicorn_config(create_app(proxy, good, api, config, node.changes), api)
        ).run()
    finally:
        node.stop()


def join_cluster(config: NodeConfig, announce: Callable[[str], None] = lambda line: None) -> None:
    """Start a node that joins the head at `config.link_address`; serve until stopped or the head is lost."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    node = Node(config)
    node.start()
    try:
        announce(
            f"joined the head node at {config.link_address} with {config.num_instances} workers"
        )
        while not node.wait(1.0):
            pass
        raise LinkError(f"lost the head node at {config.link_address}: this node stops")
    finally:
        node.stop()
