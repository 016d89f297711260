"""How a Llama-family model splits across a tensor-parallel group (Megatron-style).

Rank r of N holds: the q/k/v projections' rows of its heads and KV heads (column-parallel, biases too),
the o projection's columns of those heads (row-parallel: partial sums, all-reduced), the gate/up rows and
down columns of its share of the MLP (column- then row-parallel), and `vocab_rows` = ceil(V / N) rows of the
embedding and LM head (vocabulary-parallel; the last shard's rows past V are zero). Norms are replicated.
A shard is described by an ArchConfig whose head counts and MLP width are the shard's own, so the model and
KV code read the same fields at every degree, and TP 1 is the unsharded model.
"""

from __future__ import annotations

from dataclasses import replace

from aegaeon.errors import ConfigError
from aegaeon.models.config import ArchConfig
from aegaeon.weights.checkpoint import Checkpoint

# how each parameter splits: by rows (dim 0), by columns (dim 1), by vocabulary rows, or not at all
_ROWS = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "q_proj.bias", "k_proj.bias")
_ROWS += ("v_proj.bias", "gate_proj.weight", "up_proj.weight")
_COLUMNS = ("o_proj.weight", "down_proj.weight")
_VOCAB = ("model.embed_tokens.weight", "lm_head.weight")


def valid_degrees(config: ArchConfig, largest: int = 64) -> list[int]:
    """The tensor-parallel degrees that split `config`'s heads, KV heads and MLP evenly."""
    return [
        n
        for n in range(1, largest + 1)
        if config.num_heads % n == 0
        and config.num_kv_heads % n == 0
        and config.intermediate_size % n == 0
    ]


def check_degree(config: ArchConfig, tp_size: int, model: str) -> None:
    """ConfigError naming what does not divide, and the degrees that would, unless `tp_size` splits the model."""
    if tp_size < 1:
        raise ConfigError(f"--tp {tp_size}: the tensor-parallel degree must be at least 1")
    parts = {
        "attention heads": config.num_heads,
        "KV heads": config.num_kv_heads,
        "MLP columns": config.intermediate_size,
    }
    bad = [f"{count} {what}" for what, count in parts.items() if count % tp_size]
    if bad:
        raise ConfigError(
            f"model {model}: {' and '.join(bad)} do not divide across tensor-parallel degree {tp_size}: "
            f"use --tp among {valid_degrees(config)}"
        )


def shard_config(config: ArchConfig, rank: int, tp_size: int, model: str = "model") -> ArchConfig:
    """The ArchConfig of rank `rank`'s shard of an unsharded `config`."""
    if config.tp_size != 1:
        raise ConfigError(f"model {model}: already a shard ({config.tp_rank}/{config.tp_size})")
    check_degree(config, tp_size, model)
    if not 0 <= rank < tp_size:
        raise ConfigError(f"tensor-parallel rank {rank} is outside [0, {tp_size})")
    if tp_size == 1:
        return config
    return replace(
        config,
        num_heads=config.num_heads // tp_size,
        num_kv_heads=config.num_kv_heads // tp_size,
        intermediate_size=config.intermediate_size // tp_size,
        tp_size=tp_size,
        tp_rank=rank,
    )


def shard_checkpoint(checkpoint: Checkpoint, rank: int, tp_size: int) -> Checkpoint:
    """The same checkpoint files, seen as rank `rank`'s shard (the host cache slices while it loads)."""
    if tp_size == 1:
        return checkpoint
    return replace(
        checkpoint, config=shard_config(checkpoint.config, rank, tp_size, checkpoint.name)
    )


def rank_config(shard: ArchConfig, rank: int) -> ArchConfig:
    """Another rank's shard of the same model (shapes are equal at every rank; offsets differ)."""
    return replace(shard, tp_rank=rank)


def shard_rule(name: str) -> str:
    """'rows', 'columns', 'vocab' or 'replicated': how the parameter `name` splits."""
    if name in _VOCAB:
        return "vocab"
    if name.endswith(_ROWS):
        return "rows"
    if name.endswith(_COLUMNS):
        return "columns"
    return "replicated"


def shard_tensor(name: str, full, shard: ArchConfig):
    """Rank `shard.tp_rank`'s part of the unsharded parameter `full` (a torch tensor; a view where it can
    be). Vocabulary shards past the vocabulary are padded with zero rows."""
    import torch

    rule, rank, n = shard_rule(name), shard.tp_rank, shard.tp_size
    if n == 1 or rule == "replicated":
        return full
    if rule == "rows":
        rows = full.shape[0] // n
        return full[rank * rows : (rank + 1) * rows]
    if rule == "columns":
        cols = full.shape[1] // n
        return full[:, rank * cols : (rank + 1) * cols]
    start = shard.vocab_start
    part = full[start : start + shard.vocab_rows]
    if part.shape[0] == shard.vocab_rows:
        return part
    padded = torch.zeros((shard.vocab_rows,) + tuple(full.shape[1:]), dtype=full.dtype)
    padded[: part.shape[0]] = part
    return padded


def open_shard(path, name: str, tp_size: int = 1, rank: int = 0) -> Checkpoint:
    """Open and validate a checkpoint as rank `rank`'s shard (the whole model at TP 1); errors name the
    model, including a degree its heads do not divide by."""
    from aegaeon.weights.checkpoint import open_checkpoint

    return shard_checkpoint(open_checkpoint(path, name), rank, tp_size)
