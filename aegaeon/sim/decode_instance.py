"""A decode instance in the simulator: executes its decode policy's turns on the simulated clock.

The policy (aegaeon.sched.rounds) decides every turn; this class only advances time by the cost model.
A turn's decoding is laid out in segments: a segment decodes the turn's batch, as the policy forms it,
until a member finishes or the quota is spent (`aegaeon.sim.core.decode_segment`); the next segment's batch
is formed afresh (members past the batch cap move up). When a request joins the
running batch, the token times laid out past the step in flight are taken back and a new segment starts,
with the newcomer, when that step ends, as the live worker admits joiners between steps.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass

from aegaeon.sched.cost import CostModel
from aegaeon.sched.decode import DecodeCandidate
from aegaeon.sched.layerwise import switch_exposure
from aegaeon.sched.request import RequestState
from aegaeon.sched.rounds import Arrival, DecodePolicy, Turn
from aegaeon.sched.slo import SLO, next_token_deadline
from aegaeon.sim.core import EventLoop, decode_segment
from aegaeon.sim.resident import SimResidentSet


@dataclass
class _Segment:
    batch: list[RequestState]
    start: float


class SimDecodeInstance:
    def __init__(
        self,
        loop: EventLoop,
        cost: CostModel,
        policy: DecodePolicy,
        record_turns: bool = False,
        device_memory_bytes: int | None = None,
        slo: SLO | None = None,
        residency: bool = False,
        layerwise: bool = False,
    ):
        self.loop, self.cost, self.policy = loop, cost, policy
        self.layerwise = layerwise  # a switch's first step overlaps the rest of its copy
        self.copy_free_at = (
            0.0  # when the running turn's own copy ends (a prefetch is queued behind it)
        )
        self.slo = slo  # with it, candidates carry their first decode deadline (SLO-aware rounds)
        self.device_memory_bytes = device_memory_bytes
        self.prefetching: tuple[str, float] | None = None  # (model, when its copy began)
        # with prefetch the instance has two weight slots (as the live engine): `other` is the model whose
        # weights are still intact in the slot not bound, so switching back to it costs nothing
        # with residency (beyond the paper) every model whose weights still fit beside the KV in use stays in
        # device memory instead (prefetches copy there too), as the live engine with --residency
        self.resident = (
            SimResidentSet(device_memory_bytes, cost.weight_bytes) if residency else None
        )
        prefetch = bool(getattr(getattr(policy, "config", None), "prefetch", False))
        self.two_slots = prefetch and not residency
        self.other: str | None = None
        self.exposed_switches: list[float] = []  # the switch time each turn paid
        self.requests: list[RequestState] = []  # in the order they arrived here
        self.by_id: dict[int, RequestState] = {}
        self.loaded: str | None = None
        self.turn: Turn | None = None
        self.decode_start = 0.0  # when the running turn's decoding began (after its switch)
        self.segment: _Segment | None = None
        self.epoch = 0  # bumped when a segment is cut short, so its pending end event is ignored
        self.switches = 0
        self.busy_seconds = 0.0  # switching + decoding
        self.turn_log: list[tuple[float, Turn]] | None = [] if record_turns else None

    # -- what the policy sees ----------------------------------------------------------------------------
    def _live(self, state: RequestState) -> bool:
        """Not finished by now. A running segment lays its token times out ahead, so a request in it can look
        finished before its last token's time."""
        return not state.finished or state.token_times[-1] > self.loop.now

    def live_states(self) -> list[RequestState]:
        return [s for s in self.requests if self._live(s)]

    def candidates(self) -> list[DecodeCandidate]:
        """The live requests with their context as of now (a running segment's laid-out tokens after now do
        not count yet: the live worker has not made them)."""
        now = self.loop.now
        candidates = []
        for s in self.live_states():
            made = bisect_right(s.token_times, now)
            slack = None
            if self.slo is not None and made == 1:  # its first decode step is still to come
                slack = next_token_deadline(s.spec.arrival, s.token_times[:1], self.slo) - now
            candidates.append(
                DecodeCandidate(s.spec.request_id, s.model, s.spec.input_len + made, slack)
            )
        return candidates

    def load(self) -> Counter:
        """Live requests per model: what decode placement compares instances by."""
        return Counter(s.model for s in self.live_states())

    # -- events ------------------------------------------------------------------------------------------
    def arrive(self, state: RequestState) -> None:
        self.requests.append(state)
        self.by_id[state.spec.request_id] = state
        live = self.candidates()
        decision = self.policy.arrive(live[-1], live)
        if decision is Arrival.START:
            self._next_turn()
        elif decision is Arrival.JOIN:
            self._cut_segment()
        elif self.segment is not None:  # decoding: the arrival may have given the round a next turn
            self._prefetch_next()

    def _next_turn(self) -> None:
        self.segment = None
        self.requests = self.live_states()
        self.by_id = {s.spec.request_id: s for s in self.requests}
        turn = self.turn = self.policy.next_turn(self.candidates())
        if turn is None:
            return
        if self.turn_log is not None:
            self.turn_log.append((self.loop.now, turn))
        if self.resident is not None:
            self.resident.set_upcoming(self.policy.upcoming(self.candidates()))
            self._fit_kv()  # the KV the last turn added may have evicted models
        switch = self.cost.switch_time(self.loaded, turn.model)
        if self.prefetching is not None and self.prefetching[0] == turn.model:
            # copied meanwhile (a copy queued behind the turn before's own may not have begun)
            switch = max(0.0, switch - max(0.0, self.loop.now - self.prefetching[1]))
        elif self.resident is not None and turn.model in self.resident:
            switch = 0.0  # resident: re-bind only
        elif self.two_slots and self.other == turn.model and self._room_to_prefetch(turn.model):
            switch = 0.0  # still intact in the other slot (KV left room for it): re-bind only
        queued = 0.0
        if switch > 0 and self.prefetching is not None and self.prefetching[0] != turn.model:
            # a copy of another model is in flight: live, this switch's copy waits for it (one link)
            queued = self._prefetch_left()
        if (
            turn.model != self.loaded
        ):  # a turn of the loaded model keeps what was prefetched for later
            if self.resident is not None:
                self._keep_resident(turn.model)
                if self.prefetching is not None and self.prefetching[0] == turn.model:
                    self.prefetching = None  # used; a copy of another model goes on
            else:
                self.prefetching = None
            if self.two_slots:  # the model switched away from stays intact in its slot
                self.other = self.loaded
        self.copy_free_at = self.loop.now + queued + switch
        if self.layerwise and switch > 0:
            batch = [self.by_id[i] for i in self.policy.turn_batch(self.candidates())]
            first_step = self.cost.decode_time(
                turn.model, len(batch), sum(s.context_len for s in batch)
            )
            switch = switch_exposure(
                self.cost.switch_time(None, turn.model),
                switch,
                first_step,
                self.cost.stage_shares(turn.model),
            )
        switch += queued
        self.exposed_switches.append(switch)
        self.switches += self.loaded != turn.model
        self.loaded = turn.model
        self.busy_seconds += switch
        self.loop.at(self.loop.now + switch, self._start_decoding)

    def _kv_in_use(self) -> int:
        """KV bytes of the live requests as of now (a running segment's laid-out tokens do not count yet)."""
        now = self.loop.now
        return sum(
            (s.spec.input_len + bisect_right(s.token_times, now))
            * self.cost.kv_bytes_per_token(s.model)
            for s in self.live_states()
        )

    def _prefetch_landed(self) -> bool:
        return self._prefetch_left() <= 0

    def _prefetch_left(self) -> float:
        """Seconds until the copy in flight has landed (0 when it has)."""
        model, began = self.prefetching
        return max(0.0, began + self.cost.switch_time(None, model) - self.loop.now)

    def _keep_resident(self, model: str) -> None:
        """With residency, switching to `model`: it takes a run of free memory, evicting the models needed
        last (not the one a copy in flight is for, which goes on); when none can be made it takes the weight
        region and no other model stays (as live)."""
        if model not in self.resident:
            kept = {model} | ({self.prefetching[0]} if self.prefetching else set())
            kv = self._kv_in_use()
            if not self.resident.make_room(kv, kept, self.cost.weight_bytes(model)):
                self.resident.last_used.clear()
                self.prefetching = None
        self.resident.touch(model)

    def _fit_kv(self) -> None:
        """KV has priority: evict resident models the KV in use now needs the room of (the bound one stays;
        the model being prefetched goes last, its copy given up)."""
        protected = {self.loaded} | ({self.prefetching[0]} if self.prefetching else set())
        kv = self._kv_in_use()
        if not self.resident.make_room(kv, protected) and self.prefetching is not None:
            if self.prefetching[0] != self.loaded:
                self.resident.drop(self.prefetching[0])
            self.prefetching = None
            self.resident.make_room(kv, {self.loaded})

    def _start_decoding(self) -> None:
        self.decode_start = self.loop.now
        self._prefetch_next()
        self._decode()

    def _prefetch_next(self) -> None:
        """Start copying the policy's next model, as the live decode loop does: one copy at a time (a copy in
        flight is kept; a finished one is replaced)."""
        target = getattr(self.policy, "prefetch_target", lambda live: None)(self.candidates())
        if target is None or target == self.loaded:
            return
        if self.prefetching is not None:
            if self.prefetching[0] == target or not self._prefetch_landed():
                return
        if self.resident is not None:
            self._prefetch_resident(target)
        elif self.two_slots and self.other == target and self._room_to_prefetch(target):
            self.prefetching = (target, float("-inf"))  # resident: nothing to copy
        elif self._room_to_prefetch(target):
            self.prefetching = (target, max(self.loop.now, self.copy_free_at))
            self.other = None  # the other slot is being overwritten

    def _prefetch_resident(self, target: str) -> None:
        """With residency a prefetch copies into a run of free memory, evicting models needed later; a
        resident target copies nothing."""
        self.prefetching = None  # landed: its model is simply resident now
        if target in self.resident:
            self.prefetching = (target, float("-inf"))
            return
        self._fit_kv()
        kv = self._kv_in_use()
        if self.resident.make_room(kv, {self.loaded}, self.cost.weight_bytes(target)):
            self.resident.touch(target)
            self.prefetching = (target, max(self.loop.now, self.copy_free_at))

    def _room_to_prefetch(self, model: str) -> bool:
        """A prefetch needs the next model's weights to fit beside the loaded ones and the KV in use (KV
        has priority: without room, the switch is paid in full)."""
        if self.device_memory_bytes is None:
            return True
        kv = self._kv_in_use()
        weights = self.cost.weight_bytes(self.loaded) + self.cost.weight_bytes(model)
        return kv + weights <= self.device_memory_bytes

    def _decode(self) -> None:
        """Decode the turn's batch, as the policy forms it now, for what is left of its quota."""
        left = self.turn.quota - (self.loop.now - self.decode_start)
        if self.resident is not None:
            self._fit_kv()
        batch = [self.by_id[i] for i in self.policy.turn_batch(self.candidates())]
        if not batch or left <= 0:
            self._next_turn()
            return
        start = self.loop.now
        end = decode_segment(self.cost, self.turn.model, batch, start, left)
        self.segment = _Segment(batch, start)
        epoch = self.epoch
        self.loop.at(end, lambda: self._segment_done(epoch))

    def _segment_done(self, epoch: int) -> None:
        if epoch != self.epoch:
            return  # cut short by a newcomer; a new segment is under way
        segment, self.segment = self.segment, None
        self.busy_seconds += self.loop.now - segment.start
        self._decode()

    def _cut_segment(self) -> None:
        """Take back the running segment's token times past the step in flight; decoding goes on with the
        batch re-formed (the newcomer in it) when that step ends."""
        segment = self.segment
        if segment is None:
            return  # still switching: the batch forms when decoding starts
        now = self.loop.now
        in_flight = [
            s.token_times[i]
            for s in segment.batch
            if (i := bisect_right(s.token_times, now)) < len(s.token_times)
        ]
        if not in_flight:
            return  # the segment ends now; the next one forms its batch afresh
        cut = min(in_flight)
        for member in segment.batch:
            del member.token_times[bisect_right(member.token_times, cut) :]
        self.epoch += 1
        self.segment = None
        self.busy_seconds += cut - segment.start
        self.loop.at(cut, self._decode)
