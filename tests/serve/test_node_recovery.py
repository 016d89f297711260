"""A node's workers dying: one killed under load is replaced and its requests re-run with the same
tokens; all of them exit when the node's process is killed."""

import pytest

from aegaeon.client import Client
from aegaeon.config.serving import EngineConfig
from aegaeon.engine.local import LocalEngine as Engine
from aegaeon.ipc.shm import SHM_DIR
from aegaeon.models.sampler import SamplingParams
from tests.serve.node_helpers import PROMPTS, SLAB, make_node, prompt_ids


def _kill_while_held(node, states, role, timeout=60.0):
    """SIGKILL the worker of `role` holding the first request, once one holds it; returns its id."""
    import os
    import signal
    import time

    field = "decode_worker" if role == "decode" else "prefill_worker"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = [getattr(s, field) for s in states if getattr(s, field) is not None and not s.done]
        if held:
            os.kill(node.processes[held[0]].pid, signal.SIGKILL)
            return held[0]
        time.sleep(0.01)
    raise AssertionError(f"no {role} worker took a request within {timeout} s")


@pytest.mark.parametrize("role", ["decode", "prefill"])
def test_a_killed_worker_is_replaced_and_its_requests_rerun_with_the_same_greedy_tokens(
    twelve_models, role
):
    import time

    models = dict(list(twelve_models.items())[:6])
    pairs = [(m, p) for m in models for p in PROMPTS]
    with Engine(models, EngineConfig(slab_bytes=SLAB, steps_per_turn=100)) as reference:
        expected = [r.token_ids for r in reference.generate(pairs, SamplingParams(max_tokens=60))]
    with make_node(models, f"nodetest3{role[0]}") as node:
        client = Client(node.proxy, timeout=120)
        states = [client.submit(m, prompt_ids(models, m, p), max_tokens=60) for m, p in pairs]
        victim = _kill_while_held(node, states, role)
        results = [client.complete(s) for s in states]
        assert [r.error for r in results] == [None] * len(results)
        assert [r.token_ids for r in results] == expected  # no token lost, none repeated
        assert node.proxy.table.rerun >= 1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            node.proxy.health()[0]
            and node.proxy.restarts >= 1
            and node.proxy.links[victim].ready.is_set()
        ):
            time.sleep(0.1)
        assert node.proxy.restarts >= 1 and node.processes[victim].is_alive()
        assert node.proxy.health()[0]
        after = client.complete(
            client.submit("m00", prompt_ids(models, "m00", PROMPTS[1]), max_tokens=8)
        )
        assert after.error is None and len(after.token_ids) == 8
    assert not list(SHM_DIR.glob(f"*aegaeon-nodetest3{role[0]}-*"))


def test_workers_exit_when_the_node_process_is_killed(twelve_models, tmp_path):
    import subprocess
    import sys
    import time

    script = tmp_path / "node.py"
    script.write_text(
        "import sys, time\n"
        "from aegaeon.engine.executor import EngineConfig\n"
        "from aegaeon.serve.node import Node, NodeConfig\n"
        "if __name__ == '__main__':\n"
        f"    node = Node(NodeConfig({dict(list(twelve_models.items())[:1])!r}, num_instances=2, cluster_id='nodetest5',"
        " engine=EngineConfig(slab_bytes=65536, kv_bytes=2**22), host_kv_bytes=2**22, kv_slab_bytes=65536,"
        " threads_per_worker=1))\n"
        "    node.start()\n"
        "    print(' '.join(str(p.pid) for p in node.processes), flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    workers = [int(pid) for pid in proc.stdout.readline().split()]
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)
    from aegaeon.ipc.shm import remove_stale

    assert remove_stale(
        "nodetest5"
    )  # the crashed run's objects are found (and removed) by the next start
    assert not list(SHM_DIR.glob("*aegaeon-nodetest5-*"))


def _alive(pid: int) -> bool:
    import os

    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    return status != "Z"
