"""The decode worker: swaps prefilled requests' KV in from the host KV cache and runs its decode policy's
turns (`aegaeon.worker.decode_loop`), sending every token as it is made.

A request's KV comes in when the arena has room for it (otherwise the request waits, its KV still in host
memory); then the policy places it. The policy plans with a `MeasuredCost` fed by this worker's own step
and switch times.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Sequence

from aegaeon.engine.executor import KvImport, SeqUpdate
from aegaeon.engine.runner import SwitchRecord
from aegaeon.errors import OutOfBlocksError
from aegaeon.ipc.events import DecodeEvent, QuantumEvent
from aegaeon.ipc.messages import Cancel, KvRelease, StepDone, Submit, SwapIn, TurnStarted
from aegaeon.sched.cost import MeasuredCost
from aegaeon.sched.policies import policy
from aegaeon.sched.rounds import RoundConfig, Turn
from aegaeon.worker.decode_loop import DecodeLoop
from aegaeon.worker.loop import ParentGone, WorkerLoop
from aegaeon.worker.prefill import sampling_of
from aegaeon.worker.spec import WorkerSpec

log = logging.getLogger(__name__)


@dataclass
class TurnTotals:
    """What a turn's steps did, summed: the `quantum` trace that calibrates cost models against serving."""

    steps: int = 0
    sequences: int = 0  # summed batch sizes
    context: int = 0  # summed context tokens of the batches
    compute: float = 0.0  # seconds in steps
    decode_start: float = 0.0  # perf_counter when decoding began (after the switch)


@dataclass
class RequestTiming:
    """Where a request's time on this worker went (seconds; `admitted` is a wall-clock time)."""

    admitted: float
    compute: float = 0.0
    switch: float = 0.0


