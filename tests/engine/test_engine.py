import pytest

from aegaeon.config.serving import EngineConfig
from aegaeon.engine.local import LocalEngine as Engine
from aegaeon.errors import RequestError
from aegaeon.models.maker import config_for, make_model
from aegaeon.models.sampler import SamplingParams
from tests.models.reference import LARGE_SHAPE, SMALL_SHAPE

PROMPTS = ["the model serves many requests", "hot and cold models share a pool", "one gpu"]
SMALL_SLAB = 64 * 1024


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    return {
        "a": make_model(root / "a", SMALL_SHAPE, seed=1),
        "b": make_model(root / "b", SMALL_SHAPE, seed=2),
        "c": make_model(root / "c", LARGE_SHAPE, seed=3),
    }


def _alone(pool, model, prompt, sampling, **cfg):
    with Engine({model: pool[model]}, EngineConfig(slab_bytes=SMALL_SLAB, **cfg)) as engine:
        return engine.generate([(model, prompt)], sampling)[0]


def test_interleaved_requests_equal_their_uninterleaved_greedy_outputs(pool):
    sampling = SamplingParams(max_tokens=12)
    requests = [(m, p) for p in PROMPTS for m in pool]
    with Engine(pool, EngineConfig(slab_bytes=SMALL_SLAB, steps_per_turn=2)) as engine:
        results = engine.generate(requests, sampling)
        switches = len(engine.executor.runner.switches)
    assert switches >= 3 * 5, "models should alternate every couple of tokens"
    for (model, prompt), result in zip(requests, results):
        assert result.error is None
        assert result.token_ids == _alone(pool, model, prompt, sampling).token_ids, (model, prompt)


def test_seeded_sampling_does_not_depend_on_interleaving(pool):
    sampling = SamplingParams(max_tokens=10, temperature=0.8, top_p=0.9, seed=7)
    requests = [(m, PROMPTS[0]) for m in pool]
    with Engine(pool, EngineConfig(slab_bytes=SMALL_SLAB, steps_per_turn=1)) as engine:
        results = engine.generate(requests, sampling)
    for (model, prompt), result in zip(requests, results):
        assert result.token_ids == _alone(pool, model, prompt, sampling).token_ids


def test_switching_reuses_components_and_binds_views_into_the_arena(pool):
    with Engine(pool, EngineConfig(slab_bytes=SMALL_SLAB, steps_per_turn=1)) as engine:
        models_before = {
            name: entry.model for name, entry in engine.executor.runner.entries.items()
        }
        buffer_ptr = engine.executor.arena.buffer.data_ptr()
        engine.generate([(m, PROMPTS[1]) for m in pool], SamplingParams(max_tokens=6))
        assert {
            name: entry.model for name, entry in engine.executor.runner.entries.items()
        } == models_before
        assert engine.executor.arena.buffer.data_ptr() == buffer_ptr
        bound = engine.executor.runner.entries[engine.executor.runner.active].model
        start, end = buffer_ptr, buffer_ptr + engine.executor.arena.total_bytes
        for tensor in (bound.embed, bound.lm_head, bound.layers[0].q, bound.layers[-1].down):
            assert start <= tensor.data_ptr() < end


def test_short_kv_memory_swaps_requests_out_and_back_without_changing_outputs(pool):
    sampling = SamplingParams(max_tokens=20)
    requests = [(m, p) for p in PROMPTS for m in pool]
    with Engine(pool, EngineConfig(slab_bytes=SMALL_SLAB)) as sizing:
        largest = max(e.weights.total_bytes for e in sizing.executor.runner.entries.values())
    # room for a few slabs of KV beyond the largest model: requests must take turns in it
    config = EngineConfig(
        slab_bytes=SMALL_SLAB, steps_per_turn=3, arena_bytes=largest + 4 * SMALL_SLAB
    )
    with Engine(pool, config) as engine:
        results = engine.generate(requests, sampling)
        assert engine.executor.kv.swapped_bytes > 0
    for (model, prompt), result in zip(requests, results):
        assert result.error is None
        assert result.token_ids == _alone(pool, model, prompt, sampling).token_ids


