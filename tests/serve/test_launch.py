"""`aegaeon.launch start` as a process of its own: it removes its shared memory on SIGTERM, and a start
after a crash removes what the crashed run left."""

import subprocess
import time

import httpx
import pytest

from aegaeon.models.maker import make_model
from tests.models.reference import SMALL_SHAPE
from tests.serve.api_server import free_port, wait_healthy

pytest.importorskip("uvicorn")  # the launched node serves its API with it


def test_launcher_cleans_up_on_sigterm_and_recovers_after_a_crash(tmp_path):
    import signal
    import sys

    from aegaeon.ipc.shm import SHM_DIR

    model = make_model(tmp_path / "solo", SMALL_SHAPE)
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "aegaeon.launch",
        "start",
        "--models",
        str(model),
        "--num-instances",
        "2",
        "--cluster-id",
        "launchtest",
        "--port",
        str(port),
    ]
    crashed = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    wait_healthy(f"http://127.0.0.1:{port}", crashed)
    crashed.kill()  # no cleanup: its shm objects stay behind
    crashed.wait()
    assert list(SHM_DIR.glob("*aegaeon-launchtest-*"))
    port = free_port()
    cmd[-1] = str(port)
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    wait_healthy(
        f"http://127.0.0.1:{port}", proc
    )  # the restart removed the crashed run's objects first
    reply = httpx.post(
        f"http://127.0.0.1:{port}/v1/completions",
        json={"model": "solo", "prompt": "hi", "max_tokens": 3},
        timeout=30,
    )
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] <= 3
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    time.sleep(0.5)
    assert not list(SHM_DIR.glob("*aegaeon-launchtest-*"))
