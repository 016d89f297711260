"""A worker process: one device (or a virtual CPU instance), one engine, one role.

The proxy talks to it over two shm rings (`w<id>.in`, `w<id>.out`) with the
messages of `aegaeon.ipc.messages`. A prefill worker runs the groups the proxy
schedules (grouped FCFS lives in the proxy), sends each request's first token
and moves its KV to the node's host KV cache, in a partition of the segment it
alone allocates from. A decode worker swaps requests' KV in from there and
runs weighted round-robin over per-model batches (`aegaeon.sched.decode`, the
same code the simulator runs) with quotas from its own measured step and
switch times, sending every token as it is made.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from aegaeon.engine.engine import Engine, EngineConfig
from aegaeon.engine.sequence import Sequence, SeqStatus
from aegaeon.errors import AegaeonError, OutOfBlocksError
from aegaeon.engine.runner import SwitchRecord
from aegaeon.ipc.messages import (Cancel, KvRelease, Schedule, Shutdown, StepDone, Submit, SwapIn, SwapOut, Tokens,
                                  Trace, WorkerReady, decode, encode)
from aegaeon.ipc.ring import Ring, RingEmptyError
from aegaeon.ipc.shm import ShmNamespace
from aegaeon.models.sampler import SamplingParams, new_generator
from aegaeon.sched.decode import (REQUEST_LEVEL_SLICE, DecodeCandidate, form_batches, plan_round,
                                  rotate_to_loaded)

log = logging.getLogger(__name__)

KV_SEGMENT = "kvcache"
MEMORY_SAMPLE_PERIOD = 0.25  # seconds between the arena usage samples a worker reports


@dataclass(frozen=True)
class WorkerSpec:
    cluster_id: str
    worker_id: int
    role: str  # "prefill" or "decode"
    models: dict[str, str]
    engine: EngineConfig
    kv_partition: tuple[int, int] = (0, 0)  # prefill: [start, end) of its share of the host KV segment
    kv_slab_bytes: int = 2 * 1024 * 1024
    tpot_slo: float = 0.1
    threads: int = 1
    policy: str = "aegaeon"  # decode: "aegaeon" (token-level WRR) or "sllm" (a model's batch runs until it empties)


def inbox_name(worker_id: int) -> str:
    return f"w{worker_id}.in"


def outbox_name(worker_id: int) -> str:
    return f"w{worker_id}.out"


def worker_main(spec: WorkerSpec) -> None:
    """Process entry point: serve until a Shutdown message arrives."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s w{spec.worker_id} %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(spec.threads)
    worker = (PrefillWorker if spec.role == "prefill" else DecodeWorker)(spec)
    try:
        worker.serve()
    finally:
        worker.close()


