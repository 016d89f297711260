"""Memory unification: weights and KV blocks of different shapes in one arena."""

import pytest
import torch

from aegaeon.arena import Arena
from aegaeon.errors import ArenaTooSmallError, InvalidHandleError

SLAB = 64 * 1024
BLOCK_A = 16 * 1024  # a KV block of a model of shape A (4 per slab)
BLOCK_B = 24 * 1024  # shape B (2 per slab)


def fill(arena: Arena, handle: int, seed: int) -> torch.Tensor:
    view = arena.block_view(handle, torch.float32)
    view.copy_(torch.randn(view.numel(), generator=torch.Generator().manual_seed(seed)))
    return view.clone()


def test_blocks_are_typed_views_into_the_arena_buffer():
    arena = Arena(8 * SLAB, SLAB)
    h = arena.allocate_block(BLOCK_A)
    view = arena.block_view(h, torch.float16, (2, BLOCK_A // 4))
    view.fill_(1.5)
    raw = arena.buffer[h : h + BLOCK_A].view(torch.float16)
    assert torch.equal(raw, torch.full_like(raw, 1.5))
    assert view.data_ptr() == arena.buffer.data_ptr() + h
    with pytest.raises(InvalidHandleError, match="not the"):
        arena.block_view(h, torch.float32, (3, 3))


def test_weights_a_then_b_then_a_preserve_live_kv_blocks():
    arena = Arena(16 * SLAB, SLAB)
    assert arena.place_weights(2 * SLAB).ready
    weights_a = arena.weight_view(0, torch.float32, (2 * SLAB // 4,))
    weights_a.fill_(3.0)

    live = {}
    for i in range(8):
        h = arena.allocate_block(BLOCK_A if i % 2 else BLOCK_B)
        live[h] = fill(arena, h, seed=i)
    # KV slabs are taken from the end of the arena, away from the weights.
    assert min(live) >= 8 * SLAB

    placement = arena.place_weights(int(5.5 * SLAB))  # model B: 6 slabs
    assert placement.ready and placement.moved == {}
    assert arena.usage().weight_region_bytes == 6 * SLAB

    placement = arena.place_weights(2 * SLAB)  # model A again
    assert placement.ready
    assert arena.usage().weight_region_bytes == 2 * SLAB
    for h, expected in live.items():
        assert torch.equal(arena.block_view(h, torch.float32), expected)


def test_growing_weights_relocate_blocks_in_the_way():
    arena = Arena(8 * SLAB, SLAB)
    arena.place_weights(SLAB)
    # Fill 6 of the 7 KV slabs so the 6th lands at slab 2; then free the top one.
    handles = [arena.allocate_block(BLOCK_A) for _ in range(6 * 4)]
    top = [h for h in handles if h // SLAB == 7]
    for h in top:
        arena.free_block(h)
    live = {h: fill(arena, h, seed=h) for h in handles if h not in top}
    in_the_way = sorted(h for h in live if h < 3 * SLAB)
    assert in_the_way, "test setup: some blocks must sit where the weights grow"

    placement = arena.place_weights(3 * SLAB)
    assert placement.ready
    assert sorted(placement.moved) == in_the_way
    for old, expected in live.items():
        now = placement.moved.get(old, old)
        assert now >= 3 * SLAB
        assert torch.equal(arena.block_view(now, torch.float32), expected)
    arena.allocator.check_integrity()


def test_blocks_that_cannot_move_are_reported_for_swap_and_placement_finishes_after():
    arena = Arena(6 * SLAB, SLAB)
    arena.place_weights(SLAB)
    handles = [arena.allocate_block(BLOCK_B) for _ in range(5 * 2)]  # arena full
    data = {h: fill(arena, h, seed=h) for h in handles}

    placement = arena.place_weights(3 * SLAB)
    assert not placement.ready
    assert sorted(placement.needs_swap) == sorted(h for h in handles if h < 3 * SLAB)
    with pytest.raises(RuntimeError, match="overlaps live KV blocks"):
        arena.weight_view(0, torch.float32, (16,))

    host = {h: arena.block_view(h, torch.float32).clone() for h in placement.needs_swap}  # swap out
    for h in placement.needs_swap:
        arena.free_block(h)
    assert arena.place_weights(3 * SLAB).ready
    for h, expected in data.items():
        if h not in host:
            assert torch.equal(arena.block_view(h, torch.float32), expected)
    # Shrink back and swap in: the blocks find room again, bytes intact.
    arena.place_weights(SLAB)
    for expected in host.values():
        h = arena.allocate_block(BLOCK_B)
        arena.block_view(h, torch.float32).copy_(expected)
        assert torch.equal(arena.block_view(h, torch.float32), expected)
    arena.allocator.check_integrity()


def test_usage_reports_weights_kv_and_fragmentation():
    arena = Arena(4 * SLAB, SLAB)
    arena.place_weights(SLAB + 100)
    arena.allocate_block(BLOCK_B)
    usage = arena.usage()
    assert usage.weight_bytes == SLAB + 100
    assert usage.weight_region_bytes == 2 * SLAB
    assert usage.kv_used_bytes == BLOCK_B
    assert usage.kv_free_bytes == 2 * SLAB - BLOCK_B
    assert usage.internal_fragmentation_bytes == SLAB - 2 * BLOCK_B
    assert usage.external_fragmentation_bytes == BLOCK_B
    assert usage.slabs_per_block_size == {BLOCK_B: 1}


def test_bad_sizes_name_the_value_and_the_limit():
    with pytest.raises(ArenaTooSmallError, match="cannot hold one slab"):
        Arena(SLAB - 1, SLAB)
    with pytest.raises(ArenaTooSmallError, match="multiple of 256"):
        Arena(4 * SLAB, 1000)
    arena = Arena(4 * SLAB, SLAB)
    with pytest.raises(
        ArenaTooSmallError, match=f"{5 * SLAB} bytes do not fit the arena of {4 * SLAB}"
    ):
        arena.place_weights(5 * SLAB)
    with pytest.raises(IndexError, match="outside the weight region"):
        arena.weight_view(0, torch.float32, (4,))
    arena.allocator.check_integrity()
