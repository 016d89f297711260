"""Architecture configuration of a Llama-family checkpoint (config.json).

One dataclass covers Llama-2, Yi (both `LlamaForCausalLM`) and Qwen2/Qwen2.5
(`Qwen2ForCausalLM`, which adds biases to the q/k/v projections). It also
lists every parameter a checkpoint must hold, with its shape, so loaders can
validate a checkpoint before a byte is copied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from aegaeon.errors import CheckpointError
from aegaeon.models.registry import FAMILIES, family_for, supported_architectures

SUPPORTED_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class ArchConfig:
    arch: str  # "llama" or "qwen2"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_linear_factor: float = 1.0
    qkv_bias: bool = False
    tie_word_embeddings: bool = False
    dtype: str = "float32"
    eos_token_ids: tuple[
        int, ...
    ] = ()  # every end-of-sequence token (config.json and generation_config.json)
    # A tensor-parallel shard (aegaeon.parallel.shard.shard_config) counts its own heads, KV heads and MLP
    # columns in the fields above and holds `vocab_rows` rows of the embedding and LM head; vocab_size stays
    # the model's. TP 1 is the whole model.
    tp_size: int = 1
    tp_rank: int = 0

    @property
    def vocab_rows(self) -> int:
        """Rows of the embedding and LM head this shard holds (the last shard's tail rows are zero)."""
        return -(-self.vocab_size // self.tp_size)

    @property
    def vocab_start(self) -> int:
        return self.tp_rank * self.vocab_rows

    @property
    def eos_token_id(self) -> int | None:
        """The first end-of-sequence token (what config.json states alone when it has one)."""
        return self.eos_token_ids[0] if self.eos_token_ids else None

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of the checkpoint, by its Hugging Face name, in load order."""
        h, m = self.hidden_size, self.intermediate_size
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab_rows, h)}
        for i in range(self.num_layers):
            p = f"model.layers.{i}."
            shapes[p + "input_layernorm.weight"] = (h,)
            shapes[p + "self_attn.q_proj.weight"] = (self.q_size, h)
            shapes[p + "self_attn.k_proj.weight"] = (self.kv_size, h)
            shapes[p + "self_attn.v_proj.weight"] = (self.kv_size, h)
            if self.qkv_bias:
                shapes[p + "self_attn.q_proj.bias"] = (self.q_size,)
                shapes[p + "self_attn.k_proj.bias"] = (self.kv_size,)
                shapes[p + "self_attn.v_proj.bias"] = (self.kv_size,)
            shapes[p + "self_attn.o_proj.weight"] = (h, self.q_size)
            shapes[p + "post_attention_layernorm.weight"] = (h,)
            shapes[p + "mlp.gate_proj.weight"] = (m, h)
            shapes[p + "mlp.up_proj.weight"] = (m, h)
            shapes[p + "mlp.down_proj.weight"] = (h, m)
        shapes["model.norm.weight"] = (h,)
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (self.vocab_rows, h)
        return shapes

    def num_parameters(self) -> int:
        total = 0
        for shape in self.parameter_shapes().values():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total

    @classmethod
    def from_dict(cls, raw: dict, where: str = "config.json") -> "ArchConfig":
        archs = raw.get("architectures") or []
        family = family_for(archs if isinstance(archs, list) else [])
        if family is None:
            raise CheckpointError(
                f"{where}: architectures={archs} is not supported: use one of {supported_architectures()}"
            )
        arch = family.arch
        try:
            hidden, heads = int(raw["hidden_size"]), int(raw["num_attention_heads"])
            cfg = cls(
                arch=arch,
                vocab_size=int(raw["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(raw["intermediate_size"]),
                num_layers=int(raw["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(raw.get("num_key_value_heads") or heads),
                head_dim=int(raw.get("head_dim") or hidden // heads),
                max_position=int(raw.get("max_position_embeddings", 2048)),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
                rope_theta=_rope_theta(raw),
                rope_linear_factor=_rope_linear_factor(raw, where),
                qkv_bias=family.qkv_bias or bool(raw.get("attention_bias", False)),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
                dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "float32"),
                eos_token_ids=_token_ids(raw.get("eos_token_id")),
            )
        except KeyError as missing:
            raise CheckpointError(f"{where}: required field {missing} is missing") from None
        except (TypeError, ValueError) as bad:
            raise CheckpointError(f"{where}: a field has the wrong type ({bad})") from None
        cfg.validate(where)
        return cfg

    def validate(self, where: str) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "max_position",
        ):
            if getattr(self, name) <= 0:
                raise CheckpointError(f"{where}: {name}={getattr(self, name)} must be positive")
        if self.num_heads % self.num_kv_heads:
            raise CheckpointError(
                f"{where}: num_attention_heads={self.num_heads} is not a multiple of "
                f"num_key_value_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise CheckpointError(
                f"{where}: head_dim={self.head_dim} must be even for rotary embeddings"
            )
        if self.dtype not in SUPPORTED_DTYPES:
            raise CheckpointError(
                f"{where}: torch_dtype={self.dtype!r} is not supported: use one of {SUPPORTED_DTYPES}"
            )

    def to_hf_dict(self) -> dict:
        """The config.json a Hugging Face checkpoint of this shape carries."""
        family = FAMILIES[self.arch]
        raw = {
            "architectures": [family.hf_architecture],
            "model_type": self.arch,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "hidden_act": "silu",
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": self.dtype,
            "bos_token_id": None,
            "eos_token_id": self.eos_token_id
            if len(self.eos_token_ids) <= 1
            else list(self.eos_token_ids),
        }
        if not family.qkv_bias:  # a family with fixed biases does not name them
            raw["attention_bias"] = self.qkv_bias
            raw["mlp_bias"] = False
        return raw


def load_arch_config(checkpoint_dir: str | Path) -> ArchConfig:
    path = Path(checkpoint_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{checkpoint_dir}: no config.json: point --models at a Hugging Face checkpoint directory"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as bad:
        raise CheckpointError(f"{path}: not valid JSON ({bad})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    config = ArchConfig.from_dict(raw, str(path))
    # generation stops at the generation config's end tokens too (as transformers and vLLM stop)
    generation = Path(checkpoint_dir) / "generation_config.json"
    if generation.is_file():
        try:
            extra = json.loads(generation.read_text()).get("eos_token_id")
            ids = _token_ids(extra)
        except (json.JSONDecodeError, AttributeError, ValueError) as bad:
            raise CheckpointError(f"{generation}: eos_token_id unreadable ({bad})") from None
        config = replace(config, eos_token_ids=tuple(dict.fromkeys(config.eos_token_ids + ids)))
    return config


def _rope_theta(raw: dict) -> float:
    params = raw.get("rope_parameters") or {}
    return float(raw.get("rope_theta") or params.get("rope_theta") or 10000.0)


def _rope_linear_factor(raw: dict, where: str) -> float:
    scaling = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    if kind == "default":
        return 1.0
    if kind == "linear":
        return float(scaling["factor"])
    raise CheckpointError(f"{where}: rope scaling {kind!r} is not supported: use none or 'linear'")


def _token_ids(value: object) -> tuple[int, ...]:
    """An `eos_token_id` field: one id, a list of them (Llama 3, Qwen2.5 chat), or none."""
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"eos_token_id {value!r} is not a token id or a list of them")
    return tuple(dict.fromkeys(values))
