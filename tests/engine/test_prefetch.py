"""Weight prefetch in the engine: a second weight slot beside the arena, filled while another model decodes;
a switch to a prefetched model only waits and re-binds, and the outputs are the same greedy tokens."""

from aegaeon.config.serving import EngineConfig
from aegaeon.engine.executor import StepExecutor
from aegaeon.models.maker import make_model
from aegaeon.models.sampler import SamplingParams
from tests.models.reference import LARGE_SHAPE, SMALL_SHAPE

SLAB = 64 * 1024


def _decode_round_robin(executor: StepExecutor, prefetch: bool, rounds: int = 6) -> tuple:
    """Three requests, one per model, decoded turn by turn (2 steps each), prefetching the next model."""
    order = ["big", "small", "small2"]
    executor.host_cache.join()  # every model in the host cache first: a prefetch needs it there
    for i, model in enumerate(order):
        executor.add(i, model, [3, 5, 7, 11 + i], SamplingParams(max_tokens=40))
    outputs = {i: [] for i in range(3)}
    records = []
    for turn in range(rounds * 3):
        model = order[turn % 3]
        records.append(executor.switch_to(model))
        if prefetch:
            executor.prefetch(order[(turn + 1) % 3])
        for _ in range(2):
            for update in executor.step(model, [turn % 3]):
                outputs[update.request_id] += update.new_tokens
    return outputs, records


def test_prefetched_switches_wait_only_and_give_the_same_greedy_tokens(three):
    with StepExecutor(three, EngineConfig(slab_bytes=SLAB, kv_bytes=4 * 2**20)) as plain:
        expected, _ = _decode_round_robin(plain, prefetch=False)
    config = EngineConfig(slab_bytes=SLAB, kv_bytes=4 * 2**20, prefetch=True)
    with StepExecutor(three, config) as fetched:
        outputs, records = _decode_round_robin(fetched, prefetch=True)
        staging = fetched.runner.staging.numel()
    assert outputs == expected
    prefetched = [r for r in records if r is not None and "wait_prefetch" in r.stages]
    # the first switch places big (the largest) in the arena; from then the slots alternate and every
    # switch is to a prefetched model
    assert len(prefetched) == len(records) - 1 and "wait_prefetch" not in records[0].stages
    assert all(r.copy_seconds is not None and r.copy_seconds > 0 for r in prefetched)
    assert all(r.kv_moved == 0 and r.kv_swapped_out == 0 for r in prefetched)
    assert staging == fetched.largest_weights  # the staging slot holds the largest model


def test_prefetch_is_refused_without_a_slot_for_a_bound_model_and_for_an_unknown_one(three):
    with StepExecutor(three, EngineConfig(slab_bytes=SLAB)) as plain:
        plain.switch_to("small")
        assert not plain.prefetch("big")  # no staging slot without EngineConfig.prefetch
    slow = EngineConfig(slab_bytes=SLAB, prefetch=True, link_gbps=0.002)  # big's copy takes ~0.7 s
    with StepExecutor(three, slow) as fetched:
        fetched.host_cache.join()  # every model in the host cache, so only the slots decide
        fetched.switch_to("small")
        assert not fetched.prefetch("small") and not fetched.prefetch("nope")
        assert fetched.prefetch("big") and fetched.prefetch("big")  # the same copy, asked twice
        assert not fetched.prefetch("small2")  # one copy at a time: big's is still in flight
        fetched.runner.pending.done.wait()
        assert fetched.prefetch("small2")  # big's copy has landed: it is replaced
        record = fetched.switch_to("big")
        assert (
            "wait_prefetch" not in record.stages
        )  # a plain switch: big was not the one prefetched
        fetched.remove_model("small2")  # a model removed while prefetched leaves nothing behind
        assert fetched.runner.pending is None


def test_two_models_stay_resident_in_the_two_slots_and_switch_without_copies(three):
    two = {name: three[name] for name in ("big", "small")}

    def alternate(executor: StepExecutor, prefetch: bool) -> tuple:
        executor.host_cache.join()
        for i, model in enumerate(two):
            executor.add(i, model, [3, 5, 7, 11 + i], SamplingParams(max_tokens=30))
        outputs, records = {0: [], 1: []}, []
        for turn in range(10):
            model = list(two)[turn % 2]
            records.append(executor.switch_to(model))
            if prefetch:
                executor.prefetch(list(two)[(turn + 1) % 2])
            for update in executor.step(model, [turn % 2]):
                outputs[update.request_id] += update.new_tokens
        return outputs, records

    with StepExecutor(two, EngineConfig(slab_bytes=SLAB, kv_bytes=4 * 2**20)) as plain:
        expected, _ = alternate(plain, prefetch=False)
    for prefetch in (True, False):  # a plain switch back to a resident model re-binds too
        config = EngineConfig(slab_bytes=SLAB, kv_bytes=4 * 2**20, prefetch=True)
        with StepExecutor(two, config) as executor:
            outputs, records = alternate(executor, prefetch)
        assert outputs == expected
        copied = [r.bytes_copied for r in records]
        # big into the arena, small into the other slot (prefetched, or a plain copy), then both stay
        assert copied[0] > 0 and copied[1] > 0 and copied[2:] == [0] * 8, copied
        assert all(r.resident for r in records[2:])


def test_a_larger_model_prefetched_into_the_arena_slot_widens_its_region_within_the_slabs_it_has(
    tmp_path,
):
    """The arena's weight region was last placed for a small model; with slabs larger than the models, a
    larger model fits the region's slabs without moving KV, and a prefetch of it there widens the region
    (it used to ask for a view past the region's end)."""
    models = {
        "small": str(make_model(tmp_path / "small", SMALL_SHAPE, seed=2)),
        "big": str(make_model(tmp_path / "big", LARGE_SHAPE, seed=1)),
        "big2": str(make_model(tmp_path / "big2", LARGE_SHAPE, seed=4)),
    }
    order = ["small", "big", "big2", "small", "big"]

    def run(prefetch: bool):
        config = EngineConfig(slab_bytes=2 * 2**20, kv_bytes=8 * 2**20, prefetch=prefetch)
        with StepExecutor(models, config) as executor:
            executor.host_cache.join()
            for i, model in enumerate(models):
                executor.add(i, model, [3, 5, 7, 11 + i], SamplingParams(max_tokens=30))
            ids = {model: i for i, model in enumerate(models)}
            outputs, records = {i: [] for i in ids.values()}, []
            for turn, model in enumerate(order):
                records.append(executor.switch_to(model))
                if prefetch and turn + 1 < len(order):
                    assert executor.prefetch(order[turn + 1])
                for _ in range(2):
                    for update in executor.step(model, [ids[model]]):
                        outputs[update.request_id] += update.new_tokens
            return outputs, records

    expected, _ = run(False)
    outputs, records = run(True)
    assert outputs == expected
    assert all("wait_prefetch" in r.stages for r in records[1:] if r is not None)
