"""Decode attention over keys laid back to back against the padded reference."""

import pytest
import torch

from aegaeon.kv.batch import SeqChunk, build_step
from aegaeon.models.layers import paged_attention, ragged_decode_attention


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2), (8, 1)])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_ragged_decode_attention_matches_padded_attention(heads, kv_heads, dtype, tolerance):
    torch.manual_seed(0)
    lengths = [1, 7, 130, 2, 64]
    dim, batch, longest = 16, len(lengths), max(lengths)
    q = torch.randn(batch, heads, dim).to(dtype)
    padded_k = torch.randn(batch, longest, kv_heads, dim).to(dtype)
    padded_v = torch.randn(batch, longest, kv_heads, dim).to(dtype)
    mask = torch.arange(longest).view(1, 1, -1) < torch.tensor(lengths).view(-1, 1, 1)
    expected = paged_attention(q.float().unsqueeze(1), padded_k.float(), padded_v.float(), mask)[
        :, 0
    ]

    keys = torch.cat([padded_k[b, :n] for b, n in enumerate(lengths)])
    values = torch.cat([padded_v[b, :n] for b, n in enumerate(lengths)])
    sequence = torch.repeat_interleave(torch.arange(batch), torch.tensor(lengths))
    got = ragged_decode_attention(q, keys, values, torch.tensor(lengths), sequence)
    assert got.dtype == dtype and got.shape == (batch, heads * dim)
    torch.testing.assert_close(got.float(), expected, rtol=tolerance, atol=tolerance)


def test_a_decode_step_lists_each_sequences_key_units_in_order():
    block_size, units_per_row = 4, 2
    chunks = [SeqChunk([5], 6, [40, 12]), SeqChunk([9], 0, [7]), SeqChunk([3], 4, [20, 30])]
    step = build_step(chunks, block_size, units_per_row)
    assert step.ragged and step.read_units is None
    assert step.key_lengths.tolist() == [7, 1, 5]
    assert step.key_sequence.tolist() == [0] * 7 + [1] + [2] * 5
    expected = []
    for chunk in chunks:
        for pos in range(chunk.start + 1):
            first = chunk.block_units[pos // block_size] + (pos % block_size) * units_per_row
            expected.append([first, first + 1])
    assert step.ragged_units.tolist() == expected
    written = [
        chunk.block_units[chunk.start // block_size] + (chunk.start % block_size) * units_per_row
        for chunk in chunks
    ]
    assert step.write_units[:, 0].tolist() == written


def test_a_prefill_step_keeps_the_padded_layout():
    step = build_step([SeqChunk([1, 2, 3], 0, [0]), SeqChunk([4], 2, [8])], 4)
    assert not step.ragged and step.read_units.shape == (2, 3, 1) and step.mask.shape == (2, 3, 3)


@pytest.mark.parametrize("variant", ["llama", "yi", "qwen2"])
def test_a_model_decodes_the_same_logits_from_either_layout(tmp_path, variant):
    from tests.models.reference import BareModel, make_variant

    bare = BareModel(make_variant(tmp_path, variant))
    prompts = [
        [3, 1, 4, 1, 5],
        list(range(7, 20)),
        [2, 7],
    ]  # ends inside a block: the decode token fits
    bare.step(prompts)
    chunks = [
        SeqChunk([9], len(p), [bare.kv.block_unit(h) for h in bare.blocks[i]])
        for i, p in enumerate(prompts)
    ]
    logits = {}
    for ragged in (False, True):
        step = build_step(chunks, bare.kv.block_size, bare.kv.units_per_row, ragged_decode=ragged)
        assert step.ragged == ragged
        logits[ragged] = bare.model.forward(step, bare.units, bare.kv)
    torch.testing.assert_close(logits[True], logits[False], rtol=1e-5, atol=1e-5)
