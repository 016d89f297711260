"""The message loop every worker runs: two rings to the proxy, a handler table, and fault isolation.

A worker reads `w<id>.in` and writes `w<id>.out` (aegaeon.ipc.ring). Each message type has one handler;
an exception in a handler fails the request the message concerns (the proxy hears why) and the worker
carries on: no request can take a worker down. Every wait is bounded, so a worker whose node process
died notices within `PARENT_CHECK_SECONDS` even while its outbox is full, and exits.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import torch

from aegaeon.engine.executor import StepExecutor
from aegaeon.engine.runner import SwitchRecord
from aegaeon.ipc.events import MemoryEvent, SwapEvent, SwitchEvent
from aegaeon.ipc.messages import (
    AddModel,
    Cancel,
    ModelChanged,
    RemoveModel,
    Shutdown,
    Tokens,
    WorkerReady,
    decode,
    encode,
)
from aegaeon.ipc.ring import Ring, RingEmptyError, RingFullError
from aegaeon.ipc.shm import ShmNamespace
from aegaeon.parallel.instance import LeaderExecutor
from aegaeon.parallel.launch import start_group
from aegaeon.worker.spec import KV_SEGMENT, WorkerSpec, inbox_name, outbox_name

log = logging.getLogger(__name__)

MEMORY_SAMPLE_PERIOD = 0.25  # seconds between the arena usage samples a worker reports
PARENT_CHECK_SECONDS = 0.5


def build_executor(spec: WorkerSpec, host_kv: torch.Tensor) -> StepExecutor | LeaderExecutor:
    """This worker's instance: its one executor, or rank 0 of a tensor-parallel group whose other ranks
    this worker starts as its children (they follow its calls; losing one loses the worker)."""
    if spec.engine.tp_size == 1:
        return StepExecutor(
            spec.models,
            spec.engine,
            host_cache_of=spec.cluster_id,
            weight_segments=spec.weight_segments or None,
        )
    return start_group(
        spec.models,
        spec.engine,
        spec.cluster_id,
        spec.weight_segments,
        {KV_SEGMENT: KV_SEGMENT},
        {KV_SEGMENT: host_kv},
        spec.threads,
    )


class ParentGone(Exception):
    """The node process that spawned this worker is gone: the worker must exit."""


class WorkerLoop:
    role = ""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.parent_pid = os.getppid()
        self.inbox = Ring.attach(
            spec.cluster_id, inbox_name(spec.worker_id, spec.generation), reader=True
        )
        self.outbox = Ring.attach(spec.cluster_id, outbox_name(spec.worker_id, spec.generation))
        self.kv_segment = ShmNamespace(spec.cluster_id).attach_segment(KV_SEGMENT)
        self.host_kv = self.kv_segment.as_tensor(torch.uint8, (self.kv_segment.size,))
        self.executor = build_executor(spec, self.host_kv)
        self.running = True
        self.last_memory_sample = 0.0
        self.handlers: dict[type, Callable[[object], None]] = {
            Shutdown: self.on_shutdown,
            Cancel: self.on_cancel,
            AddModel: self.on_add_model,
            RemoveModel: self.on_remove_model,
        }

    def announce(self) -> None:
        self.send(WorkerReady(self.spec.worker_id, self.spec.role, dict(self.executor.unavailable)))

    # ---- the rings -------------------------------------------------------------------------------------------

    def parent_alive(self) -> bool:
        return os.getppid() == self.parent_pid

    def send(self, message: object) -> None:
        """Write to the outbox; while it is full, wait in bounded steps so a dead node is noticed."""
        frame = encode(message)
        while True:
            try:
                self.outbox.put(frame, timeout=PARENT_CHECK_SECONDS)
                return
            except RingFullError:
                if not self.parent_alive():
                    raise ParentGone from None

    def receive(self, timeout: float) -> object | None:
        try:
            return decode(self.inbox.get(timeout))
        except RingEmptyError:
            return None

    def drain(self, timeout: float = 0.0) -> None:
        """Handle every waiting message, waiting up to `timeout` for the first."""
        if not self.parent_alive():
            raise ParentGone
        message = self.receive(min(timeout, PARENT_CHECK_SECONDS))
        while message is not None:
            self.handle(message)
            message = self.receive(0)

    def handle(self, message: object) -> None:
        handler = self.handlers.get(type(message))
        if handler is None:
            log.warning(
                "worker %d (%s) got an unexpected %s; ignored",
                self.spec.worker_id,
                self.role,
                type(message).__name__,
            )
            return
        try:
            handler(message)
        except ParentGone:
            raise
        except Exception as err:  # one bad message fails its request, never the worker
            log.exception(
                "worker %d: handling %s failed", self.spec.worker_id, type(message).__name__
            )
            request_id = getattr(message, "request_id", None)
            if request_id is not None:
                self.fail(
                    request_id, f"worker {self.spec.worker_id} could not handle the request: {err}"
                )

    def serve(self) -> None:
        self.announce()
        try:
            while self.running:
                self.tick()
        except ParentGone:
            log.error("the node process is gone; worker %d exits", self.spec.worker_id)

    def tick(self) -> None:
        raise NotImplementedError

    # ---- common handlers and reports ---------------------------------------------------------------------

    def on_shutdown(self, message: Shutdown) -> None:
        self.running = False

    def on_cancel(self, message: Cancel) -> None:
        self.executor.remove(message.request_id)

    def on_add_model(self, message: AddModel) -> None:
        worker = self.spec.worker_id
        if message.name not in self.executor.models:  # else: a replacement spawned with it already
            try:
                self.executor.add_model(message.name, message.path, message.segment)
            except Exception as err:  # a model that cannot be added is refused, the worker goes on
                log.error("worker %d: model %s not added: %s", worker, message.name, err)
                self.send(ModelChanged(worker, message.name, True, f"worker {worker}: {err}"))
                return
            self.models_changed()
            log.info("worker %d serves model %s", worker, message.name)
        self.send(ModelChanged(worker, message.name, True))

    def on_remove_model(self, message: RemoveModel) -> None:
        if message.name in self.executor.models or message.name in self.executor.unavailable:
            for update in self.executor.remove_model(message.name):
                self.send(Tokens(update.request_id, (), (), None, update.error))
            self.forget_model(message.name)
            self.models_changed()
            log.info("worker %d no longer serves model %s", self.spec.worker_id, message.name)
        self.send(ModelChanged(self.spec.worker_id, message.name, False))

    def models_changed(self) -> None:
        """The executor's set of models changed: a role that plans with model sizes updates its plan."""

    def forget_model(self, model: str) -> None:
        """Drop a removed model's requests from the role's own tables (a drained model has none)."""

    def fail(self, request_id: int, reason: str) -> None:
        """End a request with an error the client sees; frees what it held here."""
        self.executor.remove(request_id)
        self.send(Tokens(request_id, (), (), None, reason))

    def report(
        self,
        request_id: int,
        tokens: tuple[int, ...],
        finish_reason: str | None = None,
        error: str | None = None,
        logprobs: tuple = (),
        prompt_logprobs: tuple = (),
    ) -> None:
        if prompt_logprobs:
            self._send_prompt_logprobs(request_id, prompt_logprobs)
        if tokens or finish_reason is not None or error is not None:
            now = time.time()
            self.send(
                Tokens(
                    request_id,
                    tokens,
                    tuple(now for _ in tokens),
                    finish_reason,
                    error,
                    logprobs=logprobs,
                )
            )

    def _send_prompt_logprobs(self, request_id: int, entries: tuple) -> None:
        """A prompt's logprobs outgrow a ring slot soon (200 tokens with 5 alternatives: 16 KiB): they go
        ahead of the first token in as many token-less messages as they need."""
        limit, start, size = self.outbox.max_message_bytes, 0, len(entries)
        while start < len(entries):
            message = Tokens(request_id, (), (), prompt_logprobs=entries[start : start + size])
            if size > 1 and len(encode(message)) > limit:
                size //= 2
                continue
            self.send(message)
            start += size

    def emit(self, make_event, **fields) -> None:
        """Send a telemetry event (aegaeon.ipc.events) stamped with this worker and the time now."""
        self.send(make_event(worker_id=self.spec.worker_id, time=time.time(), **fields))

    def trace_switch(self, model: str, record: SwitchRecord | None) -> None:
        if record is not None:
            self.emit(
                SwitchEvent,
                model=model,
                seconds=record.seconds,
                bytes_copied=record.bytes_copied,
                stages=dict(record.stages),
            )

    def report_measurements(self) -> None:
        """Send the KV swaps finished since the last call, and an arena usage sample now and then."""
        for swap in self.executor.finished_swaps():
            self.emit(
                SwapEvent,
                model=swap.model,
                seconds=swap.seconds,
                nbytes=swap.nbytes,
                request_id=swap.seq_id,
                direction=swap.kind,
            )
        self.sample_memory()

    def sample_memory(self) -> None:
        """Report the arena's usage, at most once per MEMORY_SAMPLE_PERIOD."""
        now = time.monotonic()
        if now - self.last_memory_sample < MEMORY_SAMPLE_PERIOD:
            return
        self.last_memory_sample = now
        usage = self.executor.usage()
        self.emit(
            MemoryEvent,
            model=self.executor.bound_model or "",
            total=usage.total_bytes,
            weight_region=usage.weight_region_bytes,
            weights=usage.weight_bytes,
            kv_used=usage.kv_used_bytes,
            kv_free=usage.kv_free_bytes,
            internal_fragmentation=usage.internal_fragmentation_bytes,
            external_fragmentation=usage.external_fragmentation_bytes,
        )

    def close(self) -> None:
        self.executor.close()
        self.inbox.close()
        self.outbox.close()
