"""A node whose instances are tensor-parallel groups (--tp 2 on CPU, gloo): the same greedy tokens as one
device per instance, through model switches and the prefill -> decode KV handoff; a rank that dies loses
its instance, which the node replaces and whose requests it re-runs."""

import os
import signal
import time

import pytest

from aegaeon.cli_node import node_settings
from aegaeon.client import Client
from aegaeon.config.pool import build
from aegaeon.config.serving import EngineConfig, NodeConfig
from aegaeon.engine.local import LocalEngine
from aegaeon.errors import ConfigError
from aegaeon.models.maker import config_for, make_model
from aegaeon.models.sampler import SamplingParams
from aegaeon.serve.node import Node

SLAB = 64 * 1024
PROMPTS = [[5, 9, 2, 7, 1], [3, 3, 8, 4, 4, 6, 2, 9, 9, 1, 1, 2, 3, 7, 7, 7, 8, 1, 2], [11, 12]]


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    root = tmp_path_factory.mktemp("tpmarket")
    shapes = [
        config_for("llama", heads=4, kv_heads=2, intermediate=128, vocab=400),
        config_for("qwen2", layers=3, hidden=96, heads=8, kv_heads=4, intermediate=192, vocab=301),
        config_for("llama", heads=4, kv_heads=4, intermediate=96, vocab=512),
    ]
    return {f"t{i}": str(make_model(root / f"t{i}", s, seed=i)) for i, s in enumerate(shapes)}


def _node(models, cluster, tp, **overrides):
    base = dict(
        num_instances=2,
        prefill_instances=1,
        cluster_id=cluster,
        engine=EngineConfig(slab_bytes=SLAB, kv_bytes=4 * 2**20, tp_size=tp),
        host_kv_bytes=4 * 2**20,
        kv_slab_bytes=SLAB,
        threads_per_worker=1,
        max_quota=0.002,  # turns of a step or two: the decode group switches between its models
    )
    return Node(NodeConfig(models, **{**base, **overrides}))


def _expected(models, max_tokens):
    with LocalEngine(models, EngineConfig(slab_bytes=SLAB, steps_per_turn=100)) as reference:
        sampling = SamplingParams(max_tokens=max_tokens)
        ids = [reference.submit_ids(m, p, sampling) for m in models for p in PROMPTS]
        reference.run()
        return [reference.result(i).token_ids for i in ids]


def test_a_tp_2_node_serves_the_tp_1_greedy_tokens_through_switches_and_handoffs(market):
    expected = _expected(market, 10)
    with _node(market, f"tpnode{os.getpid()}", 2) as node:
        results = Client(node.proxy).complete_many(
            [(m, p) for m in market for p in PROMPTS], max_tokens=10
        )
        switches = sum(link.switches for link in node.proxy.decode)
    assert all(r.error is None for r in results), [r.error for r in results if r.error]
    assert [r.token_ids for r in results] == expected
    assert switches >= len(market)


def test_a_lost_rank_loses_its_instance_which_is_replaced_and_its_requests_rerun(market):
    models = dict(list(market.items())[:2])
    expected = _expected(models, 40)
    with _node(models, f"tplost{os.getpid()}", 2) as node:
        client = Client(node.proxy, timeout=120)
        states = [client.submit(m, p, max_tokens=40) for m in models for p in PROMPTS]
        deadline = time.monotonic() + 60
        while not any(s.decode_worker is not None and not s.done for s in states):
            assert time.monotonic() < deadline, "no request reached the decode group"
            time.sleep(0.01)
        leader = node.processes[1].pid
        followers = _children(leader)
        assert len(followers) == 1, followers  # rank 1 of the decode group
        os.kill(followers[0], signal.SIGKILL)
        results = [client.complete(s) for s in states]
        assert node.proxy.table.rerun >= 1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not node.proxy.links[1].ready.is_set():
            time.sleep(0.1)
        assert node.processes[1].pid != leader and node.processes[1].is_alive()
    assert [r.error for r in results] == [None] * len(results)
    assert [r.token_ids for r in results] == expected  # no token lost, none repeated


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def test_tp_settings_are_checked_where_they_are_given(market, tmp_path):
    flags, _ = node_settings({"tp": 2, "num_instances": 3, "models_spec": f"a={market['t0']}"})
    assert flags.engine.tp_size == 2 and flags.instance_devices(2) == ("cpu", "cpu")
    node, _ = build({"models": [f"a={market['t0']}"], "tp": 2, "devices": ["cuda:0", "cuda:1"] * 2})
    assert node.num_instances == 2 and node.instance_devices(1) == ("cuda:0", "cuda:1")
    with pytest.raises(ConfigError, match="3 devices do not split into instances of --tp 2"):
        build({"models": [f"a={market['t0']}"], "tp": 2, "devices": ["cuda:0"] * 3})
    with pytest.raises(ConfigError, match="tp 0 must be a whole number"):
        build({"models": [f"a={market['t0']}"], "tp": 0})
    # a model whose heads do not divide is unavailable, named with the degrees that would serve it
    odd = make_model(tmp_path / "odd", config_for("llama", heads=3, kv_heads=3, hidden=48))
    with _node({"odd": str(odd), "t0": market["t0"]}, f"tpodd{os.getpid()}", 2) as node:
        assert "degree 2: use --tp among [1]" in node.unavailable["odd"]
        assert node.models == ["t0"]


def test_the_tp_bench_times_every_degree_and_only_groups_spend_time_in_collectives(tmp_path):
    from aegaeon.bench.tp import bench_models, bench_tp

    shape = config_for("llama", heads=4, kv_heads=2, intermediate=128, vocab=400)
    models = bench_models(tmp_path, shape)
    points = bench_tp(models, (1, 2), batch=2, steps=3, switches=2)
    assert [p.tp for p in points] == [1, 2]
    assert all(len(p.decode_step_s) == 3 and len(p.switch_s) == 2 for p in points)
    assert points[0].comm_share == 0 and 0 < points[1].comm_share < 1
    with pytest.raises(ConfigError, match="use --tp among"):
        bench_tp(models, (1, 3))


def test_ranks_that_disagree_on_a_call_lose_the_instance_and_gpu_ranks_need_devices(market):
    from aegaeon.parallel.group import GroupLost
    from aegaeon.parallel.instance import LeaderExecutor

    class OneOfTwo:  # a group where the follower failed the call rank 0 made
        size = 2

        def broadcast_op(self, op):
            pass

        def succeeded(self, ok):
            return 1

    class Executor:
        def remove(self, request_id):
            pass

    leader = LeaderExecutor(Executor(), OneOfTwo(), [], {})
    with pytest.raises(GroupLost, match="remove: 1 of 2 tensor-parallel ranks made it"):
        leader.remove(7)
    with pytest.raises(ConfigError, match="--tp 2 on GPUs needs --devices"):
        NodeConfig(market, device="cuda", engine=EngineConfig(device="cuda", tp_size=2)).validate()
