"""Per-step indices for a batch of sequences over paged KV blocks.

Prefill and decode are one case: each sequence brings `new_tokens` starting
at position `start` (0 for a prompt, its length so far for a decode step).
Queries are padded to the longest chunk and keys to the longest context; a
query may attend a key at or before its own position, which is also what
keeps padded queries (position 0) well defined. Key slots past a sequence's
context (the unwritten tail of its last block, padding) hold whatever bytes
the arena had, possibly NaN patterns; `key_valid` lets attention zero them,
since a zero attention weight times NaN is still NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SeqChunk:
    new_tokens: list[int]
    start: int  # position of new_tokens[0]
    block_units: list[int]  # first arena unit of each KV block of the sequence


@dataclass
class StepBatch:
    tokens: torch.Tensor  # [B, Q] token ids (0 where padded)
    positions: torch.Tensor  # [B, Q]
    valid: torch.Tensor  # [B, Q] bool, real query tokens
    write_units: torch.Tensor  # [valid tokens, units_per_row] arena units (layer 0, key) of each new token
    read_units: torch.Tensor  # [B, C, units_per_row] arena units (layer 0, key) of each context position
    mask: torch.Tensor  # [B, Q, C] bool
    key_valid: torch.Tensor  # [B, C] bool: positions inside each sequence's context
    last: torch.Tensor  # [B] index of each sequence's last query token


def build_step(chunks: list[SeqChunk], block_size: int, units_per_row: int = 1,
               device: torch.device | str = "cpu") -> StepBatch:
    batch = len(chunks)
    queries = max(len(c.new_tokens) for c in chunks)
    context = max(c.start + len(c.new_tokens) for c in chunks)
    table_width = max(max(len(c.block_units) for c in chunks), -(-context // block_size))
    tokens = torch.zeros(batch, queries, dtype=torch.long)
    positions = torch.zeros(batch, queries, dtype=torch.long)
    valid = torch.zeros(batch, queries, dtype=torch.bool)
    table = torch.zeros(batch, table_width, dtype=torch.long)
    for b, chunk in enumerate(chunks):
        n = len(chunk.new_tokens)
        tokens[b, :n] = torch.tensor(chunk.new_tokens, dtype=torch.long)
        positions[b, :n] = torch.arange(chunk.start, chunk.start + n)
        valid[b, :n] = True
        table[b, : len(chunk.block_units)] = torch.tensor(chunk.block_units, dtype=torch.long)
    key_pos = torch.arange(context)
    within_row = torch.arange(units_per_row)
    read_first = table[:, key_pos // block_size] + (key_pos % block_size) * units_per_row
    write_first = (torch.gather(table, 1, positions // block_size) + (positions % block_size) * units_per_row)[valid]
    read_units = read_first.unsqueeze(-1) + within_row
    write_units = write_first.unsqueeze(-1) + within_row
    mask = key_pos.view(1, 1, -1) <= positions.unsqueeze(-1)
    lengths = torch.tensor([c.start + len(c.new_tokens) for c in chunks])
    key_valid = key_pos.view(1, -1) < lengths.view(-1, 1)
    last = valid.sum(dim=1) - 1
    tensors = (tokens, positions, valid, write_units, read_units, mask, key_valid, last)
    return StepBatch(*(t.to(device) for t in tensors))
