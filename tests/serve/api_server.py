"""Real HTTP servers for tests with real clients: a free port, waiting for a launched node's /health,
and the OpenAI API of an in-process node of two tiny models (the `server` fixture of conftest.py)."""

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aegaeon.config.serving import ApiConfig, EngineConfig, NodeConfig
from aegaeon.models.maker import make_model
from aegaeon.serve.node import Node
from tests.models.reference import LARGE_SHAPE, SMALL_SHAPE

KEY = "test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc, timeout: float = 90, statuses: tuple[int, ...] = (200,)) -> None:
    """Until /health answers with one of `statuses` (a head without decode workers answers 503)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the launcher exited early"
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code in statuses:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the node did not come up")


@contextmanager
def api_server(root: Path) -> Iterator[tuple[str, object, NodeConfig]]:
    """Models "small" and "large" on 3 workers behind the API (key KEY, 1 s header timeout); yields
    (base url, the node's proxy, its config)."""
    # imported here: the modules that use this skip themselves when uvicorn is missing
    import uvicorn

    from aegaeon.serve.openai_api import create_app
    from aegaeon.serve.server import uvicorn_config

    models = {
        "small": make_model(root / "small", SMALL_SHAPE, seed=1),
        "large": make_model(root / "large", LARGE_SHAPE, seed=2),
    }
    config = NodeConfig(
        {k: str(v) for k, v in models.items()},
        num_instances=3,
        cluster_id="apitest",
        engine=EngineConfig(slab_bytes=65536, kv_bytes=8 * 2**20),
        host_kv_bytes=4 * 2**20,
        kv_slab_bytes=65536,
        threads_per_worker=1,
    )
    node = Node(config)
    proxy = node.start()
    port = free_port()
    api = ApiConfig(port=port, api_key=KEY, header_timeout=1.0)
    srv = uvicorn.Server(uvicorn_config(create_app(proxy, models, api, config), api))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", proxy, config
    srv.should_exit = True
    thread.join(timeout=10)
    node.stop()


def openai_client(server):
    """An `openai` client of the `server` fixture's API, without retries."""
    import openai

    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key=KEY, max_retries=0)
