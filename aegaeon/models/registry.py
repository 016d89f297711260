"""Model families: which config.json architecture maps onto which implementation.

A new family is one module with a class built from an ArchConfig (`bind(params)` to place its weights,
`forward(step, kv_units, layout, all_logits=False)` for a step; a second constructor argument, the
tensor-parallel group, when it can run sharded) and one line in FAMILIES. A family whose model has a
`weights_ready` attribute takes layer-wise readiness (aegaeon.engine.layerwise): the runner sets it to a
callable while a copy is landing, and `forward` calls it with each stage before reading that stage's weights. The table stays
torch-free (implementations are imported when a model is built), so configuration code can read it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aegaeon.errors import CheckpointError

if TYPE_CHECKING:
    from aegaeon.models.config import ArchConfig


@dataclass(frozen=True)
class Family:
    arch: str  # ArchConfig.arch and config.json's model_type
    hf_architecture: str  # config.json's "architectures" entry
    implementation: str  # "module:Class", constructed with the ArchConfig
    qkv_bias: bool = (
        False  # the family's q/k/v projections always carry biases (else attention_bias says)
    )


FAMILIES: dict[str, Family] = {
    family.arch: family
    for family in (
        Family("llama", "LlamaForCausalLM", "aegaeon.models.llama:LlamaModel"),  # Llama-2, Yi
        # Qwen2/Qwen2.5: the Llama computation with biases on the q/k/v projections
        Family("qwen2", "Qwen2ForCausalLM", "aegaeon.models.llama:LlamaModel", qkv_bias=True),
    )
}


def family_for(hf_architectures: list[str]) -> Family | None:
    """The first family that config.json's `architectures` names, if any."""
    by_name = {family.hf_architecture: family for family in FAMILIES.values()}
    return next((by_name[name] for name in hf_architectures if name in by_name), None)


def supported_architectures() -> list[str]:
    return sorted(family.hf_architecture for family in FAMILIES.values())


def build_model(config: ArchConfig, group: Any = None) -> Any:
    """The family's implementation of `config`, weights not yet bound; `group` is the tensor-parallel group
    of a sharded config (aegaeon.parallel.group), None for a whole model."""
    family = FAMILIES.get(config.arch)
    if family is None:
        raise CheckpointError(
            f"model family {config.arch!r} is not registered: use one of {sorted(FAMILIES)} "
            f"(aegaeon/models/registry.py)"
        )
    module, name = family.implementation.split(":")
    implementation = getattr(importlib.import_module(module), name)
    return implementation(config) if group is None else implementation(config, group)
