"""SLO-aware rounds live: the proxy learns when each request's first decode token is due (its prefill's
token plus the SLO), every handoff tells the decode worker how long it has, and a node with
--slo-aware-rounds serves the same greedy outputs."""

from aegaeon.client import Client
from aegaeon.config.serving import EngineConfig
from aegaeon.engine.local import LocalEngine
from aegaeon.ipc.messages import KvPayload, Submit, SwapIn, SwapOut, decode, encode
from aegaeon.models.sampler import SamplingParams
from aegaeon.sched.slo import SLO
from aegaeon.serve.handoff import KvRelay
from aegaeon.serve.requests import LiveRequest
from tests.serve.node_helpers import PROMPTS, SLAB, make_node, prompt_ids


class Target:
    def __init__(self, worker_id: int, remote: bool):
        self.worker_id, self.remote = worker_id, remote
        self.live, self.served, self.sent = {}, 0, []

    def send(self, message):
        self.sent.append(message)


def test_every_handoff_carries_the_slack_to_the_first_decode_deadline():
    relay = KvRelay(None, lambda worker_id: None, lambda request: 1.25)
    request = LiveRequest(Submit(7, "m", (1, 2), 4), arrival=0.0)
    request.run = request.submit
    local = Target(5, remote=False)
    relay.hand_off(SwapOut(7, "m", (1, 2), 2, (3,), b"", 64), Target(0, False), request, local)
    assert local.sent[-1] == SwapIn(7, "m", (1, 2), 2, (3,), b"", 64, first_decode_slack=1.25)
    remote = Target(9, remote=True)
    payload = KvPayload(7, "m", (1, 2), 2, (3,), b"", 64, worker_id=0, data=b"x" * 128)
    relay.hand_off(payload, Target(0, True), request, remote)
    sent = remote.sent[-1]
    assert isinstance(sent, KvPayload) and sent.first_decode_slack == 1.25
    assert sent.worker_id == 9 and sent.data == payload.data
    assert decode(encode(local.sent[-1])) == local.sent[-1]  # the field travels


def test_a_node_with_slo_aware_rounds_serves_greedy_outputs_and_tells_each_handoff_its_slack(
    twelve_models,
):
    models = dict(list(twelve_models.items())[:4])
    pairs = [(m, p) for m in models for p in PROMPTS]
    with LocalEngine(models, EngineConfig(slab_bytes=SLAB, steps_per_turn=100)) as reference:
        expected = [o.token_ids for o in reference.generate(pairs, SamplingParams(max_tokens=12))]
    slo = SLO(ttft=3.0, tpot=0.5)
    with make_node(
        models, "slonode1", num_instances=3, slo=slo, slo_aware_rounds=True, max_quota=0.05
    ) as node:
        told = []
        slack_of = node.proxy.relay.first_decode_slack

        def recorded(request):
            told.append(slack_of(request))
            return told[-1]

        node.proxy.relay.first_decode_slack = recorded
        requests = [(m, prompt_ids(models, m, p)) for m, p in pairs]
        results = Client(node.proxy).complete_many(requests, max_tokens=12)
    assert [r.token_ids for r in results] == expected
    assert len(told) == len(pairs)
    # due the SLO's TTFT after arrival at the latest (plus one TPOT), and never later than that
    assert all(slack is not None and slack <= slo.ttft + slo.tpot for slack in told)


def test_the_pool_file_and_flags_take_slo_aware_rounds_and_refuse_a_non_boolean(tmp_path):
    import pytest

    from aegaeon.config.pool import build
    from aegaeon.errors import ConfigError

    node, _ = build({"models": [str(tmp_path)], "slo_aware_rounds": True})
    assert node.slo_aware_rounds is True
    node.validate()
    bad, _ = build({"models": [str(tmp_path)], "slo_aware_rounds": "yes"})
    with pytest.raises(ConfigError, match="slo_aware_rounds: 'yes' is not true or false"):
        bad.validate()  # as the node does before it starts anything
