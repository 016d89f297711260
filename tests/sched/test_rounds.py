"""Decode policies as state machines: exact turn orders, quotas and arrival decisions on hand-made cases."""

import pytest

from aegaeon.errors import ConfigError
from aegaeon.sched.cost import MeasuredCost, ModelSizes
from aegaeon.sched.decode import DecodeCandidate as C
from aegaeon.sched.policies import live_policies, parse_policies, policy
from aegaeon.sched.prefill import PrefillDispatcher
from aegaeon.sched.request import RequestSpec
from aegaeon.sched.rounds import (
    Arrival,
    RequestLevel,
    RoundConfig,
    StepRoundRobin,
    WeightedRoundRobin,
    quota_allows_step,
)
from tests.sched.fixed_cost import FixedCost


def wrr(max_batch=64, capacity=10**9, tpot=0.1, max_quota=4.0):
    return WeightedRoundRobin(FixedCost(), RoundConfig(tpot, max_quota, max_batch), capacity)


def test_a_round_runs_the_loaded_model_first_then_fcfs_with_the_formulas_quotas():
    policy = wrr()
    live = [C(1, "a", 10), C(2, "b", 10), C(3, "a", 10)]
    assert policy.arrive(live[0], live) is Arrival.START
    first = policy.next_turn(live)
    # two models, switch 1 s each: c = 2, n = [10, 5], load 0.3, alpha = 0.5 -> quotas 1 and 2
    assert (first.model, first.request_ids, first.quota) == ("a", (1, 3), pytest.approx(1.0))
    second = policy.next_turn(live)
    assert (second.model, second.request_ids, second.quota) == ("b", (2,), pytest.approx(2.0))
    # the next round starts with the loaded model, b
    assert policy.next_turn(live).model == "b"


def test_arrivals_join_the_running_batch_wait_for_a_coming_turn_or_get_a_turn_at_the_end():
    policy = wrr(max_batch=2)
    live = [C(1, "a", 10), C(2, "b", 10)]
    policy.arrive(live[0], live[:1])
    assert policy.next_turn(live).model == "a"
    live.append(C(3, "a", 10))
    assert policy.arrive(live[-1], live) is Arrival.JOIN  # the running model, room in its batch
    assert policy.turn_batch(live) == (1, 3)
    live.append(C(4, "a", 10))
    assert (
        policy.arrive(live[-1], live) is Arrival.NEW_TURN
    )  # the batch is full: a turn at the round's end
    live.append(C(5, "b", 10))
    assert policy.arrive(live[-1], live) is Arrival.WAIT  # b's turn is coming
    live.append(C(6, "c", 10))
    assert policy.arrive(live[-1], live) is Arrival.NEW_TURN
    turns = [policy.next_turn(live) for _ in range(3)]
    assert [(t.model, t.request_ids) for t in turns] == [("b", (2, 5)), ("a", (1, 3)), ("c", (6,))]
    assert policy.turns == []


def test_a_turn_whose_requests_all_finished_is_skipped_and_an_empty_instance_goes_idle():
    policy = wrr()
    live = [C(1, "a", 10), C(2, "b", 10)]
    policy.arrive(live[0], live)
    assert policy.next_turn(live).model == "a"
    assert (
        policy.next_turn([C(1, "a", 11)]).model == "a"
    )  # b finished meanwhile: its turn is skipped
    assert policy.next_turn([]) is None
    assert policy.arrive(C(7, "c", 1), [C(7, "c", 1)]) is Arrival.START


def test_the_running_batch_refills_fcfs_as_members_finish():
    policy = wrr(max_batch=2)
    live = [C(1, "a", 1), C(2, "a", 1), C(3, "a", 1)]
    policy.arrive(live[0], live)
    assert policy.next_turn(live).request_ids == (1, 2)
    assert policy.turn_batch(live[1:]) == (2, 3)


def test_kv_capacity_leaves_requests_for_the_next_round_but_never_starves_the_first():
    policy = wrr(capacity=15)
    live = [C(1, "a", 10), C(2, "b", 10)]
    policy.arrive(live[0], live)
    assert policy.next_turn(live).model == "a"
    assert policy.next_turn(live).model == "a"  # b did not fit this round: a new round starts
    alone = wrr(capacity=5)
    alone.arrive(live[0], live)
    assert alone.next_turn(live).request_ids == (1,)  # over capacity alone: it runs anyway


