"""The eviction rule of resident models (aegaeon.sched.residency), on hand-made cases."""

from aegaeon.sched.residency import choose_eviction, upcoming_models


def test_a_model_not_expected_again_goes_first_the_least_recently_used_of_them():
    last_used = {"a": 5, "b": 1, "c": 3, "d": 9}
    assert choose_eviction(last_used, upcoming=["a", "d"]) == "b"
    assert choose_eviction(last_used, upcoming=["a", "b", "d"]) == "c"


def test_when_all_are_expected_the_one_needed_last_goes():
    last_used = {"a": 1, "b": 2, "c": 3}
    assert choose_eviction(last_used, upcoming=["c", "a", "b", "a"]) == "b"
    assert choose_eviction(last_used, upcoming=["b", "c", "a"]) == "a"


def test_protected_models_are_never_chosen():
    last_used = {"a": 1, "b": 2}
    assert choose_eviction(last_used, upcoming=[], protected={"a"}) == "b"
    assert choose_eviction(last_used, upcoming=["b"], protected={"a", "b"}) is None
    assert choose_eviction({}, upcoming=["a"]) is None


def test_without_a_hint_the_rule_is_lru():
    assert choose_eviction({"x": 4, "y": 2, "z": 7}, upcoming=[]) == "y"


def test_upcoming_is_the_rounds_turns_then_the_waiting_models_without_repeats():
    assert upcoming_models(["b", "c"], ["a", "c", "d", "a"]) == ["b", "c", "a", "d"]
