"""Run a node and its HTTP API until the process is told to stop (Ctrl-C or SIGTERM)."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from aegaeon.ipc.tcp import LinkError
from aegaeon.serve.node import Node, NodeConfig


def serve_node(config: NodeConfig, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
               announce: Callable[[str], None] = lambda line: None) -> None:
    """Start the node, serve the OpenAI-compatible API on host:port, and stop everything on exit.

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
        good = {name: Path(path) for name, path in config.models.items() if name not in node.unavailable}
        for reason in node.unavailable.values():
            announce(f"warning: {reason}")
        announce(f"serving {sorted(good)} on http://{host}:{port}/v1")
        if node.link is not None:
            announce(f"listening for nodes on {config.link_address.rpartition(':')[0]}:{node.link.port}")
        uvicorn.run(create_app(proxy, good, api_key), host=host, port=port, log_level="warning")
    finally:
        node.stop()


def join_cluster(config: NodeConfig, announce: Callable[[str], None] = lambda line: None) -> None:
    """Start a node that joins the head at `config.link_address`; serve until stopped or the head is lost."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    node = Node(config)
    node.start()
    try:
        announce(f"joined the head node at {config.link_address} with {config.num_instances} workers")
        while not node.wait(1.0):
            pass
        raise LinkError(f"lost the head node at {config.link_address}: this node stops")
    finally:
        node.stop()
