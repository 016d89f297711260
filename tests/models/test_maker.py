import json

import pytest
import torch

from aegaeon.errors import ConfigError
from aegaeon.models.config import load_arch_config
from aegaeon.models.maker import PRESETS, build_tokenizer, config_for, make_model
from aegaeon.weights.checkpoint import open_checkpoint


def test_made_checkpoint_is_deterministic_for_a_seed_and_differs_across_seeds(tmp_path):
    from safetensors.torch import load_file

    config = config_for("llama")
    a = load_file(str(make_model(tmp_path / "a", config, seed=1) / "model.safetensors"))
    b = load_file(str(make_model(tmp_path / "b", config, seed=1) / "model.safetensors"))
    c = load_file(str(make_model(tmp_path / "c", config, seed=2) / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lm_head.weight"], c["lm_head.weight"])


def test_large_checkpoints_are_sharded_with_an_index_and_load_back(tmp_path):
    config = config_for("qwen2", layers=3)
    path = make_model(tmp_path / "q", config, shard_bytes=50_000)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    ckpt = open_checkpoint(path)
    assert set(ckpt.tensors) == set(config.parameter_shapes())


def test_transformers_loads_the_checkpoint_and_its_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    path = make_model(tmp_path / "m", config_for("qwen2"))
    model = transformers.AutoModelForCausalLM.from_pretrained(path)
    assert model.config.num_hidden_layers == 2
    tok = transformers.AutoTokenizer.from_pretrained(path)
    ids = tok("the model serves many requests")["input_ids"]
    assert tok.decode(ids) == "the model serves many requests"
    assert load_arch_config(path).eos_token_id == tok.eos_token_id


def test_tokenizer_round_trips_text_outside_its_corpus():
    tok = build_tokenizer(512)
    text = "Zürich: 42 ✓ unusual words"
    assert tok.decode(tok.encode(text).ids) == text


def test_presets_carry_the_published_sizes():
    assert PRESETS["qwen2.5-7b"].num_parameters() == pytest.approx(7.6e9, rel=0.01)
    assert PRESETS["llama-2-13b"].num_parameters() == pytest.approx(13.0e9, rel=0.01)
    assert PRESETS["yi-1.5-9b"].num_parameters() == pytest.approx(8.8e9, rel=0.01)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(arch="gpt2"), "--arch"),
        (dict(arch="llama", hidden=65), "--hidden"),
        (dict(arch="llama", heads=4, kv_heads=3), "num_key_value_heads"),
        (dict(arch="llama", vocab=100), "--vocab"),
    ],
)
def test_bad_shapes_are_refused_with_the_flag_named(tmp_path, kwargs, word):
    with pytest.raises(ConfigError if word != "num_key_value_heads" else Exception, match=word):
        make_model(tmp_path / "x", config_for(**kwargs))


def test_every_end_token_of_config_and_generation_config_stops_generation(tmp_path):
    from aegaeon.engine.local import LocalEngine
    from aegaeon.models.sampler import SamplingParams

    path = make_model(tmp_path / "m", config_for("llama"), seed=3)
    with LocalEngine({"m": str(path)}) as engine:
        free = engine.generate([("m", "one gpu many models")], SamplingParams(max_tokens=12))[0]
    assert len(free.token_ids) == 12
    stop_at = free.token_ids[
        4
    ]  # a token the greedy output makes: declared an end token, it ends there
    raw = json.loads((path / "config.json").read_text())
    raw["eos_token_id"] = [raw["eos_token_id"], 7]
    (path / "config.json").write_text(json.dumps(raw))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [stop_at]}))
    config = load_arch_config(path)
    assert config.eos_token_ids == tuple(dict.fromkeys([raw["eos_token_id"][0], 7, stop_at]))
    assert config.eos_token_id == raw["eos_token_id"][0]
    with LocalEngine({"m": str(path)}) as engine:
        ended = engine.generate([("m", "one gpu many models")], SamplingParams(max_tokens=12))[0]
    first = free.token_ids.index(stop_at)
    assert ended.token_ids == free.token_ids[: first + 1] and ended.finish_reason == "stop"