def test_request_level_keeps_the_oldest_model_until_its_requests_are_done():
    policy = RequestLevel(max_batch=4, slice_seconds=0.05)
    live = [C(1, "a", 1), C(2, "b", 1)]
    assert policy.arrive(live[0], live) is Arrival.START
    turn = policy.next_turn(live)
    assert (turn.model, turn.request_ids, turn.quota) == ("a", (1,), 0.05)
    live.append(C(3, "a", 1))
    assert policy.arrive(live[-1], live) is Arrival.WAIT
    assert policy.turn_batch(live) == (1,)  # a slice's batch is fixed
    assert policy.next_turn(live).request_ids == (1, 3)  # joins at the next slice
    assert policy.next_turn([C(2, "b", 1)]).model == "b"


def test_step_round_robin_cycles_models_in_order_of_first_appearance():
    policy = StepRoundRobin(steps_per_turn=3, max_batch=2)
    live = [C(1, "b", 0), C(2, "a", 0), C(3, "b", 0), C(4, "b", 0)]
    turns = [policy.next_turn(live) for _ in range(3)]
    assert [(t.model, t.request_ids, t.max_steps) for t in turns] == [
        ("b", (1, 3), 3),
        ("a", (2,), 3),
        ("b", (1, 3), 3),
    ]


def test_a_turn_steps_while_its_time_is_below_the_quota():
    assert quota_allows_step(0.0, 0.01) and quota_allows_step(0.0099, 0.01)
    assert not quota_allows_step(0.01, 0.01)


def test_prefill_dispatcher_predicts_busy_until_and_serves_groups_fcfs():
    cost = FixedCost()  # switch 1 s, prefill 1 ms per token
    dispatcher = PrefillDispatcher(2, cost, max_group_size=2)
    first = dispatcher.submit(RequestSpec(0, "a", 0.0, 100, 5), now=0.0)
    assert (first.instance, first.request_ids, first.busy_until) == (0, (0,), pytest.approx(1.1))
    assert (
        dispatcher.submit(RequestSpec(1, "a", 0.1, 100, 5), now=0.1) is not None
    )  # instance 1 was idle
    assert dispatcher.submit(RequestSpec(2, "b", 0.2, 100, 5), now=0.2) is None  # queued behind a
    assert dispatcher.submit(RequestSpec(3, "b", 0.3, 100, 5), now=0.3) is None  # joins that group
    nxt = dispatcher.group_done(0, now=1.1)
    assert (nxt.model, nxt.request_ids, nxt.busy_until) == (
        "b",
        (2, 3),
        pytest.approx(1.1 + 1 + 0.2),
    )
    assert dispatcher.group_done(0, now=2.3) is None


def test_a_lost_prefill_instance_hands_back_its_queue_and_is_never_chosen():
    dispatcher = PrefillDispatcher(2, FixedCost())
    dispatcher.submit(RequestSpec(0, "a", 0.0, 100, 5), 0.0)
    dispatcher.submit(RequestSpec(1, "b", 0.0, 100, 5), 0.0)
    dispatcher.submit(RequestSpec(2, "c", 0.0, 100, 5), 0.0)
    queued = dispatcher.instance_lost(0)
    assert [r.request_id for r in queued] == [
        2
    ]  # c queued behind the running group of a (tie: lower index)
    for i in range(3, 6):
        dispatcher.submit(RequestSpec(i, "d", 0.0, 100, 5), 0.0)
    assert not dispatcher.grouped.queues[0]
    dispatcher.instance_lost(1)
    with pytest.raises(ConfigError, match="no prefill instance is alive"):
        dispatcher.submit(RequestSpec(9, "a", 0.0, 1, 1), 0.0)


