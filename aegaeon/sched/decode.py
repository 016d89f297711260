"""Decode policy: weighted round-robin over per-model batches.

At the top of each round an instance regroups its requests FCFS into one batch
per model (bounded by the batch size and the KV memory). Batch i has predicted
step time d_i and n_i = TPOT_SLO / d_i (steps it can afford per TPOT). With c
the summed switch time of the round's models and Q the largest quota:
    alpha   = max(c / (min_i n_i * Q) + sum_j 1/n_j, 0.5)
    quota_i = c / (n_i * (alpha - sum_j 1/n_j))
Each batch decodes until its quota is spent, then the instance switches to the
next batch; a round ends when every batch had its turn. With no switch to pay
(c = 0: one model, already loaded), the batch simply runs for Q.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from aegaeon.errors import ConfigError
from aegaeon.sched.cost import CostModel

DEFAULT_MAX_QUOTA = 4.0
DEFAULT_MAX_BATCH = 64
MIN_ALPHA = 0.5
# Request-level scaling (the ServerlessLLM baseline) decodes a model's run in slices of this many seconds and
# admits new requests of the model between them; the live worker and the simulator both use it.
REQUEST_LEVEL_SLICE = 0.05


@dataclass(frozen=True)
class DecodeCandidate:
    """A request waiting on a decode instance, in FCFS order."""

    request_id: int
    model: str
    context_len: int
    # seconds from the decision until the request's first decode token is due (its second token: the SLO's
    # deadline after the prefill's), while it has not decoded on this instance yet; None otherwise, or when
    # the executor does not say (SLO-aware rounds read it: RoundConfig.slo_aware)
    first_decode_slack: float | None = None


@dataclass(frozen=True)
class DecodeBatch:
    model: str
    request_ids: tuple[int, ...]
    context_tokens: int


@dataclass(frozen=True)
class RoundPlan:
    batches: tuple[DecodeBatch, ...]
    quotas: tuple[float, ...]  # seconds of decoding per batch, same order
    step_times: tuple[float, ...]
    switch_cost: float  # c: the weight copies of the round
    alpha: float
    load: float  # sum_j 1/n_j: above 1 the round cannot meet the TPOT SLO
    # the switch time each turn exposes (its copy less the overlap with the turn before, with prefetch;
    # the whole copy without)
    exposed: tuple[float, ...] = ()


def form_batches(
    candidates: Sequence[DecodeCandidate],
    cost: CostModel,
    kv_capacity_bytes: int,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> tuple[list[DecodeBatch], list[int]]:
    """FCFS regrouping into per-model batches; returns (batches, request ids left waiting).

    Batches are ordered by their first request's position (FCFS across models).
    A request is admitted while its model's batch has room and its KV fits the
    memory left; the rest wait (their KV stays in host memory).
    """
    members: dict[str, list[DecodeCandidate]] = {}
    waiting: list[int] = []
    used = 0
    for cand in candidates:
        need = cand.context_len * cost.kv_bytes_per_token(cand.model)
        batch = members.setdefault(cand.model, [])
        if len(batch) >= max_batch or used + need > kv_capacity_bytes:
            waiting.append(cand.request_id)
            continue
        batch.append(cand)
        used += need
    batches = [
        DecodeBatch(model, tuple(c.request_id for c in batch), sum(c.context_len for c in batch))
        for model, batch in members.items()
        if batch
    ]
    return batches, waiting


def compute_quotas(
    step_times: Sequence[float],
    switch_cost: float,
    tpot_slo: float,
    max_quota: float = DEFAULT_MAX_QUOTA,
) -> tuple[tuple[float, ...], float, float]:
    """The quota formula; returns (quotas, alpha, load)."""
    if not step_times:
        return (), MIN_ALPHA, 0.0
    if min(step_times) <= 0 or tpot_slo <= 0 or max_quota <= 0 or switch_cost < 0:
        raise ConfigError(
            f"quota inputs out of range: steps {step_times}, c {switch_cost}, SLO {tpot_slo}, Q {max_quota}"
        )
    n = [tpot_slo / d for d in step_times]
    load = sum(1.0 / x for x in n)
    if switch_cost == 0:
        return tuple(max_quota for _ in n), MIN_ALPHA, load
    alpha = max(switch_cost / (min(n) * max_quota) + load, MIN_ALPHA)
    return tuple(switch_cost / (x * (alpha - load)) for x in n), alpha, load


def compute_prefetch_quotas(
    step_times: Sequence[float],
    next_copies: Sequence[float],
    tpot_slo: float,
    max_quota: float = DEFAULT_MAX_QUOTA,
) -> tuple[tuple[float, ...], float]:
    """Quotas when each turn copies the next turn's weights while it decodes (prefetch); returns (quotas,
    load). A round of length T meets the TPOT SLO on average when every quota q_i >= T / n_i; with the copies
    hidden T is the sum of the quotas, so q_i = s / n_i meets it for any s once the load is at most 1. The
    shortest round that still hides every copy (q_i >= next_copies[i]) takes s = max_i next_copies[i] * n_i,
    capped so that no quota exceeds Q (copies longer than that are partly exposed). Shorter rounds are what
    prefetch buys: a request waits less for its model's next turn."""
    if not step_times:
        return (), 0.0
    if min(step_times) <= 0 or tpot_slo <= 0 or max_quota <= 0 or min(next_copies) < 0:
        raise ConfigError(
            f"quota inputs out of range: steps {step_times}, copies {next_copies}, SLO {tpot_slo}, "
            f"Q {max_quota}"
        )
    n = [tpot_slo / d for d in step_times]
    load = sum(1.0 / x for x in n)
    if not any(next_copies):
        return tuple(max_quota for _ in n), load
    scale = min(max(c * x for c, x in zip(next_copies, n)), max_quota * min(n))
    return tuple(scale / x for x in n), load


