"""Routing on the proxy: which prefill worker runs which group, which decode worker takes a request.

Both decisions are `aegaeon.sched`'s: grouped FCFS (`PrefillDispatcher`, the simulator's too) with a cost
model learnt from the prefill workers' reports, and `choose_decode_instance`. The router only turns its
decisions into messages. Time comes from `clock`, so a test can drive it on recorded times.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from aegaeon.ipc.messages import Prefetch, Schedule, StepDone
from aegaeon.sched.cost import MeasuredCost
from aegaeon.sched.decode import choose_decode_instance
from aegaeon.sched.prefill import DEFAULT_MAX_GROUP_SIZE, GroupStart, PrefillDispatcher
from aegaeon.sched.request import RequestSpec
from aegaeon.serve.links import WorkerLink
from aegaeon.serve.requests import LiveRequest


class Router:
    def __init__(
        self,
        prefill: list[WorkerLink],
        decode: list[WorkerLink],
        requests: Callable[[int], LiveRequest | None],
        clock: Callable[[], float],
        max_group_size: int = DEFAULT_MAX_GROUP_SIZE,
        max_batch: int = 64,
        cost: MeasuredCost | None = None,
        prefetch: bool = False,
    ):
        self.prefill = list(prefill)  # index = the dispatcher's instance
        self.decode = list(decode)
        self.requests, self.clock, self.max_batch = requests, clock, max_batch
        self.cost = cost or MeasuredCost()  # learnt from the prefill workers' StepDone reports
        self.dispatcher = PrefillDispatcher(len(self.prefill), self.cost, max_group_size)
        self.running: dict[int, GroupStart] = {}  # prefill instance -> its group under way
        # prefill workers copy their next group's model during the running one (engine prefetch on)
        self.prefetch = prefetch
        self.prefetch_sent: dict[
            int, str
        ] = {}  # prefill instance -> the model it was last told to copy
        self.group_log: list[tuple[float, GroupStart]] | None = (
            None  # set to a list to record (tests)
        )

    # ---- prefill ------------------------------------------------------------------------------------------

    @property
    def prefill_alive(self) -> int:
        return self.dispatcher.alive

    def dispatch(self, request: LiveRequest) -> None:
        """Queue a request (or a re-run of one) for prefill."""
        request.run = request.next_run()
        spec = RequestSpec(
            request.request_id,
            request.model,
            request.arrival,
            len(request.run.prompt_ids),
            request.run.max_tokens,
        )
        self._execute(self.dispatcher.submit(spec, self.clock()))
        self._send_prefetches()

    def _send_prefetches(self) -> None:
        """Tell each prefill worker whose next group's model changed to copy it (the policy's choice)."""
        if not self.prefetch:
            return
        for instance, link in enumerate(self.prefill):
            target = self.dispatcher.prefetch_target(instance)
            if target is not None and self.prefetch_sent.get(instance) != target:
                self.prefetch_sent[instance] = target
                link.send(Prefetch(target))

    def group_done(self, link: WorkerLink, message: StepDone) -> None:
        instance = self.prefill.index(link)
        group = self.running.pop(instance, None)
        if group is not None and message.steps:
            tokens = sum(r.input_len for r in group.requests)
            self.cost.observe_prefill(group.model, tokens, message.seconds - message.switch_seconds)
        if message.switch_seconds > 0:
            self.cost.observe_switch(message.model, message.switch_seconds)
        self._execute(self.dispatcher.group_done(instance, self.clock()))

    def _execute(self, start: GroupStart | None) -> None:
        if start is None:
            return
        if self.group_log is not None:
            self.group_log.append((self.clock(), start))
        self.running[start.instance] = start
        self.prefetch_sent.pop(start.instance, None)
        link = self.prefill[start.instance]
        for spec in start.requests:
            request = self.requests(spec.request_id)
            if request is not None:
                request.prefill_worker = link.worker_id
                link.send(request.run)
        link.send(Schedule(start.model, start.request_ids, 0.0))
        self._send_prefetches()

    def add_prefill(self, link: WorkerLink) -> None:
        self.prefill.append(link)
        self.dispatcher.add_instance()
        self._execute(self.dispatcher.group_done(len(self.prefill) - 1, self.clock()))

    def prefill_lost(self, link: WorkerLink) -> list[int]:
        """A prefill worker is gone: it gets no more groups; returns the ids of the requests queued on it."""
        instance = self.prefill.index(link)
        self.running.pop(instance, None)
        self.prefetch_sent.pop(instance, None)
        return [r.request_id for r in self.dispatcher.instance_lost(instance)]

    def prefill_back(self, old: WorkerLink, new: WorkerLink) -> None:
        """`new` replaces the lost `old` (a respawn): it takes groups again."""
        instance = self.prefill.index(old)
        self.prefill[instance] = new
        self.dispatcher.instance_back(instance, self.clock())

    # ---- decode -----------------------------------------------------------------------------------------

    def pick_decode(self, model: str) -> WorkerLink | None:
        alive = [w for w in self.decode if not w.dead]
        if not alive:
            return None
        return alive[
            choose_decode_instance(model, [Counter(w.live.values()) for w in alive], self.max_batch)
        ]

    def add_decode(self, link: WorkerLink) -> None:
        self.decode.append(link)

    def decode_back(self, old: WorkerLink, new: WorkerLink) -> None:
        self.decode[self.decode.index(old)] = new
