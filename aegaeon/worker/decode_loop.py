"""Executes a decode policy's turns on a step executor: the live side of `aegaeon.sched.rounds`.

The policy decides every turn and every batch; this loop switches the executor to the turn's model, steps
its batch while `quota_allows_step` (or `Turn.max_steps`) says so, feeds the measured step and switch
times to the cost model the policy plans with, and between steps lets its owner take in what arrived
(`DecodeHooks.poll`, which calls `arrive` and `remove`). It reads time only through `clock`, so a test can
run it on recorded step times (the differential test against the simulator does).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol, Sequence

from aegaeon.engine.executor import SeqUpdate
from aegaeon.engine.runner import SwitchRecord
from aegaeon.errors import AegaeonError
from aegaeon.sched.cost import MeasuredCost
from aegaeon.sched.decode import DecodeCandidate
from aegaeon.sched.rounds import Arrival, DecodePolicy, Turn, quota_allows_step

log = logging.getLogger(__name__)


class Executor(Protocol):
    """The part of `aegaeon.engine.executor.StepExecutor` a decode loop uses (a test stubs it)."""

    def switch_to(self, model: str) -> SwitchRecord | None: ...
    def prefetch(self, model: str) -> bool: ...
    def set_upcoming(self, models: list[str]) -> None: ...
    def step(self, model: str, request_ids: Sequence[int]) -> list[SeqUpdate]: ...
    def take_weight_wait(self) -> float: ...
    def wait_landed(self) -> None: ...
    def context_len(self, request_id: int) -> int: ...
    def fail_model(self, model: str, reason: str) -> list[SeqUpdate]: ...


class DecodeHooks(Protocol):
    def poll(self) -> None: ...
    def turn_started(self, turn: Turn) -> None: ...
    def switched(self, turn: Turn, record: SwitchRecord | None) -> None: ...
    # the switch's record is final: at once, or (layer-wise readiness) after the step its copy landed under
    def switch_landed(self, turn: Turn, record: SwitchRecord) -> None: ...
    def stepped(
        self,
        model: str,
        batch: Sequence[int],
        context_tokens: int,
        seconds: float,
        updates: list[SeqUpdate],
    ) -> None: ...
    def turn_done(self, turn: Turn, steps: int, seconds: float, switch_seconds: float) -> None: ...


class DecodeLoop:
    def __init__(
        self,
        executor: Executor,
        policy: DecodePolicy,
        cost: MeasuredCost,
        clock: Callable[[], float],
        hooks: DecodeHooks,
        record_turns: bool = False,
    ):
        self.executor, self.policy, self.cost, self.clock, self.hooks = (
            executor,
            policy,
            cost,
            clock,
            hooks,
        )
        self.live: dict[int, str] = {}  # request id -> model, in the order they arrived (FCFS)
        # request id -> when (on `clock`) its first decode token is due, until it has decoded here once
        self.first_due: dict[int, float] = {}
        self.turn_log: list[tuple[float, Turn]] | None = [] if record_turns else None

    def candidates(self) -> list[DecodeCandidate]:
        now = self.clock() if self.first_due else 0.0
        return [
            DecodeCandidate(
                i,
                model,
                self.executor.context_len(i),
                self.first_due[i] - now if i in self.first_due else None,
            )
            for i, model in self.live.items()
        ]

    def arrive(self, request_id: int, model: str, first_due: float | None = None) -> Arrival:
        """A request's KV is on the executor: the policy places it (a JOIN takes effect at the next step).
        `first_due`: when (on the loop's clock) its first decode token is due, for SLO-aware rounds."""
        self.live[request_id] = model
        if first_due is not None:
            self.first_due[request_id] = first_due
        live = self.candidates()
        return self.policy.arrive(live[-1], live)

    def remove(self, request_id: int) -> None:
        self.live.pop(request_id, None)
        self.first_due.pop(request_id, None)

    def run_next_turn(self) -> bool:
        """Run the policy's next turn; False when it has none (nothing live)."""
        turn = self.policy.next_turn(self.candidates())
        if turn is None:
            return False
        self.run_turn(turn)
        return True

    def run_turn(self, turn: Turn) -> None:
        if self.turn_log is not None:
            self.turn_log.append((self.clock(), turn))
        began = self.clock()
        self.hooks.turn_started(turn)
        upcoming = getattr(self.policy, "upcoming", None)
        if upcoming is not None:  # what resident-model eviction keeps longest (with residency)
            self.executor.set_upcoming(upcoming(self.candidates()))
        try:
            record = self.executor.switch_to(turn.model)
        except AegaeonError as err:
            updates = self.executor.fail_model(turn.model, str(err))
            self._apply(updates)
            self.hooks.stepped(turn.model, (), 0, 0.0, updates)
            return
        self.hooks.switched(turn, record)
        landing = record is not None and record.landing
        if record is not None and not landing:
            self._switch_landed(turn, record)
        self.hooks.poll()  # what arrived during the switch joins the batch it forms now
        self._prefetch_next()
        start, steps, switch_tail = self.clock(), 0, 0.0
        batch = self.policy.turn_batch(self.candidates())
        # the quota counts decoding only: what the first steps waited for weights still copying is switch
        while batch and self._allows(turn, steps, self.clock() - start - switch_tail):
            context = sum(self.executor.context_len(i) for i in batch)
            stepped = self.clock()
            updates = self.executor.step(turn.model, batch)
            waited = self.executor.take_weight_wait()
            switch_tail += waited
            seconds = self.clock() - stepped - waited
            steps += 1
            for update in updates:
                if update.new_tokens:
                    self.first_due.pop(update.request_id, None)  # decoded: no first deadline left
            self.cost.observe_step(turn.model, seconds)
            self._apply(updates)
            self.hooks.stepped(turn.model, batch, context, seconds, updates)
            if landing and not record.landing:
                self._switch_landed(turn, record)
                landing = False
            self.hooks.poll()
            self._prefetch_next()  # an arrival may have given the round a next turn
            batch = self.policy.turn_batch(self.candidates())
        if landing:  # no step let the copy land: wait for it, so the record is whole
            self.executor.wait_landed()
            self._switch_landed(turn, record)
        self.hooks.turn_done(turn, steps, self.clock() - began, record.seconds if record else 0.0)

    def _switch_landed(self, turn: Turn, record: SwitchRecord) -> None:
        if not record.resident:  # rounds are planned on whole copies
            self.cost.observe_switch(turn.model, record.copy_seconds or record.seconds)
        self.hooks.switch_landed(turn, record)

    def _prefetch_next(self) -> None:
        """Have the executor copy the policy's next model while this turn decodes (policies with prefetch)."""
        prefetch_target = getattr(self.policy, "prefetch_target", None)
        if prefetch_target is not None:
            target = prefetch_target(self.candidates())
            if target is not None:
                try:
                    self.executor.prefetch(target)
                except Exception:  # a copy that cannot start only leaves the next switch unhidden
                    log.exception("prefetch of %s failed; the switch to it will copy", target)

    @staticmethod
    def _allows(turn: Turn, steps: int, elapsed: float) -> bool:
        if turn.max_steps is not None:
            return steps < turn.max_steps
        return quota_allows_step(elapsed, turn.quota)

    def _apply(self, updates: list[SeqUpdate]) -> None:
        for update in updates:
            if update.done:
                self.live.pop(update.request_id, None)
                self.first_due.pop(update.request_id, None)
