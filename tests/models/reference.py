"""Helpers: tiny checkpoints and a bare model over a private arena (no engine)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from aegaeon.arena import Arena
from aegaeon.kv.batch import SeqChunk, build_step
from aegaeon.kv.layout import KVLayout
from aegaeon.models.config import load_arch_config
from aegaeon.models.llama import LlamaModel
from aegaeon.models.maker import config_for, make_model
from aegaeon.weights.layout import WeightLayout

VARIANTS = {
    # Llama-2 style: multi-head attention
    "llama": dict(
        arch="llama", layers=2, hidden=64, heads=4, kv_heads=4, intermediate=160, vocab=300
    ),
    # Yi style: Llama architecture with grouped-query attention (8 heads share 2 KV heads) and tied embeddings off
    "yi": dict(arch="llama", layers=3, hidden=64, heads=8, kv_heads=2, intermediate=96, vocab=320),
    # Qwen2/2.5: qkv bias, GQA, head size that makes KV rows a non-power-of-two number of bytes
    "qwen2": dict(
        arch="qwen2", layers=2, hidden=96, heads=6, kv_heads=3, intermediate=128, vocab=400
    ),
}


# Two model shapes that share one arena in engine and node tests.
SMALL_SHAPE = config_for(
    "llama", layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=400
)
LARGE_SHAPE = config_for(
    "qwen2", layers=3, hidden=96, heads=6, kv_heads=3, intermediate=192, vocab=500
)


def make_variant(root: Path, variant: str, seed: int = 0, **overrides) -> Path:
    config = config_for(**{**VARIANTS[variant], **overrides})
    return make_model(root / variant, config, seed=seed)


class BareModel:
    """One model bound to arena views, with blocks per sequence; drives forward() directly."""

    def __init__(
        self,
        path: Path,
        dtype: torch.dtype = torch.float32,
        block_size: int = 4,
        slab_bytes: int = 64 * 1024,
    ):
        self.config = load_arch_config(path)
        tensors = load_file(str(path / "model.safetensors"))
        self.weights = WeightLayout.for_config(self.config, dtype)
        self.arena = Arena(self.weights.total_bytes + 64 * slab_bytes, slab_bytes)
        self.arena.place_weights(self.weights.total_bytes)
        region = self.arena.weight_view(0, torch.uint8, (self.weights.total_bytes,))
        views = self.weights.views(region)
        for name, view in views.items():
            view.copy_(tensors[name].to(dtype))
        # Poison the KV region: slots a sequence has not written must never reach its output.
        self.arena.buffer[-(-self.weights.total_bytes // slab_bytes) * slab_bytes :].fill_(0xFF)
        self.model = LlamaModel(self.config)
        self.model.bind(views)
        self.kv = KVLayout(
            self.config.num_layers, block_size, self.config.kv_size, dtype, slab_bytes
        )
        self.units = self.kv.units_view(self.arena.buffer)
        self.blocks: list[list[int]] = []
        self.cached: list[int] = []

    def step(self, new_tokens: list[list[int]], all_logits: bool = False) -> torch.Tensor:
        """Append tokens to each sequence (new sequences are added on the first call)."""
        while len(self.blocks) < len(new_tokens):
            self.blocks.append([])
            self.cached.append(0)
        chunks = []
        for i, tokens in enumerate(new_tokens):
            total = self.cached[i] + len(tokens)
            while len(self.blocks[i]) * self.kv.block_size < total:
                self.blocks[i].append(self.arena.allocate_block(self.kv.block_bytes))
            chunks.append(
                SeqChunk(tokens, self.cached[i], [self.kv.block_unit(h) for h in self.blocks[i]])
            )
            self.cached[i] = total
        step = build_step(chunks, self.kv.block_size, self.kv.units_per_row)
        return self.model.forward(step, self.units, self.kv, all_logits=all_logits)
