"""Resident models (EngineConfig.residency): weights stay in free arena slabs after their turn, so a switch
back re-binds without a copy; KV has priority (a resident model is evicted before a request's KV is swapped
out), and greedy outputs are the same as without residency."""

import random

import pytest

from aegaeon.config.serving import EngineConfig
from aegaeon.engine.executor import StepExecutor
from aegaeon.errors import ConfigError
from aegaeon.models.maker import make_model
from aegaeon.models.sampler import SamplingParams
from tests.models.reference import LARGE_SHAPE, SMALL_SHAPE

SLAB = 64 * 1024


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    root = tmp_path_factory.mktemp("residency")
    return {
        "big": str(make_model(root / "big", LARGE_SHAPE, seed=1)),
        "small": str(make_model(root / "small", SMALL_SHAPE, seed=2)),
        "small2": str(make_model(root / "small2", SMALL_SHAPE, seed=3)),
        "small3": str(make_model(root / "small3", SMALL_SHAPE, seed=4)),
    }


def _rotate(
    executor: StepExecutor,
    models: list[str],
    turns: int,
    prefetch: bool,
    max_tokens=40,
    per_model=1,
    steps=2,
):
    """`per_model` requests per model, decoded in turns of `steps` steps, the models in rotation."""
    executor.host_cache.join()
    owner = {}
    for i in range(len(models) * per_model):
        owner[i] = models[i % len(models)]
        executor.add(i, owner[i], [3, 5, 7, 11 + i], SamplingParams(max_tokens=max_tokens))
    outputs = {i: [] for i in owner}
    finished: set[int] = set()
    records = []
    for turn in range(turns):
        model = models[turn % len(models)]
        executor.set_upcoming([models[(turn + k) % len(models)] for k in range(1, len(models))])
        records.append(executor.switch_to(model))
        if prefetch:
            executor.prefetch(models[(turn + 1) % len(models)])
        for _ in range(steps):
            batch = [i for i, m in owner.items() if m == model and i not in finished]
            if batch:
                for update in executor.step(model, batch):
                    outputs[update.request_id] += update.new_tokens
                    if update.done:
                        finished.add(update.request_id)
        _check_books(executor)
    return outputs, records


def _check_books(executor: StepExecutor) -> None:
    """The allocator is consistent, resident runs hold no KV block and do not overlap each other."""
    arena = executor.arena
    arena.allocator.check_integrity()
    resident = executor.runner.resident
    if resident is None:
        return
    slabs: set[int] = set()
    for run in resident.runs.values():
        span = set(range(run.first_slab, run.first_slab + arena.slabs_for(run.nbytes)))
        assert not slabs & span, "two resident runs share a slab"
        slabs |= span
        assert all(arena.allocator.is_resident(s) for s in span)
    for seq in executor._seqs.values():
        assert not {h // arena.slab_bytes for h in seq.blocks} & slabs, (
            "a KV block in a resident run"
        )
    assert arena.allocator.stats()["resident_slabs"] == len(slabs)
    runner = executor.runner
    if runner.active is not None and runner.active_slot == "run":
        assert runner.active in resident.intact, "the bound model has no intact run"
    # the weight region is only ever the bound model's (a stranded region would keep slabs from KV)
    if runner.active_slot != "arena" or runner.active is None:
        assert arena.weight_bytes == 0, f"a weight region of {arena.weight_bytes} bytes nobody uses"
    else:
        assert arena.weight_bytes >= runner.entries[runner.active].weights.total_bytes


def _count_paths(ex: StepExecutor) -> dict:
    """Counts how often KV took a resident model's slabs, a switch fell back to the weight region, and the
    region became a run."""
    runner, counts = ex.runner, {"kv_evictions": 0, "fallbacks": 0, "region_to_run": 0}
    reclaim, switch, region_to_run = (
        runner.kv.reclaim,
        runner._switch_resident,
        runner._region_to_run,
    )

    def counted_reclaim():
        took = reclaim()
        counts["kv_evictions"] += took
        return took

    def counted_switch(entry):
        record = switch(entry)
        counts["fallbacks"] += record is None
        return record

    def counted_region_to_run():
        was_region = runner.active is not None and runner.active_slot == "arena"
        region_to_run()
        counts["region_to_run"] += was_region and runner.active_slot == "run"

    runner.kv.reclaim, runner._switch_resident = counted_reclaim, counted_switch
    runner._region_to_run = counted_region_to_run
    return counts


