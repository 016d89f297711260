"""A node on CPU: 4 virtual instances (1 prefill, 3 decode) serving 12 tiny models of two shapes.
Workers that die are in test_node_recovery.py."""

import pytest

from aegaeon.client import Client
from aegaeon.config.serving import EngineConfig, NodeConfig
from aegaeon.engine.local import LocalEngine as Engine
from aegaeon.errors import RequestError
from aegaeon.ipc.shm import SHM_DIR
from aegaeon.models.sampler import SamplingParams
from aegaeon.serve.node import Node
from tests.serve.node_helpers import PROMPTS, SLAB, make_node, prompt_ids


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


def test_a_full_host_kv_cache_applies_back_pressure_and_loses_nothing(twelve_models):
    models = dict(list(twelve_models.items())[:4])
    with Engine(models, EngineConfig(slab_bytes=SLAB, steps_per_turn=100)) as reference:
        expected = reference.generate(
            [(m, p) for m in models for p in PROMPTS], SamplingParams(max_tokens=20)
        )
    # one 64 KiB slab of host KV for the prefill worker: a few prompts' blocks at a time
    with make_node(models, "nodetest2", host_kv_bytes=SLAB) as node:
        client = Client(node.proxy)
        requests = [(m, prompt_ids(models, m, p)) for m in models for p in PROMPTS] * 3
        results = client.complete_many(requests, max_tokens=20)
    assert [r.token_ids for r in results] == [e.token_ids for e in expected] * 3


def test_a_node_on_an_emulated_link_switches_and_swaps_with_the_same_greedy_tokens(twelve_models):
    models = dict(list(twelve_models.items())[:3])
    with Engine(models, EngineConfig(slab_bytes=SLAB, steps_per_turn=100)) as reference:
        expected = reference.generate(
            [(m, p) for m in models for p in PROMPTS], SamplingParams(max_tokens=10)
        )
    paced = EngineConfig(slab_bytes=SLAB, kv_bytes=8 * 2**20, link_gbps=0.5)
    with make_node(models, "nodelink", engine=paced, max_quota=0.002) as node:
        client = Client(node.proxy)
        requests = [(m, prompt_ids(models, m, p)) for m in models for p in PROMPTS]
        results = client.complete_many(requests, max_tokens=10)
        switches = sum(link.switches for link in node.proxy.decode)
    assert [r.token_ids for r in results] == [e.token_ids for e in expected]
    assert switches >= len(models)


def test_seeded_sampling_continues_exactly_across_the_kv_handoff(twelve_models):
    models = dict(list(twelve_models.items())[:2])
    sampling = SamplingParams(max_tokens=10, temperature=0.9, top_p=0.95, seed=11)
    with Engine(models, EngineConfig(slab_bytes=SLAB)) as reference:
        expected = reference.generate([(m, PROMPTS[0]) for m in models], sampling)
    with make_node(models, "nodetest4") as node:
        client = Client(node.proxy)
        states = [
            client.submit(
                m,
                prompt_ids(models, m, PROMPTS[0]),
                max_tokens=10,
                temperature=0.9,
                top_p=0.95,
                seed=11,
            )
            for m in models
        ]
        results = [client.complete(s) for s in states]
    assert [r.token_ids for r in results] == [e.token_ids for e in expected]


def test_bad_requests_fail_with_the_reason_and_the_node_keeps_serving(twelve_models):
    models = dict(list(twelve_models.items())[:1])
    with make_node(models, "nodetest6", num_instances=2) as node:
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
    from aegaeon.serve.devices import check_devices

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
    with make_node(models, "nodetest9", num_instances=2) as node:
        client = Client(node.proxy)
        long = client.submit(
            model, prompt_ids(models, model, PROMPTS[0]), max_tokens=600, ignore_eos=True
        )
        stream = client.stream(long)
        (
            next(stream),
            next(stream),
        )  # the second token comes from the decode worker: its turn is running
        short = client.complete(
            client.submit(
                model, prompt_ids(models, model, PROMPTS[1]), max_tokens=4, ignore_eos=True
            )
        )
        rest = [t for _, t in stream]
    assert short.error is None and len(short.token_ids) == 4 and len(rest) == 598
    # one decode instance, one model: the turn is the long request's until it ends (quota 4 s), so without
    # joining, the short one could only start after the long one finished
    assert short.token_times[-1] < rest[-1], short.token_times[-1] - rest[-1]
