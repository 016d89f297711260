"""The decode loop with a switch whose copy lands under the first step (layer-wise readiness): the wait is
switch time, not compute, nor part of the turn's quota, and the switch is reported once, when final."""

from aegaeon.engine.executor import SeqUpdate
from aegaeon.engine.runner import SwitchRecord
from aegaeon.sched.rounds import Arrival, Turn
from aegaeon.worker.decode_loop import DecodeLoop

STEP, WAIT, COPY = 0.3, 0.5, 0.9


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


class LandingExecutor:
    def __init__(self, clock):
        self.clock, self.record, self.waited = clock, None, 0.0

    def switch_to(self, model):
        self.clock.now += 0.01
        self.record = SwitchRecord(model, 0.01, 100, 0, 0, {"copy_weights": 0.01}, landing=True)
        return self.record

    def step(self, model, request_ids):
        if self.record.landing:  # this step waited for layers still copying, then the copy landed
            self.clock.now += WAIT
            self.waited += WAIT
            self.record.seconds += WAIT
            self.record.stages["wait_layers"] = WAIT
            self.record.copy_seconds = COPY
            self.record.landing = False
        self.clock.now += STEP
        return [SeqUpdate(i, (1,), None) for i in request_ids]

    def take_weight_wait(self):
        waited, self.waited = self.waited, 0.0
        return waited

    def wait_landed(self):  # the copy lands with nothing running under it
        self.clock.now += COPY
        self.record.seconds += COPY
        self.record.copy_seconds = COPY
        self.record.landing = False

    def prefetch(self, model):
        return False

    def set_upcoming(self, models):
        pass

    def context_len(self, request_id):
        return 10

    def fail_model(self, model, reason):
        raise AssertionError(reason)


class OneTurn:
    def __init__(self):
        self.turns = [Turn("a", (1,), 1.0)]

    def arrive(self, request, live):
        return Arrival.START

    def next_turn(self, live):
        return self.turns.pop() if self.turns else None

    def turn_batch(self, live):
        return (1,)


class Cost:
    def __init__(self):
        self.steps, self.switches = [], []

    def observe_step(self, model, seconds):
        self.steps.append(round(seconds, 9))

    def observe_switch(self, model, seconds):
        self.switches.append(seconds)


class Hooks:
    def __init__(self):
        self.calls = []

    def poll(self):
        pass

    def turn_started(self, turn):
        pass

    def switched(self, turn, record):
        self.calls.append(("switched", record.landing))

    def switch_landed(self, turn, record):
        self.calls.append(("landed", record.seconds, record.landing))

    def stepped(self, model, batch, context, seconds, updates):
        self.calls.append(("stepped", round(seconds, 9)))

    def turn_done(self, turn, steps, seconds, switch_seconds):
        self.calls.append(("done", steps, round(switch_seconds, 9)))


def test_the_wait_is_the_switchs_and_the_quota_counts_decoding_only():
    clock, cost, hooks = Clock(), Cost(), Hooks()
    loop = DecodeLoop(LandingExecutor(clock), OneTurn(), cost, clock, hooks)
    loop.arrive(1, "a")
    assert loop.run_next_turn()
    # a 1 s quota of 0.3 s steps: four steps (0.9 s decoded before the fourth), the 0.5 s wait not counted
    assert cost.steps == [STEP] * 4
    assert cost.switches == [COPY]  # the round planner learns the whole copy, once it is known
    assert hooks.calls[0] == ("switched", True)
    assert hooks.calls[1] == ("stepped", STEP)
    assert hooks.calls[2] == (
        "landed",
        0.01 + WAIT,
        False,
    )  # reported once, after the step it landed in
    assert [c[0] for c in hooks.calls].count("landed") == 1
    assert hooks.calls[-1] == ("done", 4, 0.01 + WAIT)


def test_a_request_carries_its_first_decode_slack_until_it_has_decoded():
    clock, cost, hooks = Clock(), Cost(), Hooks()
    loop = DecodeLoop(LandingExecutor(clock), OneTurn(), cost, clock, hooks)
    clock.now = 2.0
    loop.arrive(1, "a", first_due=5.0)
    loop.arrive(2, "b")  # nothing known: no slack
    assert [(c.request_id, c.first_decode_slack) for c in loop.candidates()] == [
        (1, 3.0),
        (2, None),
    ]
    loop.run_next_turn()  # request 1 decodes
    assert all(c.first_decode_slack is None for c in loop.candidates())
    loop.remove(2)
    assert 1 not in loop.first_due and 2 not in loop.first_due


class NoBatch(OneTurn):
    def turn_batch(self, live):
        return ()  # e.g. every request of the turn was cancelled while it switched


def test_a_turn_that_never_steps_waits_for_its_copy_before_reporting_the_switch():
    clock, cost, hooks = Clock(), Cost(), Hooks()
    loop = DecodeLoop(LandingExecutor(clock), NoBatch(), cost, clock, hooks)
    loop.arrive(1, "a")
    loop.run_next_turn()
    assert cost.switches == [COPY]  # the whole copy, not the bind time alone
    assert hooks.calls[1] == ("landed", 0.01 + COPY, False)
    assert hooks.calls[-1] == ("done", 0, 0.01 + COPY)
