"""The accelerator path of the engine, against the CPU path: the arena on a device buffer, a model switch,
and greedy tokens. They run on `AEGAEON_TEST_DEVICE` (default cuda, skipped without a GPU and a CUDA
build); the GPU bring-up script's CPU dry run sets it to cpu so that every line here runs in CI too."""

import os

import pytest
import torch

from aegaeon.config.serving import EngineConfig
from aegaeon.engine.local import LocalEngine
from aegaeon.models.maker import make_model
from aegaeon.models.sampler import SamplingParams
from aegaeon.native import _C
from tests.models.reference import LARGE_SHAPE, SMALL_SHAPE

DEVICE = os.environ.get("AEGAEON_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(
    DEVICE.startswith("cuda") and not (torch.cuda.is_available() and _C.built_with_cuda()),
    reason="needs a GPU and a CUDA build (AEGAEON_TEST_DEVICE=cpu runs these on CPU)",
)
SLAB = 64 * 1024
PROMPTS = ["the model serves many requests", "one gpu many models"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpupool")
    return {
        "a": make_model(root / "a", SMALL_SHAPE, seed=1),
        "c": make_model(root / "c", LARGE_SHAPE, seed=3),
    }


def test_the_arena_lives_on_the_device_and_its_blocks_are_exact():
    from aegaeon.arena import Arena

    arena = Arena(16 * SLAB, SLAB, DEVICE)
    assert arena.buffer.device.type == torch.device(DEVICE).type
    handles = [arena.allocate_block(4096) for _ in range(40)]
    assert len(set(handles)) == 40 and all(0 <= h < arena.total_bytes for h in handles)
    for handle in handles:
        arena.free_block(handle)


def test_a_switch_puts_the_host_cache_bytes_into_the_device_arena(pool):
    with LocalEngine(pool, EngineConfig(device=DEVICE, slab_bytes=SLAB)) as engine:
        runner = engine.executor.runner
        for name in pool:
            engine.executor.host_cache.wait(name)
            runner.switch_to(name)
            size = runner.entries[name].weights.total_bytes
            on_device = engine.executor.arena.buffer[:size].cpu()
            assert torch.equal(on_device, engine.executor.host_cache.region(name)[:size].cpu()), (
                name
            )


def test_greedy_tokens_on_the_device_equal_the_cpu_ones(pool):
    requests = [(m, p) for m in pool for p in PROMPTS]
    sampling = SamplingParams(max_tokens=12)
    with LocalEngine(pool, EngineConfig(slab_bytes=SLAB, steps_per_turn=2)) as cpu:
        expected = [r.token_ids for r in cpu.generate(requests, sampling)]
    with LocalEngine(
        pool, EngineConfig(device=DEVICE, slab_bytes=SLAB, steps_per_turn=2)
    ) as device:
        got = [r.token_ids for r in device.generate(requests, sampling)]
    # fp32 test models: the same argmax on both unless two logits tie within rounding; allow none here
    assert got == expected
