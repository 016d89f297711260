"""The layer-wise switch rule (aegaeon.sched.layerwise) on hand-made cases, exact."""

import pytest

from aegaeon.config.models import PAPER_MODELS
from aegaeon.sched.layerwise import (
    StageShares,
    layered_finish,
    layerwise_exposed,
    switch_exposure,
)

HALVES = StageShares((0.5, 0.5), (0.5, 0.5))


def test_a_stage_starts_when_its_bytes_are_there_and_the_stage_before_is_done():
    assert layered_finish([0, 1, 2], [1, 1, 1]) == 3  # the copy keeps just ahead
    assert layered_finish([0, 5, 5], [1, 1, 1]) == 7  # stage 1 waits for its bytes until 5
    assert layered_finish([0, 0, 0], [2, 1, 1]) == 4  # all there: the forward alone
    with pytest.raises(ValueError):
        layered_finish([0, 1], [1])


def test_exposure_matches_the_equal_layers_closed_form():
    # two equal stages: max(C / L, C - F (L - 1) / L)
    for copy, forward in [(1.0, 1.0), (1.0, 0.25), (0.25, 1.0), (4.0, 1.0)]:
        expected = max(copy / 2, copy - forward / 2)
        assert layerwise_exposed(copy, forward, HALVES) == pytest.approx(expected)
    eight = StageShares((0.125,) * 8, (0.125,) * 8)
    assert layerwise_exposed(8.0, 1.0, eight) == pytest.approx(8.0 - 7 / 8)
    assert layerwise_exposed(0.0, 1.0, eight) == 0.0


def test_what_a_prefetch_already_copied_is_not_waited_for():
    assert layerwise_exposed(1.0, 1.0, HALVES, landed=0.5) == 0.0  # stage 1 lands as stage 0 ends
    assert layerwise_exposed(1.0, 1.0, HALVES, landed=1.0) == 0.0
    assert layerwise_exposed(2.0, 1.0, HALVES, landed=0.5) == pytest.approx(0.5)
    # never more than waiting for the rest of the copy, and nothing when nothing is left
    assert switch_exposure(2.0, 1.0, 0.0, HALVES) == 1.0
    assert switch_exposure(2.0, 1.0, 1.0, HALVES) == pytest.approx(0.5)
    assert switch_exposure(2.0, 0.0, 1.0, HALVES) == 0.0


def test_shares_of_a_real_shape_and_their_validation():
    shares = PAPER_MODELS["llama2_13b_chat"].stage_shares()
    assert len(shares.bytes) == 40 + 2
    assert shares.compute[0] == 0.0 and sum(shares.compute) == pytest.approx(1.0)
    assert shares.bytes[1] == pytest.approx(shares.bytes[20])  # equal layers
    # a 13B copy exposes about C - F when the forward is short, and about C / 40 when it is long
    assert layerwise_exposed(1.0, 0.01, shares) == pytest.approx(1.0 - 0.01, abs=0.01)
    assert layerwise_exposed(0.1, 10.0, shares) < 0.1 / 10
    with pytest.raises(ValueError, match="sum to 1"):
        StageShares((0.5, 0.4), (0.5, 0.5))
    with pytest.raises(ValueError, match="one byte share"):
        StageShares((1.0,), (0.5, 0.5))