def test_measured_cost_learns_per_model_with_the_prior_then_the_average_standing_in():
    cost = MeasuredCost({"a": ModelSizes(100, 2)})
    assert cost.decode_time("a", 1, 1) == MeasuredCost.DEFAULTS["step"]
    cost.observe_step("a", 0.02)
    cost.observe_step("a", 0.04)
    assert cost.decode_time("a", 8, 999) == pytest.approx(0.7 * 0.02 + 0.3 * 0.04)
    assert cost.decode_time("b", 1, 1) == pytest.approx(0.026)  # unseen: the average of the seen
    cost.observe_prefill("a", 100, 0.5)
    assert cost.prefill_time("a", [10, 30]) == pytest.approx(0.2)
    assert cost.switch_time("a", "a") == 0.0
    assert cost.weight_bytes("a") == 100 and cost.kv_bytes_per_token("a") == 2
    with pytest.raises(ConfigError, match="sizes are unknown"):
        cost.weight_bytes("b")
    with_prior = MeasuredCost(prior=FixedCost())
    assert with_prior.decode_time("c", 1, 1) == 0.05 and with_prior.switch_time(None, "c") == 1.0


def test_the_registry_names_every_policy_once_and_says_which_run_live():
    assert set(live_policies()) == {"aegaeon", "sllm"}
    assert parse_policies("aegaeon, sllm+") == ["aegaeon", "sllm+"]
    with pytest.raises(ConfigError, match="choose from aegaeon, sllm"):
        parse_policies("muxserve", live=True)
    with pytest.raises(ConfigError, match="unknown policy"):
        policy("vllm")
    with pytest.raises(ConfigError, match="simulator only"):
        policy("muxserve").decode_policy(FixedCost(), RoundConfig(0.1))


def _slo_aware(slacks: dict[str, float | None], aware: bool = True, prefetch: bool = False):
    config = RoundConfig(0.1, 4.0, 64, prefetch, slo_aware=aware)
    policy = WeightedRoundRobin(FixedCost(), config, 10**9)
    live = [C(i, m, 10, slacks.get(m)) for i, m in enumerate("abc")]
    return policy.next_turn(live)


def test_slo_aware_rounds_shorten_a_turn_only_for_a_deadline_a_later_turn_would_miss():
    # the paper's round a, b, c: n = 10, 5, 2, three switches of 1 s -> quotas 0.8, 1.6, 4 s; a's turn (after
    # its own 1 s switch) ends at 1.8 s, b's first step (after its switch) at 2.82 s, c's at 5.45 s
    assert _slo_aware({}).quota == pytest.approx(0.8)  # no deadline: the paper's quota
    assert _slo_aware({"b": 3.0}).quota == pytest.approx(0.8)  # b's is met anyway
    assert _slo_aware({"b": 2.5}).quota == pytest.approx(0.8 - 0.32)  # gives b what it lacks
    assert _slo_aware({"c": 5.0}).quota == pytest.approx(0.8 - 0.45)  # and a deadline further on
    assert _slo_aware({"b": 2.05}).quota == pytest.approx(0.03)  # down to near one step of its own
    assert _slo_aware({"b": 1.5}).quota == pytest.approx(0.8)  # one step would not save it: no cut
    assert _slo_aware({"a": 0.0}).quota == pytest.approx(0.8)  # the turn's own requests: not a wait
    assert _slo_aware({"b": 1.5}, aware=False).quota == pytest.approx(0.8)  # off: the paper's rule


def test_next_token_deadline_follows_the_restarting_schedule():
    from aegaeon.sched.slo import SLO, next_token_deadline

    slo = SLO(ttft=1.0, tpot=0.1)
    assert next_token_deadline(5.0, [], slo) == pytest.approx(6.0)
    assert next_token_deadline(5.0, [5.5], slo) == pytest.approx(6.1)  # on time: D1 + tpot
    assert next_token_deadline(5.0, [7.0], slo) == pytest.approx(7.1)  # late: from its own time


def test_with_prefetch_a_turn_is_not_cut_for_a_deadline_the_next_copy_decides():
    # prefetch quotas 0.8, 1.6, 4 s; this turn's model was prefetched (no switch), and b's first step lands
    # at max(q, 1 s copy) + 0.02 s whatever a's quota q <= 1 s: a deadline before 1.02 s cannot be saved
    assert _slo_aware({}, prefetch=True).quota == pytest.approx(0.8)
    assert _slo_aware({"b": 1.0}, prefetch=True).quota == pytest.approx(0.8)
    assert _slo_aware({"c": 2.6}, prefetch=True).quota == pytest.approx(
        0.8
    )  # b's 1.6 s hides c's copy
