"""The model registry: config.json architectures map onto families, and a family is one registry line."""

import pytest

from aegaeon.errors import CheckpointError
from aegaeon.models import registry
from aegaeon.models.config import ArchConfig
from aegaeon.models.llama import LlamaModel
from aegaeon.models.maker import config_for


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_each_family_round_trips_through_config_json_and_builds_its_implementation(arch):
    config = config_for(arch)
    raw = config.to_hf_dict()
    assert raw["architectures"] == [registry.FAMILIES[arch].hf_architecture]
    again = ArchConfig.from_dict(raw)
    assert again == config and again.qkv_bias == (arch == "qwen2")
    assert isinstance(registry.build_model(again), LlamaModel)


def test_an_unknown_architecture_names_the_supported_ones():
    raw = config_for("llama").to_hf_dict()
    raw["architectures"] = ["GPTNeoXForCausalLM"]
    with pytest.raises(CheckpointError, match="LlamaForCausalLM.*Qwen2ForCausalLM"):
        ArchConfig.from_dict(raw)


class _Recorder:
    def __init__(self, config):
        self.config = config


def test_a_new_family_is_one_registry_line(monkeypatch):
    family = registry.Family("mini", "MiniForCausalLM", f"{__name__}:_Recorder")
    monkeypatch.setitem(registry.FAMILIES, "mini", family)
    raw = config_for("llama").to_hf_dict()
    raw["architectures"] = ["MiniForCausalLM"]
    config = ArchConfig.from_dict(raw)
    assert config.arch == "mini"
    built = registry.build_model(config)
    assert isinstance(built, _Recorder) and built.config is config
