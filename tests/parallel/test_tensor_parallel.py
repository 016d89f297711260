"""Tensor parallelism on CPU (gloo): the shard rules exactly, each rank's host-cache shard exactly, and greedy
tokens of TP 2 and TP 4 groups equal to TP 1 (log-probabilities within 1e-4), through model switches, a
vocabulary that does not divide, and a KV handoff from one TP group to another."""

import os

import pytest
import torch
from safetensors.torch import load_file

from aegaeon.config.serving import EngineConfig
from aegaeon.engine.executor import KvImport, StepExecutor
from aegaeon.errors import ConfigError
from aegaeon.ipc.shm import ShmNamespace
from aegaeon.models.maker import config_for, make_model
from aegaeon.models.sampler import SamplingParams
from aegaeon.parallel.launch import start_group
from aegaeon.parallel.shard import (
    check_degree,
    open_shard,
    rank_config,
    shard_config,
    shard_rule,
    shard_tensor,
)
from aegaeon.weights.host_cache import HostWeightCache

SLAB = 64 * 1024
ENGINE = EngineConfig(slab_bytes=SLAB, kv_bytes=4 * 2**20)
LOGPROB_TOLERANCE = 1e-4  # float32; the all-reduce sums partial products in another order

SHAPES = {
    # Llama-2: multi-head attention, a vocabulary that divides by 4
    "llama": config_for("llama", heads=8, kv_heads=8, intermediate=128, vocab=512),
    # Yi-like: grouped-query attention (2 query heads per KV head), a vocabulary of 501 (padded shards)
    "yi": config_for("llama", layers=3, heads=8, kv_heads=4, intermediate=96, vocab=501),
    # Qwen2: q/k/v biases, GQA
    "qwen2": config_for("qwen2", hidden=96, heads=8, kv_heads=4, intermediate=192, vocab=400),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp")
    return {
        name: str(make_model(root / name, shape, seed=i))
        for i, (name, shape) in enumerate(SHAPES.items())
    }


def test_every_parameter_has_a_rule_and_the_shards_reassemble_exactly(models):
    full = load_file(os.path.join(models["qwen2"], "model.safetensors"))
    config = SHAPES["qwen2"]
    for tp in (2, 4):
        shards = [shard_config(config, rank, tp) for rank in range(tp)]
        for name, tensor in full.items():
            parts = [shard_tensor(name, tensor, shard) for shard in shards]
            assert all(p.shape == tuple(shards[0].parameter_shapes()[name]) for p in parts), name
            rule = shard_rule(name)
            if rule == "replicated":
                assert all(torch.equal(p, tensor) for p in parts)
                continue
            dim = 1 if rule == "columns" else 0
            assert torch.equal(torch.cat(parts, dim)[: tensor.shape[0]], tensor), name
    assert shard_rule("model.layers.0.self_attn.o_proj.weight") == "columns"
    assert shard_rule("model.layers.0.self_attn.k_proj.bias") == "rows"
    assert shard_rule("model.embed_tokens.weight") == "vocab"
    assert shard_rule("model.layers.0.input_layernorm.weight") == "replicated"


def test_vocabulary_shards_pad_the_last_rows_with_zeros(models):
    embed = load_file(os.path.join(models["yi"], "model.safetensors"))["model.embed_tokens.weight"]
    last = shard_tensor("model.embed_tokens.weight", embed, shard_config(SHAPES["yi"], 1, 2))
    assert last.shape[0] == 251  # ceil(501 / 2)
    assert torch.equal(last[:250], embed[251:]) and not last[250].any()


def test_a_degree_the_heads_do_not_divide_by_is_refused_naming_what_would():
    with pytest.raises(
        ConfigError, match=r"4 KV heads do not divide .* degree 8: use --tp among \[1, 2, 4\]"
    ):
        check_degree(SHAPES["yi"], 8, "yi")
    with pytest.raises(ConfigError, match="6 attention heads and 3 KV heads do not divide"):
        check_degree(config_for("qwen2", hidden=96, heads=6, kv_heads=3), 4, "m")


def test_each_rank_region_of_the_host_cache_is_its_shard_exactly(models):
    namespace = ShmNamespace(f"tpcache{os.getpid()}").claim()
    try:
        shard0 = open_shard(models["qwen2"], "qwen2", 2)
        cache = HostWeightCache(namespace, [shard0])
        cache.wait("qwen2")
        full = load_file(os.path.join(models["qwen2"], "model.safetensors"))
        attached = HostWeightCache.attach(
            namespace.cluster_id, [open_shard(models["qwen2"], "qwen2", 2, rank=1)]
        )
        try:
            for rank, holder in ((0, cache), (1, attached)):
                views = holder.models["qwen2"].layout.views(holder.region("qwen2"))
                for name, tensor in full.items():
                    assert torch.equal(
                        views[name], shard_tensor(name, tensor, rank_config(shard0.config, rank))
                    )
        finally:
            attached.close()
        with pytest.raises(ConfigError, match="at TP 2, not model qwen2 .* at TP 4"):
            HostWeightCache.attach(namespace.cluster_id, [open_shard(models["qwen2"], "qwen2", 4)])
        cache.close()
    finally:
        namespace.close()


def _turns(executor, order: list[str], requests: dict[int, tuple[str, list[int]]], steps: int = 10):
    """Round-robin turns of two steps over `order`, each model's requests decoding; per request, its tokens
    and the log-probability of each."""
    for request_id, (model, prompt) in requests.items():
        executor.add(request_id, model, prompt, SamplingParams(max_tokens=steps, logprobs=1))
    tokens = {i: [] for i in requests}
    logprobs = {i: [] for i in requests}
    for turn in range(steps):
        model = order[turn % len(order)]
        executor.switch_to(model)
        for _ in range(2):
            ids = [i for i, (m, _) in requests.items() if m == model and executor.has(i)]
            for update in executor.step(model, ids):
                tokens[update.request_id] += update.new_tokens
                logprobs[update.request_id] += list(update.logprobs)
    return tokens, logprobs


class _Group:
    """An owner host cache of rank-0 shards and a TP group over it, as a node's launcher and worker hold."""

    def __init__(self, models: dict[str, str], tp: int, tag: str, host_bytes: int = 0):
        self.namespace = ShmNamespace(f"tp{tag}{os.getpid()}").claim()
        self.cache = HostWeightCache(
            self.namespace, [open_shard(p, n, tp) for n, p in models.items()]
        )
        self.cache.start_prefetch()
        segments, tensors = {}, {}
        if host_bytes:
            self.host = self.namespace.create_segment("hostkv", host_bytes)
            segments, tensors = (
                {"kv": "hostkv"},
                {"kv": self.host.as_tensor(torch.uint8, (host_bytes,))},
            )
        self.executor = start_group(
            models,
            EngineConfig(slab_bytes=SLAB, kv_bytes=4 * 2**20, tp_size=tp),
            self.namespace.cluster_id,
            self.cache.segment_names(),
            segments,
            tensors,
        )

    def close(self) -> None:
        self.executor.close()
        self.cache.close()
        self.namespace.close()


def _compare(expected, got) -> None:
    (ref_tokens, ref_logprobs), (tokens, logprobs) = expected, got
    assert tokens == ref_tokens
    for request_id, values in ref_logprobs.items():
        assert len(values) == len(logprobs[request_id]) > 0
        for a, b in zip(values, logprobs[request_id]):
            (chosen, top), (their_chosen, their_top) = a, b
            assert abs(chosen - their_chosen) < LOGPROB_TOLERANCE
            assert [t for t, _ in top] == [t for t, _ in their_top]


@pytest.mark.parametrize("tp", [2, 4])
def test_greedy_tokens_of_a_tp_group_equal_tp_1_through_model_switches(models, tp):
    requests = {
        0: ("llama", [3, 5, 7, 11]),
        1: ("yi", [2, 4, 500, 8, 9]),  # token 500 lives in the last (padded) vocabulary shard
        2: ("qwen2", [13, 1, 399]),
        3: (
            "llama",
            [6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 1],
        ),  # over one KV block
    }
    order = ["llama", "yi", "qwen2"]
    with StepExecutor(models, ENGINE) as whole:
        expected = _turns(whole, order, requests)
    group = _Group(models, tp, "parity")
    try:
        got = _turns(group.executor, order, requests)
        switches = [r for r in group.executor.runner.switches if r.bytes_copied]
        # each rank copies only its shard
        assert {r.bytes_copied for r in switches} <= {
            group.cache.models[m].layout.total_bytes for m in models
        }
    finally:
        group.close()
    _compare(expected, got)


def test_a_seeded_sampled_request_draws_the_same_tokens_at_tp_2(models):
    sampling = SamplingParams(max_tokens=8, temperature=0.9, top_p=0.95, seed=7)
    with StepExecutor(models, ENGINE) as whole:
        whole.switch_to("qwen2")
        whole.add(0, "qwen2", [1, 2, 3], sampling)
        expected = [t for _ in range(8) for u in whole.step("qwen2", [0]) for t in u.new_tokens]
    group = _Group(models, 2, "sampled")
    try:
        ex = group.executor
        ex.switch_to("qwen2")
        ex.add(0, "qwen2", [1, 2, 3], sampling)
        # an unseeded request gets one seed for the group: it must not fail nor desynchronise the ranks
        ex.add(1, "qwen2", [1, 2, 3], SamplingParams(max_tokens=8, temperature=0.9))
        got = []
        for _ in range(8):
            for update in ex.step("qwen2", [0, 1]):
                assert update.error is None
                if update.request_id == 0:
                    got += update.new_tokens
    finally:
        group.close()
    assert got == expected


def test_kv_hands_off_from_one_tp_group_to_another(models):
    """A TP 2 'prefill' group computes the prompt and exports its KV (each rank its shard of every host
    block); a second TP 2 group imports it and decodes: the tokens are the uninterrupted TP 1 run's."""
    prompt, steps = [5, 9, 2, 7, 1, 3, 3, 8, 4, 4, 6, 2, 9, 9, 1, 1, 2, 3], 8
    with StepExecutor(models, ENGINE) as whole:
        whole.switch_to("yi")
        whole.add(0, "yi", prompt, SamplingParams(max_tokens=steps))
        expected = [t for _ in range(steps) for u in whole.step("yi", [0]) for t in u.new_tokens]
    prefill = _Group(models, 2, "prefill", host_bytes=4 * 2**20)
    try:
        ex = prefill.executor
        ex.switch_to("yi")
        ex.add(0, "yi", prompt, SamplingParams(max_tokens=steps))
        first = [t for u in ex.step("yi", [0]) for t in u.new_tokens]
        blocks, block_bytes = ex.kv_blocks(0)
        assert block_bytes == 2 * ex.runner.entries["yi"].kv.block_bytes  # both ranks' shards
        offsets = [i * block_bytes for i in range(blocks)]
        ex.export_kv(0, prefill.host.as_tensor(torch.uint8, (prefill.host.size,)), offsets)
        cached, generated, state = ex.handoff_state(0)
        host_bytes = bytes(prefill.host.as_numpy("uint8", (blocks * block_bytes,)))
    finally:
        prefill.close()
    decode = _Group(models, 2, "decode", host_bytes=4 * 2**20)
    try:
        decode.host.as_numpy("uint8", (len(host_bytes),))[:] = list(host_bytes)
        ex = decode.executor
        ex.switch_to("yi")
        ex.import_kv(
            KvImport(
                0, "yi", tuple(prompt), SamplingParams(max_tokens=steps), generated, cached, state
            ),
            decode.host.as_tensor(torch.uint8, (decode.host.size,)),
            offsets,
        )
        rest = [t for _ in range(steps - 1) for u in ex.step("yi", [0]) for t in u.new_tokens]
    finally:
        decode.close()
    assert first + rest == expected
