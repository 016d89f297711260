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
