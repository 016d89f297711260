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


@pytest.mark.parametrize("bad", [dict(top_k=-2), dict(min_p=-0.1), dict(min_p=1.5), dict(min_p=float("nan"))])
def test_out_of_range_top_k_and_min_p_are_request_errors(bad):
    with pytest.raises(RequestError):
        SamplingParams(**bad).validate()
