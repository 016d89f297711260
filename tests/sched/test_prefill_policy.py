"""Grouped FCFS prefill: grouping, placement by predicted finish, FCFS service."""

import pytest

from aegaeon.errors import ConfigError
from aegaeon.sched.prefill import GroupedFCFS
from aegaeon.sched.request import RequestSpec
from tests.sched.fixed_cost import FixedCost


def req(i, model, arrival=0.0, tokens=100):
    return RequestSpec(i, model, arrival, tokens, 10)


def test_same_model_requests_join_a_waiting_group():
    sched = GroupedFCFS(2, max_group_size=2)
    idle, none = [0.0, 0.0], [None, None]
    assert sched.submit(req(1, "a"), idle, none, 0.0, FixedCost()).new_group
    joined = sched.submit(req(2, "a"), idle, none, 0.0, FixedCost())
    assert (joined.instance, joined.new_group) == (0, False)
    third = sched.submit(req(3, "a"), idle, none, 0.0, FixedCost())  # group full
    assert third.new_group and third.instance == 1
    assert [r.request_id for r in sched.next_group(0).requests] == [1, 2]


def test_new_groups_go_to_the_instance_predicted_to_finish_first():
    sched, cost = GroupedFCFS(3), FixedCost()
    busy = [5.0, 1.0, 2.0]
    loaded = ["a", "b", "a"]
    # instance 1 free at 1.0 but must switch (1.0) -> 2.0 + 0.1; instance 2 free at 2.0, no switch -> 2.1
    placement = sched.submit(req(1, "a"), busy, loaded, 0.0, cost)
    assert placement.instance == 1  # tie at 2.1 broken by index
    assert sched.predicted_finish(1, 1.0, "b", 0.0, cost) == pytest.approx(2.1)
    placement = sched.submit(req(2, "b"), busy, loaded, 0.0, cost)
    # instance 1 now: 2.1 + switch 1.0 + 0.1 = 3.2; instance 2: 2.0 + 1.0 + 0.1 = 3.1
    assert placement.instance == 2


def test_groups_are_served_fcfs_and_a_started_group_takes_no_members():
    sched = GroupedFCFS(1)
    idle, none = [0.0], [None]
    for i, model in enumerate("abab"):
        sched.submit(req(i, model), idle, none, 0.0, FixedCost())
    first = sched.next_group(0)
    assert (first.model, [r.request_id for r in first.requests]) == ("a", [0, 2])
    assert sched.upcoming_model(0) == "b"
    sched.submit(req(9, "a"), idle, none, 0.0, FixedCost())  # "a" group already started
    assert [g.model for g in sched.queues[0]] == ["b", "a"]
    assert sched.queued(0) == 3


def test_invalid_sizes_are_rejected():
    with pytest.raises(ConfigError):
        GroupedFCFS(-1)
    with pytest.raises(ConfigError):
        GroupedFCFS(1, max_group_size=0)


def test_instances_can_join_later():
    sched = GroupedFCFS(0)
    with pytest.raises(ConfigError, match="no prefill instance"):
        sched.submit(RequestSpec(0, "a", 0.0, 10, 10), [], [], 0.0, FixedCost())
    assert sched.add_instance() == 0
    assert (
        sched.submit(RequestSpec(0, "a", 0.0, 10, 10), [0.0], [None], 0.0, FixedCost()).instance
        == 0
    )
