"""The sampler against plain torch: greedy is argmax, and top_p always keeps at least the most likely token."""

import pytest
import torch

from aegaeon.errors import RequestError
from aegaeon.models.sampler import SamplingParams, new_generator, sample_one


@pytest.mark.parametrize("top_p", [1e-300, 1e-45, 1e-8])
def test_a_top_p_below_the_top_tokens_mass_samples_the_top_token(top_p):
    logits = torch.randn(500, generator=torch.Generator().manual_seed(3))
    params = SamplingParams(temperature=1.0, top_p=top_p, seed=1)
    assert sample_one(logits, params, new_generator(params)) == int(torch.argmax(logits))


def test_top_p_keeps_the_smallest_prefix_reaching_its_mass():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    params = SamplingParams(temperature=1.0, top_p=0.7, seed=0)
    generator = new_generator(params)
    drawn = {sample_one(logits, params, generator) for _ in range(300)}
    assert drawn == {0, 1}  # 0.5 < 0.7, then 0.8 >= 0.7: tokens 2 and 3 are never drawn


def test_greedy_below_the_threshold_and_nan_logits_are_a_request_error():
    logits = torch.tensor([0.1, 2.0, -1.0])
    assert sample_one(logits, SamplingParams(temperature=1e-300), None) == 1
    with pytest.raises(RequestError, match="non-finite"):
        sample_one(torch.tensor([0.0, float("nan")]), SamplingParams(), None)


def _drawn(logits, **params) -> set[int]:
    sampling = SamplingParams(temperature=1.0, seed=0, **params)
    generator = new_generator(sampling)
    return {sample_one(logits, sampling, generator) for _ in range(300)}


def test_top_k_and_min_p_keep_what_they_say():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert _drawn(logits, top_k=1) == {0}
    assert _drawn(logits, top_k=2) == {0, 1}
    assert _drawn(logits, top_k=-1) == {0, 1, 2, 3} == _drawn(logits, top_k=0)
    assert _drawn(logits, min_p=0.5) == {0, 1}  # 0.3 >= 0.5 x 0.5; 0.15 is not
    assert _drawn(logits, min_p=1.0) == {0}
    # top-k, then top-p on the renormalised rest: 0.5/0.8 = 0.625 < 0.7, so token 1 stays; 3 of 4 never
    assert _drawn(logits, top_k=3, top_p=0.7) == {0, 1}


@pytest.mark.parametrize(
    "bad", [dict(top_k=-2), dict(min_p=-0.1), dict(min_p=1.5), dict(min_p=float("nan"))]
)
def test_out_of_range_top_k_and_min_p_are_request_errors(bad):
    with pytest.raises(RequestError):
        SamplingParams(**bad).validate()


def _reference_penalties(logits, context, num_output, repetition=1.0, presence=0.0, frequency=0.0):
    """vLLM's penalties written out token by token."""
    out = [float(x) for x in logits]
    for token in set(context):
        out[token] = out[token] / repetition if out[token] > 0 else out[token] * repetition
    output = context[len(context) - num_output :] if num_output else []
    for token in set(output):
        out[token] -= frequency * output.count(token) + presence
    return torch.tensor(out)


def test_penalties_match_a_token_by_token_reference():
    from aegaeon.models.sampler import adjust_logits

    rng = torch.Generator().manual_seed(5)
    for trial in range(50):
        logits = torch.randn(40, generator=rng) * 3
        context = torch.randint(
            0, 40, (int(torch.randint(1, 30, (1,), generator=rng)),), generator=rng
        ).tolist()
        num_output = trial % (len(context) + 1)
        penalties = dict(
            repetition=[1.0, 1.3, 0.7][trial % 3],
            presence=[0.0, 0.5, -1.0][trial % 3],
            frequency=[0.0, 0.25, 1.5][(trial // 3) % 3],
        )
        params = SamplingParams(
            repetition_penalty=penalties["repetition"],
            presence_penalty=penalties["presence"],
            frequency_penalty=penalties["frequency"],
        )
        got = adjust_logits(logits, params, context, num_output)
        assert torch.allclose(
            got, _reference_penalties(logits, context, num_output, **penalties), atol=1e-5
        )


def test_banned_tokens_are_never_drawn_and_penalties_steer_greedy():
    logits = torch.tensor([0.0, 5.0, 4.0, 1.0])
    assert sample_one(logits, SamplingParams(), None, banned=(1,)) == 2
    assert _drawn(logits, top_k=0) >= {1, 2} and 1 not in {
        sample_one(
            logits,
            SamplingParams(temperature=1.0, seed=s),
            new_generator(SamplingParams(temperature=1.0, seed=s)),
            banned=(1,),
        )
        for s in range(50)
    }
    # token 1 already in the output twice: a frequency penalty of 1 makes token 2 the greedy choice
    assert (
        sample_one(logits, SamplingParams(frequency_penalty=1.0), None, [3, 1, 1], num_output=2)
        == 2
    )
    assert (
        sample_one(logits, SamplingParams(frequency_penalty=1.0), None, [1, 1, 3], num_output=1)
        == 1
    )  # prompt


@pytest.mark.parametrize(
    "bad",
    [
        dict(presence_penalty=2.5),
        dict(frequency_penalty=float("inf")),
        dict(repetition_penalty=0.0),
        dict(min_tokens=-1),
        dict(min_tokens=17),
        dict(stop_token_ids=(-1,)),
    ],
)
def test_out_of_range_penalties_are_request_errors(bad):
    with pytest.raises(RequestError):
        SamplingParams(**bad).validate()


def test_token_logprobs_are_the_models_log_softmax_and_its_top_k():
    from aegaeon.models.sampler import token_logprobs

    logits = torch.randn(50, generator=torch.Generator().manual_seed(9))
    reference = torch.log_softmax(logits, dim=-1)
    chosen, top = token_logprobs(logits, 7, 4)
    assert chosen == float(reference[7])
    assert [t for t, _ in top] == torch.topk(reference, 4).indices.tolist()
    assert [lp for _, lp in top] == torch.topk(reference, 4).values.tolist()
    assert token_logprobs(logits, 7, 0)[1] == ()


def test_prompt_logprobs_score_each_prompt_token_by_the_prediction_before_it():
    from aegaeon.models.sampler import check_prompt_logprobs_size, prompt_token_logprobs

    logits = torch.randn(
        4, 30, generator=torch.Generator().manual_seed(2)
    )  # after tokens 0..3 of 5
    prompt = [3, 9, 0, 29, 7]
    entries = prompt_token_logprobs(logits, prompt, 2)
    assert entries[0] is None and len(entries) == 5
    for position, (chosen, top) in enumerate(entries[1:]):
        reference = torch.log_softmax(logits[position], dim=-1)
        assert abs(chosen - float(reference[prompt[position + 1]])) < 1e-6
        assert [t for t, _ in top] == torch.topk(reference, 2).indices.tolist()
    with pytest.raises(RequestError, match="shorter prompt"):
        check_prompt_logprobs_size(100_000, 152_064)
