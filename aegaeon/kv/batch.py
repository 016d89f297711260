"""Per-step indices for a batch of sequences over paged KV blocks.

Prefill and decode are one case: each sequence brings `new_tokens` starting
at position `start` (0 for a prompt, its length so far for a decode step).
Queries are padded to the longest chunk and keys to the longest context; a
query may attend a key at or before its own position, which is also what
keeps padded queries (position 0) well defined. Key slots past a sequence's
context (the unwritten tail of its last block, padding) hold whatever bytes
the arena had, possibly NaN patterns; `key_valid` lets attention zero them,
since a zero attention weight times NaN is still NaN.

A decode step (one new token per sequence) is laid out ragged instead: the
keys of all sequences back to back, each tagged with its sequence. Padding
every sequence to the longest context made a step cost batch x longest
context; ragged, it costs the summed context, as paged attention does on a GPU
and as the cost model assumes (`aegaeon bench attention` times both layouts).
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
    write_units: (
        torch.Tensor
    )  # [valid tokens, units_per_row] arena units (layer 0, key) of each new token
    last: torch.Tensor  # [B] index of each sequence's last query token
    # Padded layout (prefill, mixed chunks):
    read_units: torch.Tensor | None = (
        None  # [B, C, units_per_row] arena units (layer 0, key) of each position
    )
    mask: torch.Tensor | None = None  # [B, Q, C] bool
    key_valid: torch.Tensor | None = None  # [B, C] bool: positions inside each sequence's context
    # Ragged layout (decode: Q == 1), T = summed context:
    ragged_units: torch.Tensor | None = (
        None  # [T, units_per_row] arena units of every sequence's keys, in order
    )
    key_lengths: torch.Tensor | None = None  # [B] keys of each sequence
    key_sequence: torch.Tensor | None = None  # [T] the sequence each key belongs to

    @property
    def ragged(self) -> bool:
        return self.ragged_units is not None


def build_step(
    chunks: list[SeqChunk],
    block_size: int,
    units_per_row: int = 1,
    device: torch.device | str = "cpu",
    ragged_decode: bool = True,
) -> StepBatch:
    """The step's index tensors; a decode step is laid out ragged unless `ragged_decode` is False."""
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
    within_row = torch.arange(units_per_row)
    write_first = (
        torch.gather(table, 1, positions // block_size) + (positions % block_size) * units_per_row
    )[valid]
    write_units = write_first.unsqueeze(-1) + within_row
    lengths = torch.tensor([c.start + len(c.new_tokens) for c in chunks])
    last = valid.sum(dim=1) - 1
    common = (tokens, positions, valid, write_units, last)
    if queries == 1 and ragged_decode:
        key_sequence = torch.repeat_interleave(torch.arange(batch), lengths)
        key_pos = (
            torch.arange(int(lengths.sum())) - (torch.cumsum(lengths, 0) - lengths)[key_sequence]
        )
        ragged_first = (
            table[key_sequence, key_pos // block_size] + (key_pos % block_size) * units_per_row
        )
        ragged = (ragged_first.unsqueeze(-1) + within_row, lengths, key_sequence)
        tensors = [t.to(device) for t in common + ragged]
        return StepBatch(
            *tensors[:5], ragged_units=tensors[5], key_lengths=tensors[6], key_sequence=tensors[7]
        )
    key_pos = torch.arange(context)
    read_first = table[:, key_pos // block_size] + (key_pos % block_size) * units_per_row
    read_units = read_first.unsqueeze(-1) + within_row
    mask = key_pos.view(1, 1, -1) <= positions.unsqueeze(-1)
    key_valid = key_pos.view(1, -1) < lengths.view(-1, 1)
    tensors = [t.to(device) for t in common + (read_units, mask, key_valid)]
    return StepBatch(*tensors[:5], read_units=tensors[5], mask=tensors[6], key_valid=tensors[7])
