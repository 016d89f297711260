"""Decode policies as state machines: which model's batch an instance decodes next, and for how long
(past 300 lines: the three policies share one protocol, Turn and Arrival, and its helpers).

One policy object per decode instance. The executor (a live decode worker, or the simulator's decode
instance) tells it what happens and asks it what to do; it never decides itself:

- `arrive(request, live)`: a request reached the instance (its KV is there). The answer says what the request
  does: START (the instance was idle: ask `next_turn`), JOIN (it joins the running batch at the next step),
  WAIT (it waits for a turn already coming in this round, or for the next round), or NEW_TURN (it got a
  turn of its own at the end of this round).
- `next_turn(live)`: the running turn is over (quota spent or batch empty); the next `Turn`, or None when
  the instance has nothing left (idle until the next arrival).
- `turn_batch(live)`: the running turn's batch now (after a request finished or joined).

`live` is the instance's unfinished requests in the order they reached it (FCFS), as `DecodeCandidate`s.
Time enters only through the quotas: a turn decodes while the seconds spent decoding (after its switch) are
below its quota (`quota_allows_step`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol, Sequence

from aegaeon.errors import ConfigError
from aegaeon.sched.cost import CostModel
from aegaeon.sched.decode import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_QUOTA,
    REQUEST_LEVEL_SLICE,
    DecodeCandidate,
    form_batches,
    plan_round,
    rotate_to_loaded,
)
from aegaeon.sched.residency import upcoming_models

UNBOUNDED_KV = 2**62
DEADLINE_SEARCH_STEPS = 48  # bisections for an SLO-aware turn's quota: far below a microsecond


class Arrival(enum.Enum):
    START = "start"  # the instance was idle: call next_turn
    JOIN = "join"  # joins the running turn's batch at the next step
    WAIT = "wait"  # a coming turn of its model (this round or the next) will take it
    NEW_TURN = "new_turn"  # a turn for its model was added at the end of this round


@dataclass(frozen=True)
class Turn:
    """Decode `model` from `request_ids` (the batch when the turn starts) for `quota` seconds after the
    switch, or for `max_steps` steps when that is set (the one-process engine's fixed turns)."""

    model: str
    request_ids: tuple[int, ...]
    quota: float
    max_steps: int | None = None


def quota_allows_step(elapsed: float, quota: float) -> bool:
    """A turn starts another decode step while the seconds it has spent decoding are below its quota (so a
    turn always runs at least one step, and its last step may end past the quota)."""
    return elapsed < quota


class DecodePolicy(Protocol):
    def arrive(self, request: DecodeCandidate, live: Sequence[DecodeCandidate]) -> Arrival: ...
    def next_turn(self, live: Sequence[DecodeCandidate]) -> Turn | None: ...
    def turn_batch(self, live: Sequence[DecodeCandidate]) -> tuple[int, ...]: ...


def first_of_model(model: str, live: Sequence[DecodeCandidate], limit: int) -> tuple[int, ...]:
    """The first `limit` live requests of `model`, FCFS: the batch a turn of `model` decodes."""
    ids = []
    for cand in live:
        if cand.model == model:
            ids.append(cand.request_id)
            if len(ids) == limit:
                break
    return tuple(ids)


@dataclass(frozen=True)
class RoundConfig:
    tpot_slo: float
    max_quota: float = DEFAULT_MAX_QUOTA
    max_batch: int = DEFAULT_MAX_BATCH
    prefetch: bool = False  # each turn copies the next turn's weights while it decodes (plan_round)
    # beyond the paper: shorten a turn when a request waiting for a later turn of the round would otherwise
    # miss its first decode deadline (DecodeCandidate.first_decode_slack); the paper's quotas otherwise
    slo_aware: bool = False

    def __post_init__(self) -> None:
        if self.tpot_slo <= 0 or self.max_quota <= 0 or self.max_batch < 1:
            raise ConfigError(f"decode round settings out of range: {self}")


class WeightedRoundRobin:
    """Aegaeon's decode policy (aegaeon.sched.decode has the quota formula).

    A round regroups the live requests FCFS into per-model batches within the batch cap and the KV
    capacity, starting with the loaded model, and gives each a quota. A turn's batch is formed when the turn
    starts (the first `max_batch` live requests of its model) and refilled as members finish. A request that
    arrives for the running turn's model joins its batch at the next step while there is room; one whose model
    has a turn coming waits for it; any other gets a turn at the round's end, its quota planned with the
    round's models plus its own.
    """

    def __init__(self, cost: CostModel, config: RoundConfig, kv_capacity_bytes: int = UNBOUNDED_KV):
        self.cost, self.config, self.kv_capacity_bytes = cost, config, kv_capacity_bytes
        self.turns: list[tuple[str, float]] = []  # (model, quota) still to run this round
        self.round_models: list[str] = []
        self.running: str | None = None  # the model of the turn under way (switching or decoding)
        self.loaded: str | None = None  # the model whose weights the instance holds

    def arrive(self, request: DecodeCandidate, live: Sequence[DecodeCandidate]) -> Arrival:
        if self.running is None:
            return Arrival.START
        if request.model == self.running and request.request_id in self.turn_batch(live):
            return Arrival.JOIN
        if any(model == request.model for model, _ in self.turns):
            return Arrival.WAIT
        models = self.round_models + [request.model]
        plan = self._plan([c for c in live if c.model in models])
        quota = dict(zip((b.model for b in plan.batches), plan.quotas)).get(request.model)
        if quota is None:
            return Arrival.WAIT  # its KV does not fit beside the round's: the next round takes it
        self.turns.append((request.model, quota))
        self.round_models.append(request.model)
        return Arrival.NEW_TURN

    def next_turn(self, live: Sequence[DecodeCandidate]) -> Turn | None:
        while True:
            if not self.turns:
                if not live:
                    self.running, self.round_models = None, []
                    return None
                plan = self._plan(live)
                self.turns = list(zip((b.model for b in plan.batches), plan.quotas))
                self.round_models = [b.model for b in plan.batches]
            model, quota = self.turns.pop(0)
            batch = first_of_model(model, live, self.config.max_batch)
            if batch:  # a turn whose requests all finished meanwhile is skipped
                if self.config.slo_aware:
                    quota = self._quota_for_deadlines(model, quota, batch, live)
                self.running = self.loaded = model
                return Turn(model, batch, quota)

    def turn_batch(self, live: Sequence[DecodeCandidate]) -> tuple[int, ...]:
        return first_of_model(self.running, live, self.config.max_batch) if self.running else ()

    def upcoming(self, live: Sequence[DecodeCandidate]) -> list[str]:
        """The models the instance will run after the running turn, soonest first: this round's later turns,
        then the models waiting (FCFS), which the next round takes (what resident-model eviction keeps)."""
        waiting = [c.model for c in live]
        return [
            m for m in upcoming_models([m for m, _ in self.turns], waiting) if m != self.running
        ]

    def prefetch_target(self, live: Sequence[DecodeCandidate]) -> str | None:
        """With prefetch: the model whose weights the instance copies while the running turn decodes: the
        next turn's of this round, else (the round's last turn) the first other model waiting, which the next
        round runs right after the loaded one, or first when the loaded one's requests are done."""
        if not self.config.prefetch:
            return None
        return next(iter(self.upcoming(live)), None)

    def _quota_for_deadlines(
        self,
        model: str,
        quota: float,
        batch: tuple[int, ...],
        live: Sequence[DecodeCandidate],
    ) -> float:
        """SLO-aware rounds: the turn about to run decodes for the longest quota (at most the planned one, at
        least one step of its own) with which every later turn of the round makes its first step before the
        earliest first decode deadline among the requests it will decode. A deadline that even one step
        could not save does not count (a late token restarts the schedule from its own time, so cutting for
        it gains nothing). Decided again at every turn, so each turn makes room for the ones after it."""
        slack: dict[str, float] = {}
        for later, _ in self.turns:  # the requests each later turn decodes (its first max_batch)
            members = set(first_of_model(later, live, self.config.max_batch))
            for cand in live:
                if cand.request_id in members and cand.first_decode_slack is not None:
                    slack[later] = min(
                        slack.get(later, cand.first_decode_slack), cand.first_decode_slack
                    )
        slack.pop(model, None)  # the turn's own requests decode now
        if not slack or not self.turns:
            return quota
        own_step = min(quota, self._step_time(model, batch, live))
        # with prefetch this turn's model was copied during the turn before (the policy named it)
        switch = 0.0 if self.config.prefetch else self.cost.switch_time(self.loaded, model)

        def misses(own_quota: float) -> dict[str, float]:
            """Per later model with a deadline: how late its first step would be (<= 0: on time) if this
            turn decoded for `own_quota`. Never decreasing in `own_quota`, with prefetch too: a longer turn
            ends later by more than it hides of the next copy."""
            late, end, previous, previous_quota = {}, switch + own_quota, model, own_quota
            for later, later_quota in self.turns:
                end += self._exposed(previous, later, previous_quota)
                if later in slack and later not in late:
                    ids = first_of_model(later, live, self.config.max_batch)
                    late[later] = end + self._step_time(later, ids, live) - slack[later]
                end += later_quota
                previous, previous_quota = later, later_quota
            return late

        savable = [m for m, late in misses(own_step).items() if late <= 0]
        on_time = lambda q: all(misses(q)[m] <= 0 for m in savable)  # noqa: E731
        if not savable or on_time(quota):
            return quota
        low, high = (
            own_step,
            quota,
        )  # on time at low, late at high: the longest turn that is on time
        for _ in range(DEADLINE_SEARCH_STEPS):
            middle = (low + high) / 2
            low, high = (middle, high) if on_time(middle) else (low, middle)
        return low

    def _exposed(self, before: str, after: str, before_quota: float) -> float:
        """The switch a turn of `after` pays after one of `before` (with prefetch, what that turn's quota
        could not hide)."""
        copy = self.cost.switch_time(before, after)
        if self.config.prefetch:
            return max(0.0, copy - before_quota)
        return copy

    def _step_time(
        self, model: str, ids: tuple[int, ...], live: Sequence[DecodeCandidate]
    ) -> float:
        members = set(ids)
        context = sum(c.context_len for c in live if c.request_id in members)
        return self.cost.decode_time(model, len(ids), context)

    def _plan(self, candidates: Sequence[DecodeCandidate]):
        batches, _waiting = form_batches(
            candidates, self.cost, self.kv_capacity_bytes, self.config.max_batch
        )
        if not batches:  # the first request alone overflows the KV capacity: run it anyway, it cannot wait forever
            batches, _ = form_batches(
                candidates[:1], self.cost, UNBOUNDED_KV, self.config.max_batch
            )
        batches = rotate_to_loaded(batches, self.loaded)
        return plan_round(
            batches,
            self.loaded,
            self.cost,
            self.config.tpot_slo,
            self.config.max_quota,
            self.config.prefetch,
        )


class RequestLevel:
    """Request-level scaling (the ServerlessLLM baseline's decode): the oldest live request's model keeps the
    instance until none of its requests is left, in slices of `slice_seconds`; requests of that model that
    arrive meanwhile join at the next slice, requests of other models wait."""

    def __init__(
        self, max_batch: int = DEFAULT_MAX_BATCH, slice_seconds: float = REQUEST_LEVEL_SLICE
    ):
        if max_batch < 1 or slice_seconds <= 0:
            raise ConfigError(
                f"request-level decode needs max_batch >= 1 and a positive slice, got {max_batch}, "
                f"{slice_seconds}"
            )
        self.max_batch, self.slice_seconds = max_batch, slice_seconds
        self.running: str | None = None
        self.members: tuple[int, ...] = ()  # the slice's batch: fixed until the slice ends

    def arrive(self, request: DecodeCandidate, live: Sequence[DecodeCandidate]) -> Arrival:
        return Arrival.START if self.running is None else Arrival.WAIT

    def upcoming(self, live: Sequence[DecodeCandidate]) -> list[str]:
        """The models after the running one, in the order their oldest requests arrived."""
        return [m for m in upcoming_models([], [c.model for c in live]) if m != self.running]

    def next_turn(self, live: Sequence[DecodeCandidate]) -> Turn | None:
        if not live:
            self.running, self.members = None, ()
            return None
        if not any(c.model == self.running for c in live):
            self.running = live[0].model
        self.members = first_of_model(self.running, live, self.max_batch)
        return Turn(self.running, self.members, self.slice_seconds)

    def turn_batch(self, live: Sequence[DecodeCandidate]) -> tuple[int, ...]:
        alive = {c.request_id for c in live}
        return tuple(i for i in self.members if i in alive)


class StepRoundRobin:
    """The one-process engine's turns (`aegaeon generate`): models with live requests in turn, in the order
    they first appear, each for `steps_per_turn` steps of its oldest `max_batch` requests."""

    def __init__(self, steps_per_turn: int, max_batch: int):
        if steps_per_turn < 1 or max_batch < 1:
            raise ConfigError(
                f"steps_per_turn and max_batch must be at least 1, got {steps_per_turn}, {max_batch}"
            )
        self.steps_per_turn, self.max_batch = steps_per_turn, max_batch
        self.running: str | None = None

    def arrive(self, request: DecodeCandidate, live: Sequence[DecodeCandidate]) -> Arrival:
        return Arrival.START if self.running is None else Arrival.WAIT

    def next_turn(self, live: Sequence[DecodeCandidate]) -> Turn | None:
        models = list(dict.fromkeys(c.model for c in live))
        if not models:
            self.running = None
            return None
        self.running = (
            models[(models.index(self.running) + 1) % len(models)]
            if self.running in models
            else models[0]
        )
        return Turn(
            self.running,
            first_of_model(self.running, live, self.max_batch),
            float("inf"),
            self.steps_per_turn,
        )

    def turn_batch(self, live: Sequence[DecodeCandidate]) -> tuple[int, ...]:
        return first_of_model(self.running, live, self.max_batch) if self.running else ()
