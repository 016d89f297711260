"""SLOs and SLO attainment: one definition for the simulator and the live benchmark.

Token deadlines (the paper's definition). The first output token is due
`ttft` seconds after arrival. Each next token is due `tpot` seconds after the
previous token's deadline; but when a token is late, the schedule restarts from
that token's own time, so the next one is due `tpot` after it. In one formula:
D_1 = arrival + ttft and D_k = max(D_{k-1}, t_{k-1}) + tpot.

Attainment of a request: the share of its lifetime (arrival to last token) spent
on schedule, i.e. 1 - sum_k max(0, t_k - D_k) / (t_n - arrival); 0 if it never
finished. The run's SLO attainment is the mean over all requests. The paper artifact's own scorer
(`paper_attainment`, more forgiving of stalls after a late first token) is reported beside it.

Also reported: the plain share of requests meeting both SLOs (TTFT <= ttft and
mean time per output token after the first <= tpot), and goodput, those
requests per second of the workload's duration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from aegaeon.config.env import env_float
from aegaeon.errors import ConfigError

DEFAULT_TTFT_SLO = 10.0
DEFAULT_TPOT_SLO = 0.1
_EPS = 1e-9  # timestamps are floats: a token exactly on its deadline is on time


@dataclass(frozen=True)
class SLO:
    ttft: float = DEFAULT_TTFT_SLO
    tpot: float = DEFAULT_TPOT_SLO

    def __post_init__(self) -> None:
        if not (self.ttft > 0 and self.tpot > 0):
            raise ConfigError(
                f"SLOs must be positive, got ttft={self.ttft} s and tpot={self.tpot} s"
            )

    @classmethod
    def from_env(cls, ttft: float | None = None, tpot: float | None = None) -> "SLO":
        """Flags win over AEGAEON_TTFT_SLO / AEGAEON_TPOT_SLO, which win over defaults."""
        return cls(
            ttft if ttft is not None else env_float("AEGAEON_TTFT_SLO", DEFAULT_TTFT_SLO),
            tpot if tpot is not None else env_float("AEGAEON_TPOT_SLO", DEFAULT_TPOT_SLO),
        )

    def scaled(self, factor: float) -> "SLO":
        return SLO(self.ttft * factor, self.tpot * factor)


def token_deadlines(arrival: float, token_times: np.ndarray, slo: SLO) -> np.ndarray:
    """Deadline of every token under the restarting schedule (see module doc)."""
    n = len(token_times)
    k = np.arange(1, n + 1, dtype=np.float64)
    # D_k - k*tpot = max(D_1 - tpot, max_{j<k} (t_j - j*tpot))
    shifted = token_times - k * slo.tpot
    running = np.maximum.accumulate(np.concatenate(([arrival + slo.ttft - slo.tpot], shifted[:-1])))
    return running + k * slo.tpot


def next_token_deadline(arrival: float, token_times: Sequence[float], slo: SLO) -> float:
    """When the request's next token is due (D_{n+1} of the module doc, after its n tokens so far)."""
    deadline = arrival + slo.ttft
    for t in token_times:
        deadline = max(deadline, t) + slo.tpot
    return deadline


def request_attainment(
    arrival: float, token_times: Sequence[float], output_len: int, slo: SLO
) -> float:
    """Share of the request's lifetime spent on schedule; 0 if unfinished."""
    times = np.asarray(token_times, dtype=np.float64)
    if len(times) < output_len or len(times) == 0:
        return 0.0
    lifetime = times[-1] - arrival
    if lifetime <= 0:
        return 1.0
    late = np.maximum(0.0, times - token_deadlines(arrival, times, slo) - _EPS).sum()
    return float(max(0.0, 1.0 - late / lifetime))


def paper_attainment(
    arrival: float, token_times: Sequence[float], output_len: int, slo: SLO
) -> float:
    """The paper artifact's scorer (its plots/plot_e2e.py), reported beside ours for every system.

    Token k is on time while its time since the clock's start is within a target that begins at `ttft` and
    grows by `tpot` per token. A late token banks the target reached so far as on-time time, restarts the
    clock at itself, and keeps the grown target: a missed first token charges the whole TTFT once, and later
    stalls are mostly forgiven. The request's score is what was banked, plus the last stretch up to the
    target, over its lifetime; 0 when it failed or did not finish."""
    if len(token_times) < output_len or len(token_times) == 0:
        return 0.0
    banked, start, credit, target = 0.0, 0.0, 0.0, slo.ttft
    elapsed = 0.0
    for time in token_times[:output_len]:
        elapsed = time - arrival
        if elapsed - start <= target + _EPS:
            credit = target
        else:
            banked += credit
            start, credit = elapsed, 0.0
        target += slo.tpot
    if elapsed <= 0:
        return 1.0
    return (banked + min(target, elapsed - start)) / elapsed


def meets_both(arrival: float, token_times: Sequence[float], output_len: int, slo: SLO) -> bool:
    """TTFT within the SLO and mean TPOT within the SLO (finished requests only)."""
    if len(token_times) < output_len or len(token_times) == 0:
        return False
    ttft = token_times[0] - arrival
    tpot = (
        (token_times[-1] - token_times[0]) / (len(token_times) - 1) if len(token_times) > 1 else 0.0
    )
    return ttft <= slo.ttft + _EPS and tpot <= slo.tpot + _EPS


@dataclass(frozen=True)
class AttainmentSummary:
    slo_attainment: float  # mean of request_attainment, 0..1
    paper_attainment: float  # mean of paper_attainment (the artifact's scorer), 0..1
    met_both_share: float  # share of requests meeting TTFT and TPOT SLOs
    goodput: float  # requests meeting both SLOs per second of the workload
    finished_share: float


def summarize(
    records: Sequence[tuple[float, Sequence[float], int]], slo: SLO, duration: float
) -> AttainmentSummary:
    """records: (arrival, token_times, output_len) per request."""
    if not records:
        raise ConfigError("no requests to summarise: the workload is empty")
    if duration <= 0:
        raise ConfigError(f"workload duration must be positive, got {duration}")
    attain = [request_attainment(a, t, n, slo) for a, t, n in records]
    paper = [paper_attainment(a, t, n, slo) for a, t, n in records]
    met = sum(meets_both(a, t, n, slo) for a, t, n in records)
    finished = sum(len(t) >= n for _, t, n in records)
    return AttainmentSummary(
        float(np.mean(attain)),
        float(np.mean(paper)),
        met / len(records),
        met / duration,
        finished / len(records),
    )