class _Worker:
    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.inbox = Ring.attach(spec.cluster_id, inbox_name(spec.worker_id), reader=True)
        self.outbox = Ring.attach(spec.cluster_id, outbox_name(spec.worker_id))
        self.kv_segment = ShmNamespace(spec.cluster_id).attach_segment(KV_SEGMENT)
        self.host_kv = self.kv_segment.as_tensor(torch.uint8, (self.kv_segment.size,))
        self.engine = Engine(spec.models, spec.engine, host_cache_of=spec.cluster_id)
        self.submitted: dict[int, Submit] = {}
        self.running = True
        self.parent_pid = os.getppid()
        self.last_memory_sample = 0.0
        self.send(WorkerReady(spec.worker_id, spec.role, dict(self.engine.unavailable)))

    def send(self, message: object) -> None:
        self.outbox.put(encode(message))

    def trace(self, kind: str, model: str, seconds: float = 0.0, nbytes: int = 0, request_id: int = -1,
              label: str = "", **detail: float) -> None:
        self.send(Trace(kind, self.spec.worker_id, model, time.time(), seconds, nbytes, request_id, label, detail))

    def switch(self, model: str) -> SwitchRecord | None:
        """Bind `model`, reporting the switch and its stages."""
        record = self.engine.runner.switch_to(model)
        if record is not None:
            self.trace("switch", model, record.seconds, record.bytes_copied, **record.stages)
        return record

    def report_measurements(self) -> None:
        """Send the KV swaps finished since the last call, and an arena usage sample now and then."""
        for swap in self.engine.kv.finished_swaps():
            self.trace("swap", swap.model, swap.seconds, swap.nbytes, swap.seq_id, swap.kind)
        self.sample_memory()

    def sample_memory(self) -> None:
        """Report the arena's usage, at most once per MEMORY_SAMPLE_PERIOD."""
        now = time.monotonic()
        if now - self.last_memory_sample >= MEMORY_SAMPLE_PERIOD:
            self.last_memory_sample = now
            usage = self.engine.arena.usage()
            self.trace("memory", self.engine.runner.active or "", total=usage.total_bytes,
                       weight_region=usage.weight_region_bytes, weights=usage.weight_bytes,
                       kv_used=usage.kv_used_bytes, kv_free=usage.kv_free_bytes,
                       internal_fragmentation=usage.internal_fragmentation_bytes,
                       external_fragmentation=usage.external_fragmentation_bytes)

    def receive(self, timeout: float | None) -> object | None:
        try:
            return decode(self.inbox.get(timeout))
        except RingEmptyError:
            return None

    def drain(self, timeout: float | None = 0) -> None:
        """Handle every waiting message (waiting up to `timeout` for the first)."""
        if os.getppid() != self.parent_pid:  # the node process died (kill -9): do not linger as an orphan
            log.error("the node process is gone; worker %d exits", self.spec.worker_id)
            self.running = False
            return
        message = self.receive(timeout)
        while message is not None:
            self.handle(message)
            message = self.receive(0)

    def handle(self, message: object) -> None:
        if isinstance(message, Submit):
            self.submitted[message.request_id] = message
        elif isinstance(message, Shutdown):
            self.running = False
        elif isinstance(message, Cancel):
            self.submitted.pop(message.request_id, None)  # not started here: never will be
            self.cancel(message.request_id)
        else:
            self.handle_role(message)

    def handle_role(self, message: object) -> None:
        raise NotImplementedError

    def cancel(self, request_id: int) -> None:
        """Drop a live request of this worker and free its KV blocks."""
        for seq in self.engine.sequences:
            if seq.seq_id == request_id and not seq.done:
                self.engine.kv.release(seq)
                seq.status, seq.finish_reason = SeqStatus.FINISHED, "cancelled"

    def new_sequence(self, submit: Submit) -> Sequence:
        sampling = SamplingParams(submit.max_tokens, submit.temperature, submit.top_p, submit.seed, submit.ignore_eos)
        return Sequence(submit.request_id, submit.model, "", list(submit.prompt_ids), sampling, new_generator(sampling))

    def report_tokens(self, seq: Sequence, start: int) -> None:
        now = time.time()
        new = tuple(seq.output_ids[start:])
        if new or seq.done:
            self.send(Tokens(seq.seq_id, new, tuple(now for _ in new), seq.finish_reason, seq.error))

    def close(self) -> None:
        self.engine.close()
        self.inbox.close()
        self.outbox.close()