def test_every_model_stays_resident_and_later_turns_copy_nothing(four):
    models = list(four)
    config = EngineConfig(slab_bytes=SLAB, kv_bytes=8 * 2**20)
    with StepExecutor(four, config) as plain:
        expected, _ = _rotate(plain, models, 12, prefetch=False)
    with StepExecutor(
        four, EngineConfig(slab_bytes=SLAB, kv_bytes=8 * 2**20, residency=True)
    ) as ex:
        outputs, records = _rotate(ex, models, 12, prefetch=False)
        assert sorted(ex.resident_models()) == sorted(models)
        assert ex.usage().resident_bytes > 0
    assert outputs == expected
    copied = [r.bytes_copied for r in records]
    assert all(c > 0 for c in copied[:4]) and copied[4:] == [0] * 8, copied
    assert all(r.resident and r.kv_swapped_out == 0 for r in records[4:])


def test_prefetch_with_residency_copies_into_runs_and_keeps_the_outputs(four):
    models = list(four)
    with StepExecutor(four, EngineConfig(slab_bytes=SLAB, kv_bytes=8 * 2**20)) as plain:
        expected, _ = _rotate(plain, models, 12, prefetch=False)
    config = EngineConfig(slab_bytes=SLAB, kv_bytes=8 * 2**20, residency=True, prefetch=True)
    with StepExecutor(four, config) as ex:
        outputs, records = _rotate(ex, models, 12, prefetch=True)
        assert ex.runner.staging is None  # the runs replace the staging slot
    assert outputs == expected
    # the first switch copies; the next three were prefetched into runs; then all are resident
    assert records[0].bytes_copied > 0
    assert all("wait_prefetch" in r.stages for r in records[1:4])
    assert all(r.resident for r in records[4:])


def test_kv_has_priority_resident_models_are_evicted_before_any_swap_out(four):
    """An arena that holds the three small models with two slabs to spare: nine growing requests need the
    slabs the resident models hold; they get them (no swap-out while a resident model is left), outputs
    unchanged. (Models of one size, so that no run is refused for want of contiguous slabs.)"""
    three = {m: four[m] for m in ("small", "small2", "small3")}
    models = list(three)
    with StepExecutor(three, EngineConfig(slab_bytes=SLAB, kv_bytes=8 * 2**20)) as probe:
        run_bytes = SLAB * probe.arena.slabs_for(probe.entry("small").weights.total_bytes)
    arena_bytes = 3 * run_bytes + 2 * SLAB  # all three resident leave KV two slabs
    plain_config = EngineConfig(slab_bytes=SLAB, arena_bytes=arena_bytes + 64 * SLAB)
    with StepExecutor(three, plain_config) as plain:
        expected, _ = _rotate(
            plain, models, 18, prefetch=False, max_tokens=120, per_model=3, steps=10
        )
    config = EngineConfig(slab_bytes=SLAB, arena_bytes=arena_bytes, residency=True)
    with StepExecutor(three, config) as ex:
        _no_swap_out_while_a_resident_model_could_go(ex)
        counts = _count_paths(ex)
        outputs, records = _rotate(
            ex, models, 18, prefetch=False, max_tokens=120, per_model=3, steps=10
        )
    assert outputs == expected
    assert counts["kv_evictions"] > 0  # KV took resident models' slabs
    assert all(r.bytes_copied > 0 for r in records[:3])
    assert any(r.bytes_copied > 0 for r in records[3:])  # evicted models were copied again