def plan_round(
    batches: Sequence[DecodeBatch],
    loaded_model: str | None,
    cost: CostModel,
    tpot_slo: float,
    max_quota: float = DEFAULT_MAX_QUOTA,
    prefetch: bool = False,
) -> RoundPlan:
    """Quotas for one round. Batches run in the given order, starting from `loaded_model`. With `prefetch`
    each turn's weight copy runs during the turn before it (the round's first, after the loaded model's,
    during the previous round's last turn, which is that model's), and the quotas are
    `compute_prefetch_quotas`'."""
    steps = tuple(cost.decode_time(b.model, len(b.request_ids), b.context_tokens) for b in batches)
    models = [b.model for b in batches]
    if len(models) == 1:
        switch_cost = cost.switch_time(loaded_model, models[0])
    else:  # a cycling round loads every one of its models once
        switch_cost = sum(cost.switch_time(None, m) for m in dict.fromkeys(models))
    copies = [
        cost.switch_time(models[i - 1] if i else loaded_model, m) for i, m in enumerate(models)
    ]
    if not prefetch or len(models) == 1:
        quotas, alpha, load = compute_quotas(steps, switch_cost, tpot_slo, max_quota)
        return RoundPlan(tuple(batches), quotas, steps, switch_cost, alpha, load, tuple(copies))
    next_copies = copies[1:] + [0.0]
    quotas, load = compute_prefetch_quotas(steps, next_copies, tpot_slo, max_quota)
    exposed = [copies[0]] + [max(0.0, c - q) for c, q in zip(copies[1:], quotas)]
    return RoundPlan(tuple(batches), quotas, steps, switch_cost, MIN_ALPHA, load, tuple(exposed))


def rotate_to_loaded(batches: list[DecodeBatch], loaded_model: str | None) -> list[DecodeBatch]:
    """Start the round with the batch of the model already loaded (saves one switch)."""
    for i, batch in enumerate(batches):
        if batch.model == loaded_model:
            return batches[i:] + batches[:i]
    return batches


def choose_decode_instance(
    model: str, loads: Sequence[Mapping[str, int]], max_batch: int = DEFAULT_MAX_BATCH
) -> int:
    """The decode instance a request of `model` joins; `loads[i]` counts instance i's live requests per model.

    An instance already decoding `model` with room in that model's batch takes it, the least busy such one:
    the batch grows and no round gains a switch. Otherwise the instance with the fewest models, then the
    fewest requests, since a new model adds a switch and a turn to every round; an instance whose batch of
    `model` is full is passed over while another has room. Ties go to the lower index.
    """
    if not loads:
        raise ConfigError("no decode instance to place the request on")
    busy = [sum(load.values()) for load in loads]
    with_room = [i for i, load in enumerate(loads) if load.get(model, 0) < max_batch] or list(
        range(len(loads))
    )
    holding = [i for i in with_room if loads[i].get(model, 0) > 0]
    if holding:
        return min(holding, key=lambda i: (busy[i], i))
    models = [sum(1 for count in load.values() if count > 0) for load in loads]
    return min(with_room, key=lambda i: (models[i], busy[i], i))
