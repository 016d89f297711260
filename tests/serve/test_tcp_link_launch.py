"""Nodes launched as processes (`aegaeon.launch start --head/--join`) over the TCP link: two on
loopback serve HTTP, refuse a wrong token and survive losing the joined node; two in network namespaces of
their own cross a real interface."""

import pytest

from aegaeon.ipc.shm import SHM_DIR
from aegaeon.models.maker import make_model
from tests.models.reference import SMALL_SHAPE
from tests.serve.api_server import free_port, wait_healthy

TOKEN = "loopback-test-token"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(make_model(tmp_path_factory.mktemp("pool") / "m1", SMALL_SHAPE, seed=1))


def _launch(*args):
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-m", "aegaeon.launch", "start", *args], stderr=subprocess.PIPE, text=True
    )


def test_two_launches_on_loopback_serve_http_and_survive_losing_the_joined_node(model, tmp_path):
    import signal
    import time

    import httpx

    http_port, link_port = free_port(), free_port()
    head = _launch(
        "--models",
        f"solo={model}",
        "--num-instances",
        "1",
        "--prefill-instances",
        "1",
        "--cluster-id",
        "lhead",
        "--port",
        str(http_port),
        "--head",
        "--link-listen",
        f"127.0.0.1:{link_port}",
        "--token",
        TOKEN,
        "--heartbeat-timeout",
        "2",
    )
    joined = wrong = None
    try:
        url = f"http://127.0.0.1:{http_port}"
        wait_healthy(url, head, statuses=(503,))  # up, and honest: no decode worker yet
        assert "no decode worker" in httpx.get(f"{url}/health").json()["reason"]
        wrong = _launch(
            "--models",
            f"solo={model}",
            "--num-instances",
            "1",
            "--prefill-instances",
            "0",
            "--cluster-id",
            "lwrong",
            "--join",
            f"127.0.0.1:{link_port}",
            "--token",
            "a-wrong-token",
        )
        assert wrong.wait(timeout=90) != 0
        assert "refused this node: wrong cluster token" in wrong.stderr.read()
        joined = _launch(
            "--models",
            f"solo={model}",
            "--num-instances",
            "1",
            "--prefill-instances",
            "0",
            "--cluster-id",
            "ljoin",
            "--join",
            f"127.0.0.1:{link_port}",
            "--token",
            TOKEN,
            "--heartbeat-timeout",
            "2",
        )
        deadline = time.monotonic() + 90
        while httpx.get(f"{url}/health").json()["workers"]["decode"] < 1:
            assert time.monotonic() < deadline and joined.poll() is None, "the node did not join"
            time.sleep(0.2)
        reply = httpx.post(
            f"{url}/v1/completions",
            json={"model": "solo", "prompt": "hi", "max_tokens": 4},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] == 4
        joined.kill()  # the joined node vanishes without a word: the head notices by heartbeat
        joined.wait()
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/health").json()["workers"]["decode"] > 0:
            assert time.monotonic() < deadline, "the head did not notice the lost node"
            time.sleep(0.2)
        reply = httpx.post(
            f"{url}/v1/completions",
            json={"model": "solo", "prompt": "hi", "max_tokens": 4},
            timeout=60,
        )
        assert reply.status_code == 503 and "no decode worker" in reply.json()["error"]["message"]
        head.send_signal(signal.SIGTERM)
        assert head.wait(timeout=60) == 0
    finally:
        for proc in (head, joined, wrong):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        from aegaeon.ipc.shm import remove_stale

        remove_stale("ljoin")  # killed with -9 on purpose: what `aegaeon-launch cleanup` is for
    time.sleep(0.5)
    for cluster in ("lhead", "lwrong", "ljoin"):
        assert not list(SHM_DIR.glob(f"*aegaeon-{cluster}-*")), cluster


def _netns_available() -> bool:
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"aegprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    if made:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return made


