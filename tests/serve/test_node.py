"""A node on CPU: 4 virtual instances (1 prefill, 3 decode) serving 12 tiny models of two shapes."""

import pytest

from aegaeon.client import Client
from aegaeon.config.serving import EngineConfig, NodeConfig
from aegaeon.engine.local import LocalEngine as Engine
from aegaeon.errors import RequestError
from aegaeon.ipc.shm import SHM_DIR
from aegaeon.models.maker import make_model
from aegaeon.models.sampler import SamplingParams
from aegaeon.serve.node import Node
from tests.models.reference import LARGE_SHAPE, SMALL_SHAPE

PROMPTS = [
    "the model serves many requests",
    "hot and cold models share one pool",
    "one gpu many models",
]
SLAB = 64 * 1024


@pytest.fixture(scope="module")
def twelve_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("market")
    return {
        f"m{i:02d}": str(
            make_model(root / f"m{i:02d}", SMALL_SHAPE if i % 2 else LARGE_SHAPE, seed=i)
        )
        for i in range(12)
    }


def test_token_level_scaling_serves_every_request_with_single_model_greedy_outputs(twelve_models):
    pairs = [(m, p) for m in twelve_models for p in PROMPTS]
    with Engine(twelve_models, EngineConfig(slab_bytes=SLAB, steps_per_turn=100)) as reference:
        outputs = reference.generate(pairs, SamplingParams(max_tokens=12))
    expected = {(o.model, o.prompt_ids): o.token_ids for o in outputs}
    config = NodeConfig(
        twelve_models,
        num_instances=4,
        prefill_instances=1,
        cluster_id="nodetest1",
        engine=EngineConfig(slab_bytes=SLAB, kv_bytes=8 * 2**20),
        host_kv_bytes=4 * 2**20,
        kv_slab_bytes=SLAB,
        threads_per_worker=1,
        max_quota=0.002,
    )  # turns of about one step: every instance holding 2+ models switches
    with Node(config) as node:
        client = Client(node.proxy)
        requests = [(model, list(ids)) for model, ids in expected]
        results = client.complete_many(requests, max_tokens=12)
        decode_links = node.proxy.decode
        served = [link.served for link in decode_links]
        switches = sum(link.switches for link in decode_links)
    assert all(r.error is None for r in results), [r.error for r in results if r.error]
    assert {r.finish_reason for r in results} <= {"length", "stop"}  # as the workers reported them
    for (model, ids), result in zip(requests, results):
        assert result.token_ids == expected[(model, tuple(ids))], model
    assert not list(SHM_DIR.glob("*aegaeon-nodetest1-*"))
    assert sum(served) == len(requests) and min(served) > 0, served
    assert switches > len(twelve_models), "decode workers should switch models between quanta"


def _node(models, cluster, **overrides):
    base = dict(
        num_instances=4,
        prefill_instances=1,
        cluster_id=cluster,
        engine=EngineConfig(slab_bytes=SLAB, kv_bytes=8 * 2**20),
        host_kv_bytes=4 * 2**20,
        kv_slab_bytes=SLAB,
        threads_per_worker=1,
    )
    return Node(NodeConfig(models, **{**base, **overrides}))


def _prompt_ids(models, model, prompt):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(f"{models[model]}/tokenizer.json").encode(prompt).ids


def test_a_full_host_kv_cache_applies_back_pressure_and_loses_nothing(twelve_models):
    models = dict(list(twelve_models.items())[:4])
    with Engine(models, EngineConfig(slab_bytes=SLAB, steps_per_turn=100)) as reference:
        expected = reference.generate(
            [(m, p) for m in models for p in PROMPTS], SamplingParams(max_tokens=20)
        )
    # one 64 KiB slab of host KV for the prefill worker: a few prompts' blocks at a time
    with _node(models, "nodetest2", host_kv_bytes=SLAB) as node:
        client = Client(node.proxy)
        requests = [(m, _prompt_ids(models, m, p)) for m in models for p in PROMPTS] * 3
        results = client.complete_many(requests, max_tokens=20)
    assert [r.token_ids for r in results] == [e.token_ids for e in expected] * 3


def test_a_node_on_an_emulated_link_switches_and_swaps_with_the_same_greedy_tokens(twelve_models):
    models = dict(list(twelve_models.items())[:3])
    with Engine(models, EngineConfig(slab_bytes=SLAB, steps_per_turn=100)) as reference:
        expected = reference.generate(
            [(m, p) for m in models for p in PROMPTS], SamplingParams(max_tokens=10)
        )
    paced = EngineConfig(slab_bytes=SLAB, kv_bytes=8 * 2**20, link_gbps=0.5)
    with _node(models, "nodelink", engine=paced, max_quota=0.002) as node:
        client = Client(node.proxy)
        requests = [(m, _prompt_ids(models, m, p)) for m in models for p in PROMPTS]
        results = client.complete_many(requests, max_tokens=10)
        switches = sum(link.switches for link in node.proxy.decode)
    assert [r.token_ids for r in results] == [e.token_ids for e in expected]
    assert switches >= len(models)


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
    with _node(models, f"nodetest3{role[0]}") as node:
        client = Client(node.proxy, timeout=120)
        states = [client.submit(m, _prompt_ids(models, m, p), max_tokens=60) for m, p in pairs]
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
            client.submit("m00", _prompt_ids(models, "m00", PROMPTS[1]), max_tokens=8)
        )
        assert after.error is None and len(after.token_ids) == 8
    assert not list(SHM_DIR.glob(f"*aegaeon-nodetest3{role[0]}-*"))


