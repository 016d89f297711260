"""A node whose decode workers prefetch the next turn's weights (--prefetch): the same greedy outputs, and
switches that only wait for the rest of a copy made during the turn before."""

import statistics

from aegaeon.client import Client
from aegaeon.config.serving import EngineConfig
from aegaeon.engine.local import LocalEngine
from aegaeon.ipc.events import SwitchEvent
from aegaeon.models.sampler import SamplingParams
from tests.serve.node_helpers import PROMPTS, SLAB, make_node, prompt_ids


def test_a_prefetching_node_serves_single_model_greedy_outputs_with_prefetched_switches(
    twelve_models,
):
    models = dict(list(twelve_models.items())[:6])
    pairs = [(m, p) for m in models for p in PROMPTS]
    with LocalEngine(models, EngineConfig(slab_bytes=SLAB, steps_per_turn=100)) as reference:
        expected = {
            (o.model, o.prompt_ids): o.token_ids
            for o in reference.generate(pairs, SamplingParams(max_tokens=24))
        }
    engine = EngineConfig(slab_bytes=SLAB, kv_bytes=8 * 2**20, prefetch=True, link_gbps=0.2)
    with make_node(models, "pfnode1", engine=engine, num_instances=3, max_quota=0.01) as node:
        results = Client(node.proxy).complete_many(list(map(list, expected)), max_tokens=24)
        switches = [e for e in node.proxy.telemetry.events() if isinstance(e, SwitchEvent)]
    requests = [(model, list(ids)) for model, ids in expected]
    assert all(r.error is None for r in results), [r.error for r in results if r.error]
    for (model, ids), result in zip(requests, results):
        assert result.token_ids == expected[(model, tuple(ids))], model
    prefetched = [e for e in switches if "wait_prefetch" in e.stages]
    assert prefetched, "no decode switch found its model prefetched"
    plain = [e for e in switches if "copy_weights" in e.stages]
    # a prefetched switch waits for less than a whole copy: the copy ran while the turn before decoded (the
    # median: one whose copy the turn before was too short to hide waits for most of it)
    assert statistics.median(e.seconds for e in prefetched) < statistics.median(
        e.seconds for e in plain
    )


def test_a_prefetching_prefill_worker_copies_its_next_groups_model_while_a_group_computes(
    twelve_models,
):
    models = dict(list(twelve_models.items())[:6])
    pairs = [(m, p) for m in models for p in PROMPTS]
    with LocalEngine(models, EngineConfig(slab_bytes=SLAB, steps_per_turn=100)) as reference:
        expected = [o.token_ids for o in reference.generate(pairs, SamplingParams(max_tokens=4))]
    engine = EngineConfig(slab_bytes=SLAB, kv_bytes=8 * 2**20, prefetch=True, link_gbps=0.2)
    with make_node(models, "pfnode2", engine=engine, num_instances=2) as node:
        requests = [(m, prompt_ids(models, m, p)) for m, p in pairs]
        results = Client(node.proxy).complete_many(requests, max_tokens=4)
        events = node.proxy.telemetry.events()
    assert [r.token_ids for r in results] == expected
    prefill = [e for e in events if isinstance(e, SwitchEvent) and e.worker_id == 0]
    # every group after the first found its model copied (or being copied) behind the group before it
    assert len(prefill) == len(models)
    assert sum("wait_prefetch" in e.stages for e in prefill) >= len(models) - 2, [
        e.stages for e in prefill
    ]