def test_a_bad_checkpoint_is_unavailable_and_the_others_keep_serving(pool, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    with Engine({**pool, "broken": broken}, EngineConfig(slab_bytes=SMALL_SLAB)) as engine:
        assert "no config.json" in engine.unavailable["broken"]
        results = engine.generate([("broken", "hi"), ("a", "hi")], SamplingParams(max_tokens=3))
    assert "model broken is unavailable" in results[0].error
    assert results[1].error is None and len(results[1].token_ids) == 3


def test_a_model_larger_than_the_arena_is_unavailable_with_the_sizes_named(pool):
    with Engine({"a": pool["a"]}, EngineConfig(slab_bytes=SMALL_SLAB)) as small_only:
        weights = small_only.executor.runner.entries["a"].weights.total_bytes
    arena_bytes = -(-weights // SMALL_SLAB) * SMALL_SLAB + 2 * SMALL_SLAB
    with Engine(pool, EngineConfig(slab_bytes=SMALL_SLAB, arena_bytes=arena_bytes)) as engine:
        assert "do not fit the arena" in engine.unavailable["c"]
        with pytest.raises(RequestError, match="model c is unavailable"):
            engine.submit("c", "hi")
        assert engine.generate([("a", "hi")], SamplingParams(max_tokens=2))[0].error is None


def test_prompt_longer_than_the_context_and_unknown_models_are_refused(tmp_path):
    path = make_model(tmp_path / "short", config_for("llama", max_position=8))
    with Engine({"short": path}, EngineConfig(slab_bytes=SMALL_SLAB)) as engine:
        with pytest.raises(
            RequestError, match=r"model short: the prompt has \d+ tokens, the context holds 8"
        ):
            engine.submit("short", "the model serves many requests from one pool of devices")
        with pytest.raises(RequestError, match="model nope is not served here"):
            engine.submit("nope", "hi")
        with pytest.raises(RequestError, match="max_tokens=0"):
            engine.submit("short", "hi", SamplingParams(max_tokens=0))
        result = engine.generate([("short", "hi")], SamplingParams(max_tokens=50))[0]
    assert result.finish_reason == "length" and len(result.token_ids) == 8 - 1


def test_a_request_larger_than_the_whole_kv_pool_fails_with_a_clear_error(pool):
    with Engine({"a": pool["a"]}, EngineConfig(slab_bytes=SMALL_SLAB)) as first:
        weights = first.executor.runner.entries["a"].weights.total_bytes
    config = EngineConfig(
        slab_bytes=SMALL_SLAB,
        block_size=16,
        arena_bytes=-(-weights // SMALL_SLAB) * SMALL_SLAB + SMALL_SLAB,
    )
    with Engine({"a": pool["a"]}, config) as engine:
        result = engine.generate([("a", "hi " * 30)], SamplingParams(max_tokens=2000))[0]
    assert result.error and "the KV cache cannot hold" in result.error


def test_min_tokens_holds_off_eos_and_stop_token_ids_end_the_output(pool):
    """The model's greedy output of a prompt is its own reference: a stop token id taken from it ends the
    output right there, and min_tokens keeps that token (and EOS) from ending it earlier."""
    from dataclasses import replace

    free = _alone(pool, "a", PROMPTS[0], SamplingParams(max_tokens=12, ignore_eos=True))
    stop_at = 4
    token = free.token_ids[stop_at]
    first = free.token_ids.index(token)  # the first time the model makes that token
    stopped = _alone(
        pool,
        "a",
        PROMPTS[0],
        SamplingParams(max_tokens=12, ignore_eos=True, stop_token_ids=(token,)),
    )
    assert stopped.token_ids == free.token_ids[: first + 1] and stopped.finish_reason == "stop"
    held = _alone(
        pool,
        "a",
        PROMPTS[0],
        replace(
            SamplingParams(max_tokens=12, ignore_eos=True, stop_token_ids=(token,)),
            min_tokens=first + 2,
        ),
    )
    assert len(held.token_ids) >= first + 2 and token not in held.token_ids[: first + 2]


def test_repetition_penalty_changes_greedy_output_and_one_is_off(pool):
    base = _alone(pool, "a", PROMPTS[1], SamplingParams(max_tokens=12, ignore_eos=True))
    off = _alone(
        pool,
        "a",
        PROMPTS[1],
        SamplingParams(max_tokens=12, ignore_eos=True, repetition_penalty=1.0),
    )
    strong = _alone(
        pool,
        "a",
        PROMPTS[1],
        SamplingParams(max_tokens=12, ignore_eos=True, repetition_penalty=1e6),
    )
    assert off.token_ids == base.token_ids
    assert len(set(base.token_ids)) < len(
        base.token_ids
    )  # unpenalised, this prompt's output repeats itself
    assert len(set(strong.token_ids)) == len(
        strong.token_ids
    )  # every token seen is as good as banned
