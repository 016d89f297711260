"""A node whose workers bind a model before its copy has landed (--layerwise): the same greedy outputs, and
switch events that carry the time forwards waited for layers still copying, on prefill and decode workers."""

from aegaeon.client import Client
from aegaeon.config.serving import EngineConfig
from aegaeon.engine.local import LocalEngine
from aegaeon.ipc.events import PrefillEvent, SwitchEvent
from aegaeon.models.sampler import SamplingParams
from tests.serve.node_helpers import PROMPTS, SLAB, make_node, prompt_ids


def test_a_layerwise_node_serves_the_same_greedy_outputs_and_reports_layer_waits(twelve_models):
    models = dict(list(twelve_models.items())[:4])
    pairs = [(m, p) for m in models for p in PROMPTS]
    with LocalEngine(models, EngineConfig(slab_bytes=SLAB, steps_per_turn=100)) as reference:
        expected = [o.token_ids for o in reference.generate(pairs, SamplingParams(max_tokens=12))]
    engine = EngineConfig(slab_bytes=SLAB, kv_bytes=8 * 2**20, layerwise=True, link_gbps=0.05)
    with make_node(models, "lwnode1", engine=engine, num_instances=3, max_quota=0.01) as node:
        requests = [(m, prompt_ids(models, m, p)) for m, p in pairs]
        results = Client(node.proxy).complete_many(requests, max_tokens=12)
        events = node.proxy.telemetry.events()
    assert all(r.error is None for r in results), [r.error for r in results if r.error]
    assert [r.token_ids for r in results] == expected
    copies = [e for e in events if isinstance(e, SwitchEvent) and e.bytes_copied]
    assert {e.worker_id for e in copies} >= {0, 1}  # the prefill worker and a decode worker copied
    # every copy's record was completed after the forward it landed under: its wait is in `seconds`
    assert all("wait_layers" in e.stages for e in copies), [e.stages for e in copies]
    assert all(e.seconds >= e.stages["wait_layers"] for e in copies)
    waited = [e.stages["wait_layers"] for e in copies]
    assert max(waited) > 0  # at 0.05 GB/s some layer was still copying when a forward reached it
    prefills = [e for e in events if isinstance(e, PrefillEvent)]
    assert prefills and all(e.compute >= 0 for e in prefills)
