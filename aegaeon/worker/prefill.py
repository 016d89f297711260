"""The prefill worker: runs the groups the proxy's grouped-FCFS dispatcher schedules, and hands each
prefilled request's KV to the node's host KV cache for a decode worker.

A group switches to its model once, then prefills its prompts one after another, so each first token is
sent as early as possible (the simulator runs groups the same way). Between two prompts the worker reads its
inbox, so that a `Prefetch` (the model of its next group, with the engine's prefetch on) starts copying while
the rest of the group computes. A request's KV goes into this worker's
partition of the host KV cache; when the partition is full the worker waits for decode workers to release
blocks (back-pressure, never a crash).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from aegaeon.errors import AegaeonError, OutOfBlocksError
from aegaeon.ipc.events import PrefillEvent
from aegaeon.ipc.messages import Cancel, KvRelease, Prefetch, Schedule, StepDone, Submit, SwapOut
from aegaeon.kv.host_partition import HostKvPartition
from aegaeon.models.sampler import SamplingParams
from aegaeon.worker.loop import ParentGone, WorkerLoop
from aegaeon.worker.spec import WorkerSpec

if TYPE_CHECKING:
    from aegaeon.engine.runner import SwitchRecord

log = logging.getLogger(__name__)


def sampling_of(submit: Submit) -> SamplingParams:
    return SamplingParams(
        submit.max_tokens,
        submit.temperature,
        submit.top_p,
        submit.seed,
        submit.ignore_eos,
        submit.top_k,
        submit.min_p,
        submit.presence_penalty,
        submit.frequency_penalty,
        submit.repetition_penalty,
        submit.min_tokens,
        tuple(submit.stop_token_ids),
        submit.output_before,
        submit.logprobs,
        submit.prompt_logprobs,
    )


class PrefillWorker(WorkerLoop):
    role = "prefill"

    def __init__(self, spec: WorkerSpec):
        super().__init__(spec)
        self.partition = HostKvPartition(
            self.kv_segment.as_numpy("uint8", (self.kv_segment.size,)),
            spec.kv_partition,
            spec.kv_slab_bytes,
        )
        self.submitted: dict[int, Submit] = {}
        self.groups: deque[Schedule] = deque()
        self.prefetch_wanted: str | None = (
            None  # the next group's model, to copy once this one's is bound
        )
        self.handlers.update(
            {
                Submit: self.on_submit,
                Schedule: self.groups.append,
                KvRelease: self.on_release,
                Prefetch: self.on_prefetch,
            }
        )

    def on_submit(self, message: Submit) -> None:
        self.submitted[message.request_id] = message

    def on_prefetch(self, message: Prefetch) -> None:
        self.prefetch_wanted = message.model

    def start_prefetch(self) -> None:
        """Start the wanted copy if the engine can now (one at a time, never over the bound model)."""
        wanted = self.prefetch_wanted
        if wanted is None or wanted == self.executor.bound_model:
            return
        if wanted not in self.executor.models or wanted in self.executor.unavailable:
            self.prefetch_wanted = None  # removed meanwhile, or never servable here
            return
        try:
            if self.executor.prefetch(wanted):
                self.prefetch_wanted = None
        except Exception:  # a copy that cannot start only leaves the next switch unhidden
            log.exception("prefill worker %d: prefetch of %s failed", self.spec.worker_id, wanted)
            self.prefetch_wanted = None

    def on_release(self, message: KvRelease) -> None:
        self.partition.free(message.host_handles)

    def on_cancel(self, message: Cancel) -> None:
        self.submitted.pop(message.request_id, None)  # not started: it never will be
        super().on_cancel(message)

    def tick(self) -> None:
        if (
            not self.groups
        ):  # with a group queued, the wanted model is the one after it: switch first
            self.start_prefetch()
        if self.groups:
            self.run_group(self.groups.popleft())
            self.drain(0)
        else:
            self.drain(0.05)

    def run_group(self, group: Schedule) -> None:
        started, started_wall = time.perf_counter(), time.time()
        pending = [self._admit(i) for i in group.request_ids]
        pending = [i for i in pending if i is not None]
        record: SwitchRecord | None = None
        if pending:
            try:
                record = self.executor.switch_to(group.model)
            except AegaeonError as err:
                for request_id in pending:
                    self.fail(request_id, f"model {group.model} cannot be loaded here: {err}")
                pending = []
            else:
                if record is not None and not record.landing:
                    self.trace_switch(group.model, record)
        if self.prefetch_wanted == group.model:
            self.prefetch_wanted = None  # it is bound now
        for request_id in pending:
            self.drain(0)  # a Prefetch (or a cancel) that came meanwhile
            if not self.running:  # the node is stopping: what is left of the group will not run
                self.fail(request_id, f"worker {self.spec.worker_id} is shutting down")
                self.executor.remove(request_id)
                continue
            self.start_prefetch()
            if not self.executor.has(request_id):  # cancelled meanwhile
                continue
            try:
                self._prefill(group.model, request_id, started_wall, record)
            except ParentGone:
                raise
            except Exception as err:  # one request's prefill that breaks fails it, never the worker
                log.exception(
                    "prefill worker %d: request %d failed", self.spec.worker_id, request_id
                )
                self.fail(
                    request_id,
                    f"worker {self.spec.worker_id}: the prefill of model {group.model} failed: {err}",
                )
        if record is not None and record.landing:  # no prefill let its copy land: wait for it
            self.executor.wait_landed()
            self.trace_switch(group.model, record)
        switch_seconds = record.seconds if record else 0.0
        self.send(
            StepDone(group.model, int(bool(pending)), time.perf_counter() - started, switch_seconds)
        )

    def _admit(self, request_id: int) -> int | None:
        submit = self.submitted.pop(request_id, None)
        if submit is None:  # cancelled before its group ran
            return None
        try:
            self.executor.add(request_id, submit.model, submit.prompt_ids, sampling_of(submit))
        except AegaeonError as err:
            self.fail(request_id, str(err))
            return None
        return request_id

    def _prefill(
        self, model: str, request_id: int, group_start: float, record: SwitchRecord | None
    ) -> None:
        landing = record is not None and record.landing
        began = time.perf_counter()
        try:
            updates = self.executor.step(model, [request_id])
        finally:
            # a prefill that waited for weights still copying (layer-wise readiness) ran part of the
            # switch (taken even when the step raised, so the next prefill is not charged it)
            waited = self.executor.take_weight_wait()
        compute = time.perf_counter() - began - waited
        if (
            landing and not record.landing
        ):  # its copy landed under this prefill: the record is final
            self.trace_switch(model, record)
        switch_seconds = record.seconds if record else 0.0
        if not updates:  # its prompt does not fit the arena even alone
            self.fail(request_id, f"model {model}: the prompt does not fit this worker's KV memory")
            return
        update = updates[0]
        # the trace goes first: the proxy has it before the request can finish
        self.emit(
            PrefillEvent,
            model=model,
            request_id=request_id,
            compute=compute,
            group_start=group_start,
            switch=switch_seconds,
        )
        self.report(
            request_id,
            update.new_tokens,
            update.finish_reason,
            update.error,
            update.logprobs,
            update.prompt_logprobs,
        )
        if not update.done:
            self.hand_off(request_id, model)
        self.report_measurements()

    def hand_off(self, request_id: int, model: str) -> None:
        """Copy the prompt's KV to this worker's host KV partition (waiting for room) and tell the proxy."""
        count, block_bytes = self.executor.kv_blocks(request_id)
        handles = self._allocate(count, block_bytes)
        if handles is None or not self.executor.has(
            request_id
        ):  # stopping, or cancelled while waiting
            if handles:
                self.partition.free(handles)
            self.executor.remove(request_id)
            return
        self.executor.export_kv(request_id, self.host_kv, list(handles))
        num_cached, generated, sampler_state = self.executor.handoff_state(request_id)
        self.executor.remove(request_id)
        self.send(
            SwapOut(request_id, model, handles, num_cached, generated, sampler_state, block_bytes)
        )

    def _allocate(self, count: int, block_bytes: int) -> tuple[int, ...] | None:
        waited = False
        while self.running:
            try:
                return self.partition.allocate(count, block_bytes)
            except OutOfBlocksError:
                if not waited:
                    log.info("host KV partition full: waiting for decode workers to release blocks")
                    waited = True
                self.drain(0.05)  # back-pressure: handles KvRelease (and queues new groups)
        return None