class PrefillWorker(_Worker):
    def __init__(self, spec: WorkerSpec):
        from aegaeon.native import _C

        start, end = spec.kv_partition
        self.kv_base = start
        self.kv_allocator = _C.SlabAllocator((end - start) // spec.kv_slab_bytes, spec.kv_slab_bytes)
        self.groups: deque[Schedule] = deque()
        super().__init__(spec)

    def serve(self) -> None:
        while self.running:
            if self.groups:
                self.prefill(self.groups.popleft())
                self.drain(0)
            else:
                self.drain(0.05)

    def handle_role(self, message: object) -> None:
        if isinstance(message, Schedule):
            self.groups.append(message)
        elif isinstance(message, KvRelease):
            for handle in message.host_handles:
                self.kv_allocator.free(handle - self.kv_base)

    def prefill(self, group: Schedule) -> None:
        engine = self.engine
        started, started_wall = time.perf_counter(), time.time()
        pending = []
        for request_id in group.request_ids:
            submit = self.submitted.pop(request_id, None)
            if submit is None:  # cancelled before its group ran
                continue
            seq = self.new_sequence(submit)
            try:
                engine.check_request(seq.model, seq.prompt_ids, seq.sampling)
            except AegaeonError as err:
                self.fail(seq, str(err))
                continue
            pending.append(seq)
        if not pending:  # still report the group done, so the proxy sends the next one
            self.send(StepDone(group.model, 0, time.perf_counter() - started, 0.0))
            return
        record = self.switch(group.model)
        switch_seconds = record.seconds if record else 0.0
        while pending:
            chunk = pending[: engine.config.max_batch_size]
            engine.sequences.extend(chunk)
            began = time.perf_counter()
            engine.step_batch(group.model, list(chunk))
            compute = time.perf_counter() - began
            finished = [s for s in chunk if s.output_ids or s.done]
            for seq in finished:  # traces go first: the proxy has them before the request can finish
                self.trace("prefill", seq.model, compute, request_id=seq.seq_id, start=started_wall,
                           switch=switch_seconds)
                self.report_tokens(seq, 0)
                if not seq.done:
                    self.hand_off(seq)
            self.report_measurements()
            engine.sequences = [s for s in engine.sequences if s not in chunk]
            if not finished:  # not even the first request of the chunk fits the arena
                self.fail(chunk[0], f"model {chunk[0].model}: the prompt does not fit this worker's KV memory")
                finished = [chunk[0]]
            pending = [s for s in pending if s not in finished]
        self.send(StepDone(group.model, 1, time.perf_counter() - started, switch_seconds))

    def fail(self, seq: Sequence, reason: str) -> None:
        self.engine.kv.release(seq)
        seq.error, seq.status = reason, SeqStatus.FAILED
        self.report_tokens(seq, 0)

    def hand_off(self, seq: Sequence) -> None:
        """Copy the prompt's KV to this worker's partition of the host KV cache; wait for room if full."""
        layout = self.engine.runner.entries[seq.model].kv
        handles = self._allocate(len(seq.blocks), layout.block_bytes)
        self.engine.kv.export_blocks(seq, layout, self.host_kv, handles)
        self.report_measurements()
        self.engine.kv.release(seq)
        state = bytes(seq.generator.get_state().numpy()) if seq.generator is not None else b""
        self.send(SwapOut(seq.seq_id, seq.model, tuple(handles), seq.num_cached, tuple(seq.output_ids), state,
                          layout.block_bytes))

    def _allocate(self, count: int, block_bytes: int) -> list[int]:
        while True:
            taken = []
            try:
                for _ in range(count):
                    taken.append(self.kv_allocator.allocate(block_bytes))
                return [self.kv_base + h for h in taken]
            except OutOfBlocksError:
                for handle in taken:
                    self.kv_allocator.free(handle)
                log.info("host KV partition full: waiting for decode workers to release blocks")
                self.drain(0.05)  # back-pressure: handles KvRelease (and queues new groups)
                if not self.running:
                    raise


@dataclass
class _Estimates:
    """Measured decode step and switch times per model (exponential moving averages)."""

    step: dict[str, float] = field(default_factory=dict)
    switch: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def update(table: dict[str, float], model: str, value: float) -> None:
        table[model] = value if model not in table else 0.7 * table[model] + 0.3 * value


class _MeasuredCost:
    """The CostModel the decode policy needs, from this worker's own measurements."""

    def __init__(self, estimates: _Estimates, engine: Engine):
        self.estimates, self.engine = estimates, engine

    def decode_time(self, model: str, batch: int, context_tokens: int) -> float:
        return self.estimates.step.get(model, 0.01)

    def switch_time(self, from_model: str | None, to_model: str) -> float:
        return 0.0 if from_model == to_model else self.estimates.switch.get(to_model, 0.001)

    def kv_bytes_per_token(self, model: str) -> int:
        kv = self.engine.runner.entries[model].kv
        return kv.block_bytes // kv.block_size

    def prefill_time(self, model: str, input_lens) -> float:
        return 0.0

    def swap_time(self, nbytes: int) -> float:
        return 0.0

    def weight_bytes(self, model: str) -> int:
        return self.engine.runner.entries[model].weights.total_bytes


class DecodeWorker(_Worker):
    def __init__(self, spec: WorkerSpec):
        super().__init__(spec)
        self.estimates = _Estimates()
        self.cost = _MeasuredCost(self.estimates, self.engine)
        self.waiting: deque[tuple[Sequence, SwapIn]] = deque()
        self.unplaced: list[Sequence] = []  # admitted during another model's turn: placed when the turn ends
        self.timings: dict[int, dict[str, float]] = {}  # request id -> admitted (wall clock), compute, switch
        # where this worker's time went: wall seconds in decode steps, CPU seconds of those steps, in quanta
        self.seconds = {"steps": 0.0, "steps_cpu": 0.0, "quanta": 0.0}
        self.started = time.perf_counter()

    def serve(self) -> None:
        while self.running:
            self.drain(0 if self.engine.sequences or self.waiting else 0.05)
            self.admit()
            if self.engine.sequences:
                self.run_round() if self.spec.policy == "aegaeon" else self.run_to_completion()
            self.report_measurements()

    def cancel(self, request_id: int) -> None:
        super().cancel(request_id)
        self.timings.pop(request_id, None)
        for seq, swap in list(self.waiting):
            if seq.seq_id == request_id:  # its KV is still in the host cache: give it back
                self.waiting.remove((seq, swap))
                self.send(KvRelease(seq.seq_id, swap.host_handles))
        self.engine.sequences = [s for s in self.engine.sequences if not s.done]

    def handle_role(self, message: object) -> None:
        if isinstance(message, SwapIn):
            seq = self.new_sequence(self.submitted.pop(message.request_id))
            self.waiting.append((seq, message))

    def admit(self) -> list[Sequence]:
        """Swap waiting requests' KV in from the host cache while the arena has room; returns those admitted."""
        admitted = []
        while self.waiting:
            seq, swap = self.waiting[0]
            layout = self.engine.runner.entries[seq.model].kv
            try:
                self.engine.kv.import_blocks(seq, layout, self.host_kv, list(swap.host_handles), swap.num_tokens)
            except OutOfBlocksError:
                break  # wait for requests to finish
            self.waiting.popleft()
            seq.output_ids = list(swap.generated)
            if seq.generator is not None and swap.sampler_state:
                seq.generator.set_state(torch.frombuffer(bytearray(swap.sampler_state), dtype=torch.uint8))
            seq.num_cached = swap.num_tokens
            seq.status = SeqStatus.RUNNING
            self.engine.sequences.append(seq)
            self.timings[seq.seq_id] = {"admitted": time.time(), "compute": 0.0, "switch": 0.0}
            self.report_measurements()
            self.send(KvRelease(seq.seq_id, swap.host_handles))
            admitted.append(seq)
        return admitted

    def plan(self, seqs: list[Sequence]):
        """Per-model batches and their quotas (aegaeon.sched.decode, with this worker's measured costs)."""
        engine = self.engine
        candidates = [DecodeCandidate(s.seq_id, s.model, len(s.token_ids)) for s in seqs]
        batches, _ = form_batches(candidates, self.cost, engine.arena.total_bytes, engine.config.max_batch_size)
        batches = rotate_to_loaded(batches, engine.runner.active)
        return plan_round(batches, engine.runner.active, self.cost, self.spec.tpot_slo)

    def run_round(self) -> None:
        """One weighted round-robin round, run as the simulator runs it: each model with requests gets a turn
        of its quota, its batch formed when the turn starts; a request admitted meanwhile joins its model's
        running batch at the next step, or its model's coming turn, or gets a turn of its own at the round's
        end."""
        engine = self.engine
        self.unplaced = []  # the plan below covers every admitted request
        plan = self.plan([s for s in engine.sequences if not s.done])
        turns = [(batch.model, quota) for batch, quota in zip(plan.batches, plan.quotas)]
        round_models = [model for model, _ in turns]
        while turns:
            model, quota = turns.pop(0)
            batch = [s for s in engine.sequences if s.model == model and not s.done][: engine.config.max_batch_size]
            if batch:
                started = time.perf_counter()
                record = self.switch(model)
                if record:
                    self.estimates.update(self.estimates.switch, model, record.seconds)
                    for seq in batch:
                        self.timings[seq.seq_id]["switch"] += record.seconds
                steps = self.run_quota(model, batch, quota, join=True)
                spent = time.perf_counter() - started
                self.seconds["quanta"] += spent
                self.send(StepDone(model, steps, spent, record.seconds if record else 0.0))
            self.drain(0)
            newcomers, self.unplaced = self.unplaced + self.admit(), []
            for seq in newcomers:
                if seq.done:
                    continue
                if any(coming == seq.model for coming, _ in turns):
                    continue
                members = [s for s in engine.sequences if not s.done and s.model in round_models + [seq.model]]
                replanned = self.plan(members)
                quota = dict(zip((b.model for b in replanned.batches), replanned.quotas)).get(seq.model)
                if quota is not None:
                    turns.append((seq.model, quota))
                    round_models.append(seq.model)

    def admit_joiners(self, model: str, batch: list[Sequence]) -> list[Sequence]:
        """Admit what arrived since the last step; returns those that join `batch` (same model, room left)."""
        self.drain(0)
        joiners = []
        for seq in self.admit():
            if seq.model == model and len(batch) + len(joiners) < self.engine.config.max_batch_size:
                joiners.append(seq)
            else:
                self.unplaced.append(seq)
        return joiners

    def run_to_completion(self) -> None:
        """Request-level scaling (the ServerlessLLM baseline): the oldest request's model keeps the worker
        until none of its requests is left; new requests of that model join, other models wait."""
        model = self.engine.sequences[0].model
        started = time.perf_counter()
        record = self.switch(model)
        if record:
            for seq in self.engine.sequences:
                if seq.model == model:
                    self.timings[seq.seq_id]["switch"] += record.seconds
        steps = 0
        while True:
            batch = [s for s in self.engine.sequences if s.model == model][: self.engine.config.max_batch_size]
            if not batch:
                break
            steps += self.run_quota(model, batch, REQUEST_LEVEL_SLICE)
            self.drain(0)
            self.admit()
        self.send(StepDone(model, steps, time.perf_counter() - started, record.seconds if record else 0.0))

    def run_quota(self, model: str, seqs: list[Sequence], quota: float, join: bool = False) -> int:
        """Decode steps for `seqs` until the quota is spent or they finish; returns the steps run.

        With `join`, requests that arrive meanwhile are admitted between steps: those of `model` join the
        batch while it has room, the others wait in `unplaced` for the round to give them a turn."""
        quantum_start = time.perf_counter()
        deadline = quantum_start + quota
        seqs = self.engine.make_resident([s for s in seqs if not s.done])  # a cancel may have ended some
        steps, batched, context, compute = 0, 0, 0, 0.0
        while seqs and time.perf_counter() < deadline:
            steps += 1
            batched += len(seqs)
            context += sum(len(s.token_ids) for s in seqs)
            starts = {s.seq_id: len(s.output_ids) for s in seqs}
            began, began_cpu = time.perf_counter(), time.thread_time()
            self.engine.step_batch(model, seqs)
            step_seconds = time.perf_counter() - began
            compute += step_seconds
            self.seconds["steps"] += step_seconds
            self.seconds["steps_cpu"] += time.thread_time() - began_cpu
            self.sample_memory()  # while the batch's KV is resident
            self.estimates.update(self.estimates.step, model, step_seconds)
            for seq in seqs:
                self.timings[seq.seq_id]["compute"] += step_seconds
                if seq.done:
                    self.report_left(seq)
                self.report_tokens(seq, starts[seq.seq_id])
            if join and self.running:  # a Cancel handled here ends its request: filter after it
                seqs += self.admit_joiners(model, [s for s in seqs if not s.done])
            seqs = [s for s in seqs if not s.done and s.status == SeqStatus.RUNNING]
        self.engine.sequences = [s for s in self.engine.sequences if not s.done]
        if steps:  # what the steps cost at what batch and context: calibrates cost models against serving
            # `wall` adds what serving does around each step (token reports, bookkeeping) to the compute
            self.trace("quantum", model, compute, steps=steps, batch=batched / steps, context=context / steps,
                       wall=time.perf_counter() - quantum_start)
        return steps


    def close(self) -> None:
        alive = time.perf_counter() - self.started
        log.info("decode worker %d: %.1f s alive, %.1f s in quanta, %.1f s in decode steps (%.1f s on a CPU)",
                 self.spec.worker_id, alive, self.seconds["quanta"], self.seconds["steps"], self.seconds["steps_cpu"])
        super().close()

    def report_left(self, seq: Sequence) -> None:
        timing = self.timings.pop(seq.seq_id, None)
        if timing is not None:
            admitted = timing.pop("admitted")
            self.trace("decode", seq.model, time.time() - admitted, request_id=seq.seq_id, admitted=admitted,
                       **timing)


def default_threads(num_workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, num_workers))
