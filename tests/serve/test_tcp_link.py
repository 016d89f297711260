"""Two nodes on loopback over the TCP link: requests and KV blocks cross nodes; a wrong token is refused.
The same with launched processes is in test_tcp_link_launch.py."""

import pytest

from aegaeon.client import Client
from aegaeon.config.link import LinkConfig
from aegaeon.config.serving import EngineConfig, NodeConfig
from aegaeon.engine.local import LocalEngine as Engine
from aegaeon.errors import LinkError
from aegaeon.ipc.messages import Hello
from aegaeon.ipc.shm import SHM_DIR
from aegaeon.ipc.tcp import JoinLink
from aegaeon.models.maker import make_model
from aegaeon.models.sampler import SamplingParams
from aegaeon.serve.node import Node
from tests.models.reference import LARGE_SHAPE, SMALL_SHAPE

TOKEN = "loopback-test-token"
PROMPTS = ["requests cross nodes", "and so do their kv blocks"]
SLAB = 64 * 1024


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    return {
        f"m{i}": str(make_model(root / f"m{i}", SMALL_SHAPE if i % 2 else LARGE_SHAPE, seed=i))
        for i in range(3)
    }


@pytest.fixture(scope="module")
def expected(models):
    with Engine(models, EngineConfig(slab_bytes=SLAB, steps_per_turn=100)) as reference:
        results = reference.generate(
            [(m, p) for m in models for p in PROMPTS], SamplingParams(max_tokens=8)
        )
        return {(r.model, r.prompt_ids): r.token_ids for r in results}


def node_config(models, cluster, role, address, instances, prefill, token=TOKEN, **extra):
    return NodeConfig(
        models,
        instances,
        prefill,
        cluster_id=cluster,
        engine=EngineConfig(slab_bytes=SLAB, kv_bytes=8 * 2**20),
        host_kv_bytes=4 * 2**20,
        kv_slab_bytes=SLAB,
        threads_per_worker=1,
        link_role=role,
        link_address=address,
        link=LinkConfig(token, **extra),
        node_name=cluster,
        start_timeout=60,
    )


def serve_across(models, expected, head_prefill: int, join_prefill: int):
    head = Node(node_config(models, "tcphead", "head", "127.0.0.1:0", 1, head_prefill))
    head.start()
    try:
        address = f"127.0.0.1:{head.link.port}"
        with Node(node_config(models, "tcpjoin", "join", address, 1, join_prefill)):
            client = Client(head.proxy, timeout=60)
            requests = [(model, list(ids)) for model, ids in expected]
            results = client.complete_many(requests, max_tokens=8)
            remote = [link for link in head.proxy.links.values() if link.remote]
            traced = {event.worker_id for event in head.proxy.telemetry.events()}
    finally:
        head.stop()
    assert all(r.error is None for r in results), [r.error for r in results if r.error]
    for (model, ids), result in zip(requests, results):
        assert result.token_ids == expected[(model, tuple(ids))], model
    assert not list(SHM_DIR.glob("*aegaeon-tcphead-*")) and not list(
        SHM_DIR.glob("*aegaeon-tcpjoin-*")
    )
    assert {
        link.worker_id for link in remote
    } <= traced  # a joined worker's traces carry its cluster-wide id
    return remote


def test_prefill_on_the_head_and_decode_on_a_joined_node(models, expected):
    remote = serve_across(models, expected, head_prefill=1, join_prefill=0)
    assert [link.role for link in remote] == ["decode"] and remote[0].served == len(expected)


def test_prefill_on_a_joined_node_and_decode_on_the_head(models, expected):
    remote = serve_across(models, expected, head_prefill=0, join_prefill=1)
    assert [link.role for link in remote] == ["prefill"]


def test_a_wrong_token_is_refused_and_the_head_keeps_serving(models, expected):
    head = Node(node_config(models, "tcphead2", "head", "127.0.0.1:0", 2, 1))
    head.start()
    try:
        address = f"127.0.0.1:{head.link.port}"
        with pytest.raises(LinkError, match="refused this node: wrong cluster token"):
            Node(
                node_config(models, "tcpjoin2", "join", address, 1, 0, token="not-the-token")
            ).start()
        assert not list(SHM_DIR.glob("*aegaeon-tcpjoin2-*"))  # the refused node cleaned up
        link = JoinLink(
            "127.0.0.1", head.link.port, LinkConfig(TOKEN), lambda m: None, lambda: None
        )
        try:
            with pytest.raises(LinkError, match="models .* differ"):
                link.join(Hello("odd", ("decode",), ("other-model",)), timeout=10)
        finally:
            link.close()
        assert (
            head.link.refused >= 2 and not head.link.peers
        )  # (ZeroMQ may retry a failed handshake)
        (model, ids), want = next(iter(expected.items()))
        result = Client(head.proxy, timeout=60).complete_many([(model, list(ids))], max_tokens=8)[0]
        assert result.error is None and result.token_ids == want
    finally:
        head.stop()
