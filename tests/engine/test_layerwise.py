"""Layer-wise readiness: weights copied stage by stage, a model bound before its copy has landed and each
layer of its first forward waiting only for its own bytes; the same greedy tokens in every configuration,
the switch records completed after the forward, a failed copy failing a batch and never the engine."""

import threading
import time

import pytest
import torch

from aegaeon.config.serving import EngineConfig
from aegaeon.device_link import DeviceLink, EmulatedLink
from aegaeon.engine.executor import StepExecutor
from aegaeon.engine.layerwise import CopyProgress, copy_chunks, stage_ends, stage_of, stage_shares
from aegaeon.errors import ConfigError, IntegrityError
from aegaeon.models.maker import config_for
from aegaeon.models.sampler import SamplingParams
from aegaeon.weights.layout import WeightLayout
from tests.engine.test_prefetch import _decode_round_robin

SLAB = 64 * 1024


@pytest.fixture(scope="module")
def expected(three):
    with StepExecutor(three, EngineConfig(slab_bytes=SLAB, kv_bytes=4 * 2**20)) as plain:
        return _decode_round_robin(plain, prefetch=False)[0]


def test_stage_ends_follow_the_forwards_reading_order():
    config = config_for("llama", layers=3, hidden=64, heads=4, kv_heads=2, intermediate=96)
    layout = WeightLayout.for_config(config, torch.float32)
    ends = stage_ends(layout, config.num_layers)
    assert len(ends) == config.num_layers + 2 and ends[-1] == layout.total_bytes
    assert ends == sorted(ends) and len(set(ends)) == len(ends)
    itemsize = 4
    for name, slot in layout.slots.items():
        stage = stage_of(name, config.num_layers)
        end = slot.offset + slot.nbytes(itemsize)
        assert end <= ends[stage]  # a tensor has landed when its stage is ready
        if stage > 0:
            assert slot.offset >= ends[stage - 1]  # and not before: stages are disjoint ranges
    embed = layout.slots["model.embed_tokens.weight"]
    assert ends[0] == embed.offset + embed.nbytes(itemsize)
    assert copy_chunks(ends) == list(zip([0] + ends[:-1], ends))
    assert stage_of("model.layers.2.mlp.up_proj.weight", 3) == 3
    assert stage_of("lm_head.weight", 3) == stage_of("model.norm.weight", 3) == 4


def test_stage_shares_sum_to_one_and_give_a_tied_head_the_embeddings_work():
    config = config_for("llama", layers=2, hidden=64, heads=4, kv_heads=2, tie_embeddings=True)
    layout = WeightLayout.for_config(config, torch.float32)
    shares = stage_shares(layout, config.num_layers, tied_embeddings=True)
    assert shares.compute[0] == 0.0  # the embedding is a lookup
    assert shares.compute[-1] > shares.bytes[-1]  # the tied head multiplies by the embedding's rows
    assert abs(sum(shares.bytes) - 1) < 1e-9 and abs(sum(shares.compute) - 1) < 1e-9


@pytest.mark.parametrize(
    "mechanisms",
    [{}, {"prefetch": True}, {"residency": True}, {"prefetch": True, "residency": True}],
    ids=["plain", "prefetch", "residency", "prefetch+residency"],
)
@pytest.mark.parametrize("gbps", [None, 0.02], ids=["native", "slow-link"])
def test_greedy_tokens_are_the_same_with_layerwise_readiness(three, expected, mechanisms, gbps):
    config = EngineConfig(
        slab_bytes=SLAB, kv_bytes=4 * 2**20, layerwise=True, link_gbps=gbps, **mechanisms
    )
    with StepExecutor(three, config) as engine:
        outputs, records = _decode_round_robin(engine, prefetch=mechanisms.get("prefetch", False))
        assert engine.runner.landing is None or engine.runner.landing[1].landing
    assert outputs == expected
    copies = [r for r in records if r is not None and r.bytes_copied]
    assert copies and all("wait_layers" in r.stages and not r.landing for r in copies)


def test_a_switch_binds_before_the_copy_lands_and_its_forward_completes_the_record(three):
    gbps = 0.01  # big's copy takes ~0.3 s
    config = EngineConfig(slab_bytes=SLAB, kv_bytes=4 * 2**20, layerwise=True, link_gbps=gbps)
    with StepExecutor(three, config) as engine:
        engine.host_cache.join()
        engine.add(1, "big", [3, 5, 7], SamplingParams(max_tokens=4))
        began = time.perf_counter()
        record = engine.switch_to("big")
        returned = time.perf_counter() - began
        job = engine.runner.landing[0]
        nbytes = engine.runner.entries["big"].weights.total_bytes
        copy_s = nbytes / (gbps * 1e9)
        assert record.landing and job.progress.copied < nbytes  # bound while the copy is under way
        assert returned < copy_s / 2
        assert engine.step("big", [1])[0].error is None
        assert not record.landing and engine.runner.landing is None
        waited = engine.take_weight_wait()
        assert waited > copy_s / 2 and engine.take_weight_wait() == 0.0
        assert record.stages["wait_layers"] == pytest.approx(waited)
        assert record.seconds >= waited and record.copy_seconds >= copy_s * 0.95
        assert engine.runner.entries["big"].model.weights_ready is None


def test_the_next_switch_waits_for_a_copy_no_forward_finished(three, expected):
    config = EngineConfig(slab_bytes=SLAB, kv_bytes=4 * 2**20, layerwise=True, link_gbps=0.02)
    with StepExecutor(three, config) as engine:
        engine.host_cache.join()
        first = engine.switch_to("big")
        assert first.landing
        engine.switch_to("small")  # before any forward of big: its copy must land first
        # the next switch waited for the rest of big's copy: big's record counts that wait
        assert not first.landing and first.stages["wait_layers"] > 0
        assert first.seconds >= first.stages["wait_layers"]
        outputs, _ = _decode_round_robin(engine, prefetch=False)
    assert outputs == expected


