import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from aegaeon.errors import CheckpointError
from aegaeon.models.maker import config_for, make_model
from aegaeon.weights.checkpoint import open_checkpoint


@pytest.fixture
def ckpt(tmp_path):
    return make_model(tmp_path / "tiny", config_for("llama"))


def test_a_valid_checkpoint_lists_every_tensor_with_its_file_offset(ckpt):
    opened = open_checkpoint(ckpt)
    tensors = load_file(str(ckpt / "model.safetensors"))
    data = (ckpt / "model.safetensors").read_bytes()
    for name, source in opened.tensors.items():
        raw = data[source.offset : source.offset + source.nbytes]
        assert torch.equal(
            torch.frombuffer(bytearray(raw), dtype=torch.float32).view(source.shape), tensors[name]
        )


def test_missing_config_names_the_model(ckpt):
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match="model tiny: .*no config.json"):
        open_checkpoint(ckpt)


def test_unsupported_architecture_is_named(ckpt):
    raw = json.loads((ckpt / "config.json").read_text())
    raw["architectures"] = ["GPT2LMHeadModel"]
    (ckpt / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="GPT2LMHeadModel.*not supported"):
        open_checkpoint(ckpt)


def test_malformed_config_json_is_reported(ckpt):
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        open_checkpoint(ckpt)


def test_wrong_tensor_shape_is_named(ckpt):
    tensors = load_file(str(ckpt / "model.safetensors"))
    tensors["model.layers.1.mlp.up_proj.weight"] = torch.zeros(3, 3)
    save_file(tensors, str(ckpt / "model.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"model.layers.1.mlp.up_proj.weight has shape \(3, 3\)"
    ):
        open_checkpoint(ckpt)


def test_missing_tensor_is_named(ckpt):
    tensors = load_file(str(ckpt / "model.safetensors"))
    del tensors["model.norm.weight"]
    save_file(tensors, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing, first model.norm.weight"):
        open_checkpoint(ckpt)


def test_unsupported_dtype_is_named(ckpt):
    tensors = load_file(str(ckpt / "model.safetensors"))
    tensors["model.norm.weight"] = tensors["model.norm.weight"].to(torch.int32)
    save_file(tensors, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match="model.norm.weight has dtype 'I32'"):
        open_checkpoint(ckpt)


def test_truncated_safetensors_is_refused(ckpt):
    path = ckpt / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        open_checkpoint(ckpt)


def test_garbage_header_length_is_refused(ckpt):
    path = ckpt / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(CheckpointError, match="header length"):
        open_checkpoint(ckpt)


def test_index_listing_a_missing_shard_is_refused(tmp_path):
    path = make_model(tmp_path / "sharded", config_for("llama"), shard_bytes=50_000)
    next(iter(sorted(path.glob("model-*.safetensors")))).unlink()
    with pytest.raises(CheckpointError, match="listed in the index but missing"):
        open_checkpoint(path)
