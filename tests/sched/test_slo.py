"""SLO attainment: the restarting token-deadline definition, on hand-made timelines."""

import numpy as np
import pytest

from aegaeon.errors import ConfigError
from aegaeon.sched.slo import SLO, meets_both, request_attainment, summarize, token_deadlines

SLO_1 = SLO(ttft=1.0, tpot=0.1)


def test_on_time_tokens_attain_fully():
    assert request_attainment(0.0, [0.5, 0.6, 0.7], 3, SLO_1) == 1.0


def test_early_tokens_bank_slack_against_later_gaps():
    # A burst then a pause: deadlines 1.0, 1.1, 1.2, 1.3; all met.
    assert request_attainment(0.0, [0.2, 0.21, 0.22, 1.3], 4, SLO_1) == 1.0


def test_a_late_token_restarts_the_schedule_from_its_own_time():
    times = np.array([2.0, 2.05, 2.1])
    assert token_deadlines(0.0, times, SLO_1).tolist() == pytest.approx([1.0, 2.1, 2.2])
    # 1.0 s late over a 2.1 s lifetime
    assert request_attainment(0.0, times, 3, SLO_1) == pytest.approx(1 - 1.0 / 2.1)


def test_lateness_in_the_middle_counts_only_past_each_deadline():
    # deadlines: 1.0, 1.1, 1.2; the third token comes at 1.5 (0.3 late) -> next due 1.6, met at 1.55
    times = [0.5, 1.1, 1.5, 1.55]
    assert request_attainment(0.0, times, 4, SLO_1) == pytest.approx(1 - 0.3 / 1.55)


def test_unfinished_requests_attain_nothing():
    assert request_attainment(0.0, [0.5], 3, SLO_1) == 0.0
    assert not meets_both(0.0, [0.5], 3, SLO_1)


def test_meets_both_uses_ttft_and_mean_tpot():
    assert meets_both(0.0, [0.9, 1.0, 1.1], 3, SLO_1)
    assert not meets_both(0.0, [1.1, 1.2], 2, SLO_1)
    assert not meets_both(0.0, [0.5, 0.8], 2, SLO_1)


def test_summary_means_and_goodput():
    records = [(0.0, [0.5, 0.6], 2), (0.0, [2.0, 2.1], 2), (0.0, [], 2)]
    s = summarize(records, SLO_1, duration=10.0)
    assert s.slo_attainment == pytest.approx((1.0 + (1 - 1.0 / 2.1) + 0.0) / 3)
    assert s.met_both_share == pytest.approx(1 / 3)
    assert s.goodput == pytest.approx(0.1)
    assert s.finished_share == pytest.approx(2 / 3)


def test_slo_sources_flags_over_env_over_defaults(monkeypatch):
    monkeypatch.setenv("AEGAEON_TTFT_SLO", "5")
    monkeypatch.delenv("AEGAEON_TPOT_SLO", raising=False)
    assert SLO.from_env() == SLO(5.0, 0.1)
    assert SLO.from_env(ttft=2.0, tpot=0.05) == SLO(2.0, 0.05)
    monkeypatch.setenv("AEGAEON_TPOT_SLO", "fast")
    with pytest.raises(ConfigError, match="AEGAEON_TPOT_SLO"):
        SLO.from_env()
    with pytest.raises(ConfigError):
        SLO(0, 1)