class FailingLink(DeviceLink):
    """Copies the first chunk of a staged copy, then fails once `release` is set (once)."""

    def __init__(self):
        self.failed = False
        self.release = threading.Event()

    def transfer_chunks(self, chunks, landed):
        if self.failed:
            return super().transfer_chunks(chunks, landed)
        self.failed = True
        nbytes, copy = chunks[0]
        copy()
        landed(nbytes)
        self.release.wait(10)
        raise OSError("link reset")


def test_a_copy_that_fails_under_a_forward_fails_that_batch_and_the_next_switch_copies_again(
    three, expected
):
    config = EngineConfig(slab_bytes=SLAB, kv_bytes=4 * 2**20, layerwise=True)
    with StepExecutor(three, config) as engine:
        engine.host_cache.join()
        engine.runner.link = link = FailingLink()
        engine.add(1, "big", [3, 5, 7], SamplingParams(max_tokens=4))
        record = engine.switch_to("big")
        assert record.landing  # bound on the first chunk; the copy fails under the forward
        link.release.set()
        updates = engine.step("big", [1])
        assert len(updates) == 1 and "weight copy failed" in updates[0].error
        assert (
            engine.runner.active is None and not record.landing
        )  # nothing runs on partial weights
        assert engine.runner.switch_to("big").bytes_copied > 0  # copied again, whole this time
        engine.runner.switch_to("small")
        outputs, _ = _decode_round_robin(engine, prefetch=False)
    assert outputs == expected


def test_a_copy_that_failed_before_the_switch_returned_fails_the_switch(three):
    config = EngineConfig(slab_bytes=SLAB, kv_bytes=4 * 2**20, layerwise=True)
    with StepExecutor(three, config) as engine:
        engine.host_cache.join()
        engine.runner.link = link = FailingLink()
        link.release.set()  # fails at once
        job_done = threading.Event()
        real_start = engine.runner._start_copy

        def start_and_wait(job, pending=True):
            started = real_start(job, pending)
            started.done.wait(10)
            job_done.set()
            return started

        engine.runner._start_copy = start_and_wait
        with pytest.raises(IntegrityError, match="link reset"):
            engine.switch_to("big")
        assert job_done.is_set() and engine.runner.active is None and engine.runner.landing is None


def test_copy_progress_blocks_a_stage_until_its_bytes_land_and_raises_on_failure():
    progress = CopyProgress([10, 20, 30])
    progress.landed(10)
    progress.wait_stage(0)  # there already: no wait
    assert progress.waited == 0.0
    threading.Timer(0.05, progress.landed, args=(20,)).start()
    progress.wait_stage(1)
    assert progress.waited >= 0.04 and progress.copied == 20 and not progress.complete()
    threading.Timer(0.02, progress.failed, args=(OSError("gone"),)).start()
    with pytest.raises(IntegrityError, match="stage 2"):
        progress.wait_stage(2)


def test_a_chunked_transfer_books_the_emulated_link_for_the_whole_copy():
    link = EmulatedLink(0.001)  # 1 MB/s: 10 kB take 10 ms
    landed, order = [], []
    chunks = [(4000, lambda: order.append("a1")), (6000, lambda: order.append("a2"))]
    second: list[float] = []

    def other() -> None:
        time.sleep(0.001)  # issued while the chunked transfer is under way
        second.append(link.transfer(2000, lambda: order.append("b")))

    thread = threading.Thread(target=other)
    thread.start()
    seconds = link.transfer_chunks(chunks, landed.append)
    thread.join()
    assert landed == [4000, 10000]
    assert seconds >= 0.0099
    assert second[0] >= 0.0099 + 0.002 - 0.001 - 0.0005  # it waited behind both chunks, not between
    assert DeviceLink().transfer_chunks(chunks, landed.append) >= 0 and landed[-1] == 10000


def test_layerwise_readiness_with_tensor_parallelism_is_refused_with_a_clear_error():
    with pytest.raises(ConfigError, match="--layerwise with --tp"):
        EngineConfig(layerwise=True, tp_size=2)


def test_a_model_re_added_under_its_name_is_copied_by_its_own_stages(three, tmp_path):
    # "small" is replaced by a checkpoint of another shape: its stage boundaries must be the new model's
    with StepExecutor({"small": three["big"]}, EngineConfig(slab_bytes=SLAB)) as plain:
        plain.add(1, "small", [3, 5, 7], SamplingParams(max_tokens=6))
        plain.switch_to("small")
        expected = [t for _ in range(6) for u in plain.step("small", [1]) for t in u.new_tokens]
    config = EngineConfig(slab_bytes=SLAB, kv_bytes=4 * 2**20, layerwise=True, link_gbps=0.05)
    with StepExecutor({"small": three["small"], "small2": three["small2"]}, config) as engine:
        engine.host_cache.join()
        engine.switch_to("small")
        engine.switch_to("small2")
        engine.remove_model("small")
        engine.add_model("small", three["big"])
        engine.host_cache.load("small")  # the node's model admin loads an added model so
        engine.add(1, "small", [3, 5, 7], SamplingParams(max_tokens=6))
        engine.switch_to("small")
        tokens = [t for _ in range(6) for u in engine.step("small", [1]) for t in u.new_tokens]
    assert len(expected) == 6 and tokens == expected