def _no_swap_out_while_a_resident_model_could_go(ex: StepExecutor) -> None:
    runner, swap_out = ex.runner, ex.kv.swap_out

    def checked(seq, layout):
        evictable = set(runner.resident.runs) - runner._protected()
        assert not evictable, f"KV of seq {seq.seq_id} swapped out while {evictable} stay resident"
        return swap_out(seq, layout)

    ex.kv.swap_out = checked


@pytest.mark.parametrize("spare_slabs", [0, 2, 5])
def test_random_operation_sequences_keep_the_books_and_the_outputs(four, spare_slabs):
    """Random switches, prefetches, hints, arrivals and removals on a small arena: the allocator and the
    resident runs stay consistent after every operation, and each request's greedy tokens are those of a
    run without residency on a large arena."""
    models = list(four)
    rng = random.Random(7)
    script = []
    for step in range(60):
        script.append(
            (
                rng.choice(models),
                rng.choice(models),
                rng.random() < 0.5,
                rng.sample(models, k=rng.randint(0, 4)),
            )
        )

    def play(ex: StepExecutor) -> dict:
        ex.host_cache.join()
        outputs = {}
        next_id = 0
        live: dict[int, str] = {}
        for model, other, do_prefetch, hint in script:
            if len(live) < 6:
                live[next_id] = model
                ex.add(next_id, model, [2, 3, next_id % 50 + 1], SamplingParams(max_tokens=50))
                outputs[next_id] = []
                next_id += 1
            ex.set_upcoming(hint)
            ex.switch_to(model)
            if do_prefetch:
                ex.prefetch(other)
            batch = [i for i, m in live.items() if m == model]
            if batch:
                for update in ex.step(model, batch):
                    outputs[update.request_id] += update.new_tokens
                    if update.done:
                        live.pop(update.request_id)
            _check_books(ex)
        return outputs

    with StepExecutor(four, EngineConfig(slab_bytes=SLAB, kv_bytes=32 * 2**20)) as plain:
        expected = play(plain)
    with StepExecutor(four, EngineConfig(slab_bytes=SLAB, kv_bytes=8 * 2**20)) as probe:
        small_arena = probe.largest_weights + 2 * probe.entry("small").weights.total_bytes
    # room for three of the four models and `spare_slabs` of KV: models are evicted for models and for KV
    config = EngineConfig(
        slab_bytes=SLAB, arena_bytes=small_arena + spare_slabs * SLAB, residency=True
    )
    with StepExecutor(four, config) as ex:
        _no_swap_out_while_a_resident_model_could_go(ex)
        counts = _count_paths(ex)
        assert play(ex) == expected
        assert ex.runner.resident.evictions > 0
    if spare_slabs == 0:  # the tightest arena falls back to the weight region and back to runs
        assert counts["fallbacks"] and counts["region_to_run"], counts


def test_residency_with_tensor_parallelism_is_refused_with_a_clear_error():
    with pytest.raises(ConfigError, match="--residency with --tp"):
        EngineConfig(residency=True, tp_size=2)


def test_a_claim_evicts_only_what_makes_a_run_and_nothing_when_nothing_can():
    from aegaeon.arena import Arena
    from aegaeon.engine.resident import ResidentWeights

    arena = Arena(6 * SLAB, SLAB)
    books = ResidentWeights(arena)
    for model in ("a", "b"):  # a at slabs 0-1, b at 2-3
        assert books.claim(model, 2 * SLAB, ()) is not None
        books.mark_intact(model)
    arena.allocate_block(256)  # KV at slab 5; slab 4 free
    books.set_upcoming(["b"])  # a is needed last: the policy gives it up first
    # three slabs: the policy gives a up first, but 0-1 are not next to the free slab 4, so b goes too (the
    # shortest prefix of the policy's order that makes a run; b alone would, but b is needed next)
    assert books.claim("c", 3 * SLAB, ()) is not None
    assert books.evictions == 2 and set(books.runs) == {"c"}
    books.mark_intact("c")
    # c (0-2) protected, free 3-4: four slabs can never be made, so nothing is evicted
    assert books.claim("d", 4 * SLAB, {"c"}) is None
    assert books.evictions == 2 and "c" in books
