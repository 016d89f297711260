"""The C++ slab allocator through its Python binding, against a pure-Python model."""

import copy
import random

import pytest

from aegaeon.errors import InvalidHandleError, OutOfBlocksError
from aegaeon.native import _C
from tests.csrc.slab_model import SlabModel

SLAB = 4096


def test_each_slab_serves_one_block_size_and_empty_slabs_return_to_the_pool():
    alloc = _C.SlabAllocator(8, SLAB)
    small = [alloc.allocate(256) for _ in range(20)]  # 16 per slab -> 2 slabs
    medium = [alloc.allocate(1000) for _ in range(5)]  # 4 per slab -> 2 slabs
    large = [alloc.allocate(4096) for _ in range(3)]  # 1 per slab -> 3 slabs
    per_size = alloc.stats()["per_block_size"]
    assert {size: e["slabs"] for size, e in per_size.items()} == {256: 2, 1000: 2, 4096: 3}
    slab_sizes = {}
    for size, handles in ((256, small), (1000, medium), (4096, large)):
        for h in handles:
            assert slab_sizes.setdefault(h // SLAB, size) == size
    for h in small + large:
        alloc.free(h)
    stats = alloc.stats()
    assert stats["free_slabs"] == 6
    assert stats["used_bytes"] == 5 * 1000
    assert stats["internal_fragmentation_bytes"] == 2 * (SLAB - 4 * 1000)
    assert stats["external_fragmentation_bytes"] == 3 * 1000
    alloc.check_integrity()


def test_exhaustion_raises_and_leaves_the_state_unchanged():
    alloc = _C.SlabAllocator(2, SLAB)
    handles = [alloc.allocate(2048) for _ in range(4)]
    before = alloc.stats()
    with pytest.raises(OutOfBlocksError, match="all 2 slabs"):
        alloc.allocate(2048)
    with pytest.raises(OutOfBlocksError):
        alloc.allocate(64)
    assert alloc.stats() == before
    alloc.check_integrity()
    for h in handles:
        alloc.free(h)
    assert alloc.stats()["free_slabs"] == 2


@pytest.mark.parametrize("bad", [-1, 1, 2047, 2 * SLAB, 10**12])
def test_foreign_handles_are_rejected_without_damage(bad):
    alloc = _C.SlabAllocator(2, SLAB)
    live = alloc.allocate(2048)
    before = alloc.stats()
    with pytest.raises(InvalidHandleError, match=str(bad)):
        alloc.free(bad if bad != 1 else live + 1)
    assert alloc.stats() == before
    assert alloc.is_allocated(live)


def test_double_free_is_rejected():
    alloc = _C.SlabAllocator(2, SLAB)
    keep = alloc.allocate(512)
    h = alloc.allocate(512)
    alloc.free(h)
    before = alloc.stats()
    with pytest.raises(InvalidHandleError, match="not allocated"):
        alloc.free(h)
    assert alloc.stats() == before
    alloc.free(keep)


@pytest.mark.parametrize("size", [0, -4, SLAB + 1])
def test_invalid_block_sizes_name_the_value_and_the_limit(size):
    alloc = _C.SlabAllocator(2, SLAB)
    with pytest.raises(InvalidHandleError, match=f"block size {size} bytes.*{SLAB}"):
        alloc.allocate(size)
    alloc.check_integrity()


@pytest.mark.parametrize("num_slabs,slab_bytes", [(0, SLAB), (-1, SLAB), (4, 0)])
def test_invalid_allocator_geometry_is_rejected(num_slabs, slab_bytes):
    with pytest.raises(InvalidHandleError):
        _C.SlabAllocator(num_slabs, slab_bytes)


def test_growing_the_weight_region_drains_occupied_slabs():
    alloc = _C.SlabAllocator(4, SLAB)
    handles = [alloc.allocate(1024) for _ in range(16)]  # all four slabs
    assert alloc.set_reserved_slabs(2) == 2
    draining = alloc.draining_handles()
    assert sorted(draining) == sorted(h for h in handles if h < 2 * SLAB)
    with pytest.raises(OutOfBlocksError):
        alloc.allocate(1024)  # draining slabs take no new blocks
    for h in draining:
        alloc.free(h)
    stats = alloc.stats()
    assert (stats["reserved_slabs"], stats["draining_slabs"], stats["free_slabs"]) == (2, 0, 0)
    assert alloc.set_reserved_slabs(0) == 0
    assert alloc.stats()["free_slabs"] == 2
    alloc.check_integrity()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_operations_match_the_python_model(seed):
    rng = random.Random(seed)
    num_slabs, sizes = 12, [128, 200, 1024, 1500, 4096]
    alloc, model = _C.SlabAllocator(num_slabs, SLAB), SlabModel(num_slabs, SLAB)
    live: list[int] = []
    runs: list[tuple[int, int]] = []  # resident runs (first slab, slabs)
    for step in range(3000):
        roll = rng.random()
        if roll < 0.45:
            size = rng.choice(sizes)
            try:
                expected = model.allocate(size)
            except MemoryError:
                with pytest.raises(OutOfBlocksError):
                    alloc.allocate(size)
            else:
                assert alloc.allocate(size) == expected, f"step {step}"
                live.append(expected)
        elif roll < 0.9 and live:
            h = live.pop(rng.randrange(len(live)))
            model.free(h)
            alloc.free(h)
        elif roll < 0.95:
            bogus = rng.randrange(-10, num_slabs * SLAB + 10)
            if bogus not in live:
                with pytest.raises(InvalidHandleError):
                    alloc.free(bogus)
        elif roll < 0.97:
            count = rng.randrange(0, 4)
            try:
                expected = model.set_reserved_slabs(count)
            except ValueError:  # a resident run is in the way
                before = alloc.stats()
                with pytest.raises(InvalidHandleError, match="resident"):
                    alloc.set_reserved_slabs(count)
                assert alloc.stats() == before
            else:
                assert alloc.set_reserved_slabs(count) == expected
            assert sorted(alloc.draining_handles()) == sorted(
                h for h in live if h // SLAB < model.boundary
            )
        elif roll < 0.985 or not runs:
            count = rng.randrange(1, 4)
            try:
                expected = model.claim_run(count)
            except MemoryError:
                with pytest.raises(OutOfBlocksError):
                    alloc.claim_run(count)
            else:
                assert alloc.claim_run(count) == expected, f"step {step}"
                runs.append((expected, count))
        else:
            first, count = runs.pop(rng.randrange(len(runs)))
            model.release_run(first, count)
            alloc.release_run(first, count)
            with pytest.raises(InvalidHandleError, match="not resident"):
                alloc.release_run(first, count)  # twice
        assert alloc.stats() == model.stats(), f"step {step}"
        if (
            step % 10 == 0
        ):  # would a run fit once some runs were released? (the model: release, then claim)
            released = rng.sample(runs, k=rng.randint(0, len(runs)))
            count = rng.randrange(1, 6)
            trial = copy.deepcopy(model)
            for first, length in released:
                trial.release_run(first, length)
            try:
                trial.claim_run(count)
                expected = True
            except MemoryError:
                expected = False
            before = alloc.stats()
            fits = alloc.run_fits_after_release(
                count, [f for f, _ in released], [n for _, n in released]
            )
            assert fits == expected, f"step {step}"
            assert alloc.stats() == before  # nothing released
        if step % 100 == 0:
            alloc.check_integrity()
    alloc.check_integrity()


def test_the_extension_names_the_torch_it_was_built_against_and_a_mismatch_is_refused():
    import torch

    from aegaeon.errors import ConfigError
    from aegaeon.native import check_torch_release

    assert _C.built_with_torch.split(".")[:2] == torch.__version__.split("+")[0].split(".")[:2]
    check_torch_release("2.13.0", "2.13.1+cpu")  # a patch release or a local tag keeps the ABI
    with pytest.raises(
        ConfigError, match="built against torch 2.12.0, but torch 2.13.0 is installed"
    ):
        check_torch_release("2.12.0", "2.13.0")


def test_a_run_fits_after_release_only_where_the_released_slabs_are_contiguous():
    alloc = _C.SlabAllocator(6, SLAB)
    a = alloc.claim_run(2)  # slabs 0-1
    block = alloc.allocate(256)  # KV takes the highest slab, 5
    b = alloc.claim_run(2)  # slabs 2-3; slab 4 stays free
    assert (a, b) == (0, 2) and alloc.handles_in_slab(5) == [block]
    assert not alloc.run_fits_after_release(2, [], [])  # one free slab
    assert not alloc.run_fits_after_release(3, [a], [2])  # 0-1 and 4 are apart
    assert alloc.run_fits_after_release(3, [b], [2])  # 2-4
    assert alloc.run_fits_after_release(5, [a, b], [2, 2])  # 0-4
    assert not alloc.run_fits_after_release(6, [a, b], [2, 2])  # the KV slab stays
    assert alloc.stats()["resident_slabs"] == 4  # nothing was released