class DecodeWorker(WorkerLoop):
    role = "decode"

    def __init__(self, spec: WorkerSpec):
        super().__init__(spec)
        self.cost = MeasuredCost(self.executor.model_sizes())
        rounds = RoundConfig(
            spec.tpot_slo,
            spec.max_quota,
            spec.max_batch,
            spec.engine.prefetch,
            slo_aware=spec.slo_aware_rounds,
        )
        decode_policy = policy(spec.policy).decode_policy(
            self.cost, rounds, self.executor.kv_capacity_bytes()
        )
        self.loop = DecodeLoop(self.executor, decode_policy, self.cost, time.perf_counter, self)
        self.submitted: dict[int, Submit] = {}
        self.waiting: deque[SwapIn] = deque()
        self.timings: dict[int, RequestTiming] = {}
        self.seconds_stepping = 0.0
        self.quantum = TurnTotals()
        self.turn: Turn | None = None  # the turn under way
        self.started = time.perf_counter()
        self.received: dict[int, float] = {}  # request id -> when its SwapIn came (perf clock)
        self.handlers.update({Submit: self.on_submit, SwapIn: self.on_swap_in})

    def on_swap_in(self, message: SwapIn) -> None:
        self.received[message.request_id] = time.perf_counter()
        self.waiting.append(message)

    def on_submit(self, message: Submit) -> None:
        self.submitted[message.request_id] = message

    def on_cancel(self, message: Cancel) -> None:
        self.submitted.pop(message.request_id, None)
        for swap in [s for s in self.waiting if s.request_id == message.request_id]:
            self.waiting.remove(swap)  # its KV is still in the host cache: give it back
            self.received.pop(swap.request_id, None)
            self.send(KvRelease(swap.request_id, swap.host_handles))
        self.timings.pop(message.request_id, None)
        self.loop.remove(message.request_id)
        super().on_cancel(message)

    def models_changed(self) -> None:
        self.cost.sizes = dict(self.executor.model_sizes())
        if hasattr(self.loop.policy, "kv_capacity_bytes"):  # a larger model leaves less room for KV
            self.loop.policy.kv_capacity_bytes = self.executor.kv_capacity_bytes()

    def forget_model(self, model: str) -> None:
        for request_id, request_model in list(self.loop.live.items()):
            if request_model == model:
                self.loop.remove(request_id)
                self.timings.pop(request_id, None)

    def tick(self) -> None:
        self.drain(0 if self.loop.live or self.waiting else 0.05)
        self.admit()
        try:
            self.loop.run_next_turn()
        except ParentGone:
            raise
        except (
            Exception
        ) as err:  # a turn that breaks fails its model's requests here, never the worker
            self.turn_broke(err)
        self.report_measurements()

    def turn_broke(self, err: Exception) -> None:
        turn, self.turn = self.turn, None
        model = turn.model if turn is not None else None
        log.exception(
            "decode worker %d: the turn of %s failed", self.spec.worker_id, model or "no model"
        )
        for request_id, request_model in list(self.loop.live.items()):
            if model is None or request_model == model:
                self.loop.remove(request_id)
                self.timings.pop(request_id, None)
                self.fail(
                    request_id,
                    f"worker {self.spec.worker_id}: decoding {request_model} failed: {err}",
                )
        if turn is not None:
            self.send(StepDone(turn.model, 0, 0.0))

    # ---- DecodeHooks ----------------------------------------------------------------------------------------

    def poll(self) -> None:
        self.drain(0)
        self.admit()

    def turn_started(self, turn: Turn) -> None:
        self.turn = turn
        self.send(TurnStarted(turn.model))

    def switched(self, turn: Turn, record: SwitchRecord | None) -> None:
        self.quantum = TurnTotals(decode_start=time.perf_counter())

    def switch_landed(self, turn: Turn, record: SwitchRecord) -> None:
        # the first step's wait for layers still copying was switch, not serving: the quantum's wall omits it
        self.quantum.decode_start += record.stages.get("wait_layers", 0.0)
        self.trace_switch(turn.model, record)
        for request_id in turn.request_ids:
            if request_id in self.timings:
                self.timings[request_id].switch += record.seconds

    def stepped(
        self,
        model: str,
        batch: Sequence[int],
        context_tokens: int,
        seconds: float,
        updates: list[SeqUpdate],
    ) -> None:
        self.seconds_stepping += seconds
        if batch:
            q = self.quantum
            q.steps, q.sequences, q.context, q.compute = (
                q.steps + 1,
                q.sequences + len(batch),
                q.context + context_tokens,
                q.compute + seconds,
            )
        for request_id in batch:
            if request_id in self.timings:
                self.timings[request_id].compute += seconds
        self.sample_memory()  # while the batch's KV is resident
        for update in updates:
            if update.done:
                self._report_left(update.request_id, model)
            self.report(
                update.request_id,
                update.new_tokens,
                update.finish_reason,
                update.error,
                update.logprobs,
            )

    def turn_done(self, turn: Turn, steps: int, seconds: float, switch_seconds: float) -> None:
        q = self.quantum
        if q.steps:  # `wall` adds what serving does around each step (token reports, bookkeeping) to the compute
            self.emit(
                QuantumEvent,
                model=turn.model,
                compute=q.compute,
                steps=q.steps,
                batch=q.sequences / q.steps,
                context=q.context / q.steps,
                wall=time.perf_counter() - q.decode_start,
            )
        self.turn = None
        self.send(StepDone(turn.model, steps, seconds, switch_seconds))

    # ---- admission --------------------------------------------------------------------------------------

    def admit(self) -> None:
        """Swap waiting requests' KV in from the host cache while the arena has room; the policy places each."""
        while self.waiting:
            swap = self.waiting[0]
            submit = self.submitted.get(swap.request_id)
            if submit is None:  # its Submit was lost with a cancel: nothing to continue
                self.waiting.popleft()
                self.received.pop(swap.request_id, None)
                self.send(KvRelease(swap.request_id, swap.host_handles))
                continue
            request = KvImport(
                swap.request_id,
                swap.model,
                submit.prompt_ids,
                sampling_of(submit),
                swap.generated,
                swap.num_tokens,
                swap.sampler_state,
            )
            try:
                self.executor.import_kv(request, self.host_kv, list(swap.host_handles))
            except OutOfBlocksError:
                return  # wait for requests to finish
            except Exception as err:  # a bad handoff fails its request only
                self.waiting.popleft()
                self.submitted.pop(swap.request_id, None)
                self.received.pop(swap.request_id, None)
                self.send(KvRelease(swap.request_id, swap.host_handles))
                self.fail(
                    swap.request_id,
                    f"request {swap.request_id}: its KV could not be taken in: {err}",
                )
                continue
            self.waiting.popleft()
            self.submitted.pop(swap.request_id, None)
            self.timings[swap.request_id] = RequestTiming(time.time())
            self.report_measurements()
            self.send(KvRelease(swap.request_id, swap.host_handles))
            received = self.received.pop(swap.request_id, time.perf_counter())
            due = None if swap.first_decode_slack is None else received + swap.first_decode_slack
            self.loop.arrive(swap.request_id, swap.model, due)

    def _report_left(self, request_id: int, model: str) -> None:
        timing = self.timings.pop(request_id, None)
        if timing is not None:
            self.emit(
                DecodeEvent,
                model=model,
                request_id=request_id,
                admitted=timing.admitted,
                compute=timing.compute,
                switch=timing.switch,
            )

    def fail(self, request_id: int, reason: str) -> None:
        self.loop.remove(request_id)
        self.timings.pop(request_id, None)
        super().fail(request_id, reason)

    def close(self) -> None:
        alive = time.perf_counter() - self.started
        log.info(
            "decode worker %d: %.1f s alive, %.1f s in decode steps",
            self.spec.worker_id,
            alive,
            self.seconds_stepping,
        )
        super().close()