@pytest.mark.skipif(not _netns_available(), reason="needs root and `ip netns` (network namespaces)")
def test_two_nodes_in_separate_network_namespaces(model):
    """Each node in a network namespace of its own, joined by a veth pair: the link crosses a real interface."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pid = os.getpid()
    head_ns, join_ns = f"aeghead{pid}", f"aegjoin{pid}"
    head_ip, join_ip = "10.231.0.1", "10.231.0.2"
    setup = [
        ["ip", "netns", "add", head_ns],
        ["ip", "netns", "add", join_ns],
        [
            "ip",
            "link",
            "add",
            f"aegh{pid % 10000}",
            "netns",
            head_ns,
            "type",
            "veth",
            "peer",
            "name",
            f"aegj{pid % 10000}",
            "netns",
            join_ns,
        ],
        ["ip", "-n", head_ns, "addr", "add", f"{head_ip}/24", "dev", f"aegh{pid % 10000}"],
        ["ip", "-n", join_ns, "addr", "add", f"{join_ip}/24", "dev", f"aegj{pid % 10000}"],
        ["ip", "-n", head_ns, "link", "set", f"aegh{pid % 10000}", "up"],
        ["ip", "-n", join_ns, "link", "set", f"aegj{pid % 10000}", "up"],
        ["ip", "-n", head_ns, "link", "set", "lo", "up"],
        ["ip", "-n", join_ns, "link", "set", "lo", "up"],
    ]
    procs = []
    try:
        for cmd in setup:
            subprocess.run(cmd, check=True, capture_output=True)
        launch = [
            sys.executable,
            "-m",
            "aegaeon.launch",
            "start",
            "--models",
            f"solo={model}",
            "--num-instances",
            "1",
            "--token",
            TOKEN,
        ]
        head = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                head_ns,
                *launch,
                "--prefill-instances",
                "1",
                "--cluster-id",
                "nshead",
                "--host",
                head_ip,
                "--port",
                "8000",
                "--head",
                "--link-listen",
                f"{head_ip}:7070",
            ],
            stderr=subprocess.DEVNULL,
        )
        procs.append(head)
        joined = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                join_ns,
                *launch,
                "--prefill-instances",
                "0",
                "--cluster-id",
                "nsjoin",
                "--join",
                f"{head_ip}:7070",
            ],
            stderr=subprocess.DEVNULL,
        )
        procs.append(joined)
        ask = (
            "import json, sys, time, urllib.request\n"
            "deadline = time.time() + 120\n"
            "while True:\n"
            "    try:\n"
            f"        health = json.load(urllib.request.urlopen('http://{head_ip}:8000/health', timeout=2))\n"
            "        if health['workers']['decode'] and health['remote_workers']: break\n"
            "    except OSError: pass\n"
            "    if time.time() > deadline: sys.exit('the nodes did not come up')\n"
            "    time.sleep(0.3)\n"
            f"request = urllib.request.Request('http://{head_ip}:8000/v1/completions', method='POST',\n"
            "    data=json.dumps({'model': 'solo', 'prompt': 'hi', 'max_tokens': 4}).encode(),\n"
            "    headers={'Content-Type': 'application/json'})\n"
            "print(json.load(urllib.request.urlopen(request, timeout=60))['usage']['completion_tokens'])\n"
        )
        answer = subprocess.run(
            ["ip", "netns", "exec", head_ns, sys.executable, "-c", ask],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert answer.returncode == 0 and answer.stdout.strip() == "4", answer.stderr
        for proc in (joined, head):
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        subprocess.run(["ip", "netns", "del", head_ns], capture_output=True)
        subprocess.run(["ip", "netns", "del", join_ns], capture_output=True)
    time.sleep(0.5)
    assert not list(SHM_DIR.glob("*aegaeon-nshead-*")) and not list(
        SHM_DIR.glob("*aegaeon-nsjoin-*")
    )