def test_seeded_sampling_continues_exactly_across_the_kv_handoff(twelve_models):
    models = dict(list(twelve_models.items())[:2])
    sampling = SamplingParams(max_tokens=10, temperature=0.9, top_p=0.95, seed=11)
    with Engine(models, EngineConfig(slab_bytes=SLAB)) as reference:
        expected = reference.generate([(m, PROMPTS[0]) for m in models], sampling)
    with _node(models, "nodetest4") as node:
        client = Client(node.proxy)
        states = [
            client.submit(
                m,
                _prompt_ids(models, m, PROMPTS[0]),
                max_tokens=10,
                temperature=0.9,
                top_p=0.95,
                seed=11,
            )
            for m in models
        ]
        results = [client.complete(s) for s in states]
    assert [r.token_ids for r in results] == [e.token_ids for e in expected]


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


def test_bad_requests_fail_with_the_reason_and_the_node_keeps_serving(twelve_models):
    models = dict(list(twelve_models.items())[:1])
    with _node(models, "nodetest6", num_instances=2) as node:
        client = Client(node.proxy)
        unknown = client.complete(client.submit("nope", [1, 2, 3], max_tokens=4))
        too_long = client.complete(client.submit("m00", [1] * 5000, max_tokens=4))
        bad_ids = client.complete(client.submit("m00", [10**6], max_tokens=4))
        hot = client.complete(client.submit("m00", [1, 2, 3], max_tokens=4, temperature=-1.0))
        # top_p under float32's least value once left no token to sample and killed the worker (fuzzing found it)
        narrow = client.complete(
            client.submit("m00", [1, 2, 3], max_tokens=4, temperature=1.0, top_p=1e-300)
        )
        fine = client.complete(client.submit("m00", [1, 2, 3], max_tokens=4))
        restarts = node.proxy.restarts
        with pytest.raises(
            RequestError, match="20000 tokens makes a .* over the 16380-byte ring slot"
        ):
            client.submit("m00", [1] * 20000, max_tokens=4)
    assert "model nope is not served here" in unknown.error and unknown.finish_reason == "error"
    assert "the context holds 2048" in too_long.error
    assert "prompt token ids must be integers in" in bad_ids.error
    assert "temperature=-1.0" in hot.error
    assert narrow.error is None and len(narrow.token_ids) == 4
    assert fine.error is None and len(fine.token_ids) == 4
    assert restarts == 0  # no request killed a worker


def test_devices_are_checked_before_anything_starts(twelve_models):
    import torch

    from aegaeon.errors import ConfigError
    from aegaeon.launch import main as launch_main
    from aegaeon.serve.node import check_devices

    with pytest.raises(ConfigError, match="2 devices given for 3 instances"):
        NodeConfig(twelve_models, num_instances=3, devices=("cpu", "cpu")).validate()
    with pytest.raises(ConfigError, match="not a torch device name"):
        check_devices(("gpu0",))
    if not torch.cuda.is_available():
        from click.testing import CliRunner

        with pytest.raises(ConfigError, match="no CUDA GPU; use --device cpu"):
            check_devices(("cuda:0",))
        result = CliRunner().invoke(
            launch_main, ["start", "--devices", "0,1", "--cluster-id", "devtest"]
        )
        assert result.exit_code != 0 and "no CUDA GPU" in result.output
        assert not list(SHM_DIR.glob("*aegaeon-devtest-*"))


def test_a_request_of_the_model_decoding_now_joins_its_batch_instead_of_waiting_for_the_turn(
    twelve_models,
):
    model = "m01"
    models = {model: twelve_models[model]}
    with _node(models, "nodetest9", num_instances=2) as node:
        client = Client(node.proxy)
        long = client.submit(
            model, _prompt_ids(models, model, PROMPTS[0]), max_tokens=600, ignore_eos=True
        )
        stream = client.stream(long)
        (
            next(stream),
            next(stream),
        )  # the second token comes from the decode worker: its turn is running
        short = client.complete(
            client.submit(
                model, _prompt_ids(models, model, PROMPTS[1]), max_tokens=4, ignore_eos=True
            )
        )
        rest = [t for _, t in stream]
    assert short.error is None and len(short.token_ids) == 4 and len(rest) == 598
    # one decode instance, one model: the turn is the long request's until it ends (quota 4 s), so without
    # joining, the short one could only start after the long one finished
    assert short.token_times[-1] < rest[-1], short.token_times[-1] - rest[-1]
