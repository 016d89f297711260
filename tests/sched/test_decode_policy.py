"""Weighted round-robin decode: exact quotas, batch formation and round plans."""

import pytest

from aegaeon.errors import ConfigError
from aegaeon.sched.decode import (
    DecodeBatch,
    DecodeCandidate,
    choose_decode_instance,
    compute_quotas,
    form_batches,
    plan_round,
    rotate_to_loaded,
)
from tests.sched.fixed_cost import FixedCost


def test_quotas_when_alpha_is_floored_at_one_half():
    # n = [10, 5], load = 0.3, alpha = max(2 / (5 * 4) + 0.3, 0.5) = 0.5
    quotas, alpha, load = compute_quotas([0.01, 0.02], switch_cost=2.0, tpot_slo=0.1, max_quota=4.0)
    assert alpha == pytest.approx(0.5) and load == pytest.approx(0.3)
    assert quotas == pytest.approx((1.0, 2.0))  # 2 / (10 * 0.2), 2 / (5 * 0.2)


def test_quotas_when_switch_cost_sets_alpha_and_the_slowest_batch_gets_the_cap():
    # n = [2, 4], load = 0.75, alpha = 4 / (2 * 4) + 0.75 = 1.25
    quotas, alpha, load = compute_quotas(
        [0.05, 0.025], switch_cost=4.0, tpot_slo=0.1, max_quota=4.0
    )
    assert alpha == pytest.approx(1.25)
    assert quotas == pytest.approx((4.0, 2.0))


def test_quotas_keep_every_batch_on_tpot_over_a_round():
    steps, c, tpot = [0.01, 0.02, 0.015], 3.0, 0.1
    quotas, _, _ = compute_quotas(steps, c, tpot, 4.0)
    round_time = sum(quotas) + c
    for quota, step in zip(quotas, steps):
        assert quota / step >= round_time / tpot - 1e-9  # tokens made >= tokens due per round


def test_no_switch_cost_runs_the_full_quota():
    assert compute_quotas([0.02], 0.0, 0.1, 4.0)[0] == (4.0,)


def test_bad_quota_inputs_are_rejected():
    with pytest.raises(ConfigError):
        compute_quotas([0.0], 1.0, 0.1)
    with pytest.raises(ConfigError):
        compute_quotas([0.01], 1.0, -0.1)


def test_batches_are_formed_fcfs_per_model_within_memory_and_size():
    cands = [
        DecodeCandidate(1, "a", 10),
        DecodeCandidate(2, "b", 10),
        DecodeCandidate(3, "a", 10),
        DecodeCandidate(4, "a", 10),
        DecodeCandidate(5, "b", 50),
        DecodeCandidate(6, "c", 5),
    ]
    batches, waiting = form_batches(cands, FixedCost(), kv_capacity_bytes=45, max_batch=2)
    assert batches == [
        DecodeBatch("a", (1, 3), 20),
        DecodeBatch("b", (2,), 10),
        DecodeBatch("c", (6,), 5),
    ]
    assert waiting == [4, 5]  # 4: batch of a is full; 5: its KV does not fit


def test_round_plan_counts_one_load_per_model_and_rotates_to_the_loaded_one():
    batches = [DecodeBatch("a", (1,), 10), DecodeBatch("b", (2,), 10)]
    assert rotate_to_loaded(batches, "b") == batches[::-1]
    plan = plan_round(batches, "b", FixedCost(), tpot_slo=0.1)
    assert plan.switch_cost == pytest.approx(2.0)
    assert plan.step_times == (0.01, 0.02)
    assert plan.quotas == pytest.approx((1.0, 2.0))


def test_single_loaded_batch_pays_no_switch():
    plan = plan_round([DecodeBatch("a", (1, 2), 20)], "a", FixedCost(), tpot_slo=0.1, max_quota=3.0)
    assert plan.switch_cost == 0.0 and plan.quotas == (3.0,)
    plan = plan_round([DecodeBatch("a", (1, 2), 20)], "b", FixedCost(), tpot_slo=0.1, max_quota=3.0)
    assert plan.switch_cost == 1.0


def test_decode_placement_joins_the_batch_of_its_model_while_it_has_room():
    loads = [{"a": 1, "b": 1}, {"c": 2}, {"a": 3}]
    assert choose_decode_instance("a", loads) == 0  # both hold "a": the less busy one
    assert choose_decode_instance("a", loads, max_batch=2) == 0
    # a full batch: placed as a new model would be
    assert choose_decode_instance("a", [{"a": 2}, {"b": 5}], max_batch=2) == 1


def test_decode_placement_of_a_new_model_goes_where_fewest_models_run():
    loads = [{"a": 1, "b": 1}, {"c": 4}, {"d": 1, "e": 0}]
    assert choose_decode_instance("x", loads) == 2  # "e" has no live request: one model, 1 request
    assert choose_decode_instance("x", [{"a": 2}, {"b": 2}]) == 0  # ties: lower index
    assert choose_decode_instance("x", [{}, {}]) == 0
    with pytest.raises(ConfigError):
        choose_decode_instance("x", [])
