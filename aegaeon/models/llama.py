"""The Llama family (Llama-2, Yi, Qwen2/Qwen2.5) over paged KV blocks.

The model owns no storage: `bind` points it at parameter tensors (views into
the device arena), so switching models re-binds views after the bytes are
copied; nothing is re-initialised. `forward` runs prefill and decode alike on
a `StepBatch` (ragged chunks: padded for prefill, back to back for decode),
reading and writing KV rows of the arena.

With a tensor-parallel group (aegaeon.parallel) the model is one rank's shard: its config counts the
shard's heads and MLP columns, the o and down projections' partial sums are all-reduced, and the embedding
and LM head are vocabulary-parallel (a row outside the shard embeds to zero before the all-reduce; the
logits of every shard are gathered). Without a group this is the whole model and no collective runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from aegaeon.kv.batch import StepBatch
from aegaeon.kv.layout import KVLayout
from aegaeon.models.config import ArchConfig
from aegaeon.models.layers import (
    apply_rotary,
    paged_attention,
    ragged_decode_attention,
    rms_norm,
    rotary_tables,
    swiglu_mlp,
)


def _ready(stage: int) -> None:
    """Every weight is in place (no copy is landing): nothing to wait for."""


@dataclass(frozen=True)
class LayerWeights:
    input_norm: torch.Tensor
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    q_bias: torch.Tensor | None
    k_bias: torch.Tensor | None
    v_bias: torch.Tensor | None
    o: torch.Tensor
    post_norm: torch.Tensor
    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor


class LlamaModel:
    def __init__(self, config: ArchConfig, group: Any = None):
        """`group`: the tensor-parallel group (aegaeon.parallel.group) of a sharded `config`, else None."""
        if (group is None) != (config.tp_size == 1) or (
            group is not None and (group.size, group.rank) != (config.tp_size, config.tp_rank)
        ):
            raise ValueError(
                f"shard {config.tp_rank}/{config.tp_size} needs the group of its rank and degree"
            )
        self.config = config
        self.group = group
        self.layers: list[LayerWeights] = []
        self.embed: torch.Tensor | None = None
        self.final_norm: torch.Tensor | None = None
        self.lm_head: torch.Tensor | None = None
        # layer-wise readiness (aegaeon.engine.layerwise): while the weights are still being copied, called
        # with a stage before the forward reads it (0 the embedding, i + 1 layer i, L + 1 the head)
        self.weights_ready: Callable[[int], None] | None = None

    def bind(self, params: dict[str, torch.Tensor]) -> None:
        """Point the model at its parameters (any tensors with the checkpoint's names)."""
        self.embed = params["model.embed_tokens.weight"]
        self.final_norm = params["model.norm.weight"]
        self.lm_head = self.embed if self.config.tie_word_embeddings else params["lm_head.weight"]
        self.layers = [
            self._layer(params, f"model.layers.{i}.") for i in range(self.config.num_layers)
        ]

    def _layer(self, params: dict[str, torch.Tensor], p: str) -> LayerWeights:
        attn, mlp = p + "self_attn.", p + "mlp."
        return LayerWeights(
            params[p + "input_layernorm.weight"],
            params[attn + "q_proj.weight"],
            params[attn + "k_proj.weight"],
            params[attn + "v_proj.weight"],
            params.get(attn + "q_proj.bias"),
            params.get(attn + "k_proj.bias"),
            params.get(attn + "v_proj.bias"),
            params[attn + "o_proj.weight"],
            params[p + "post_attention_layernorm.weight"],
            params[mlp + "gate_proj.weight"],
            params[mlp + "up_proj.weight"],
            params[mlp + "down_proj.weight"],
        )

    @torch.inference_mode()
    def forward(
        self, step: StepBatch, kv_units: torch.Tensor, layout: KVLayout, all_logits: bool = False
    ) -> torch.Tensor:
        """Logits of each sequence's last new token ([B, V]), or of every query ([B, Q, V])."""
        if self.embed is None:
            raise RuntimeError("LlamaModel.forward before bind(): place the model's weights first")
        cfg = self.config
        ready = self.weights_ready or _ready
        ready(0)
        x = self._embed(step.tokens)
        cos, sin = rotary_tables(
            step.positions, cfg.head_dim, cfg.rope_theta, cfg.rope_linear_factor, x.dtype
        )
        for index, layer in enumerate(self.layers):
            ready(index + 1)
            x = x + self._reduce(
                self._attention(
                    index,
                    layer,
                    rms_norm(x, layer.input_norm, cfg.rms_norm_eps),
                    cos,
                    sin,
                    step,
                    kv_units,
                    layout,
                )
            )
            x = x + self._reduce(
                swiglu_mlp(
                    rms_norm(x, layer.post_norm, cfg.rms_norm_eps),
                    layer.gate,
                    layer.up,
                    layer.down,
                )
            )
        if not all_logits:
            x = x[torch.arange(x.shape[0], device=x.device), step.last]
        ready(len(self.layers) + 1)
        logits = F.linear(rms_norm(x, self.final_norm, cfg.rms_norm_eps), self.lm_head)
        if self.group is None:
            return logits
        return self.group.all_gather_last(logits)[..., : cfg.vocab_size]

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.group is None:
            return F.embedding(tokens, self.embed)
        local = tokens - self.config.vocab_start
        outside = (local < 0) | (local >= self.config.vocab_rows)
        x = F.embedding(local.masked_fill(outside, 0), self.embed)
        return self.group.all_reduce(x.masked_fill(outside.unsqueeze(-1), 0))

    def _reduce(self, partial: torch.Tensor) -> torch.Tensor:
        """A row-parallel projection's output: the sum of every shard's partial product."""
        return partial if self.group is None else self.group.all_reduce(partial)

    @staticmethod
    def _has_stale_slots(step: StepBatch) -> bool:
        return not bool(step.key_valid.all())

    def _attention(
        self,
        index: int,
        w: LayerWeights,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        step: StepBatch,
        kv_units: torch.Tensor,
        layout: KVLayout,
    ) -> torch.Tensor:
        cfg = self.config
        batch, queries, _ = x.shape
        q = F.linear(x, w.q, w.q_bias).view(batch, queries, cfg.num_heads, cfg.head_dim)
        k = F.linear(x, w.k, w.k_bias).view(batch, queries, cfg.num_kv_heads, cfg.head_dim)
        v = F.linear(x, w.v, w.v_bias).view(batch, queries, cfg.num_kv_heads, cfg.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        key_off, value_off = layout.unit_offset(index, False), layout.unit_offset(index, True)
        unit = kv_units.shape[1]
        kv_units.index_copy_(
            0, (step.write_units + key_off).flatten(), k[step.valid].reshape(-1, unit)
        )
        kv_units.index_copy_(
            0, (step.write_units + value_off).flatten(), v[step.valid].reshape(-1, unit)
        )
        if step.ragged:
            rows = step.ragged_units.shape[0]
            keys = kv_units[step.ragged_units + key_off].view(rows, cfg.num_kv_heads, cfg.head_dim)
            values = kv_units[step.ragged_units + value_off].view(
                rows, cfg.num_kv_heads, cfg.head_dim
            )
            out = ragged_decode_attention(
                q[:, 0], keys, values, step.key_lengths, step.key_sequence
            )
            return F.linear(out.unsqueeze(1), w.o)
        context = step.read_units.shape[1]
        keys = kv_units[step.read_units + key_off].view(
            batch, context, cfg.num_kv_heads, cfg.head_dim
        )
        values = kv_units[step.read_units + value_off].view(
            batch, context, cfg.num_kv_heads, cfg.head_dim
        )
        if self._has_stale_slots(step):
            stale = ~step.key_valid.view(batch, context, 1, 1)
            keys, values = keys.masked_fill(stale, 0), values.masked_fill(stale, 0)
        return F.linear(paged_attention(q, keys, values, step.mask), w.o)
