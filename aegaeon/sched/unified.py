"""The paper artifact's request-level baselines, as its simulator runs them: sllm-ae and sllm+-ae.

Unlike this project's `sllm` and `sllm+` (aegaeon.sched.serverless), these reproduce the artifact's
simulator rule by rule, bugs included, so that its figures can be reproduced next to ours:

- **Unified workers**, one per GPU, each with one queue of requests of any models. A worker serves the
  leading run of its loaded model's requests in the queue, vLLM-like: every iteration is a prefill of all
  admitted requests without KV (prefill first) or else one decode step of the others, within a KV budget
  (`kv_budget_tokens`). When the queue's head is another model the worker loads it and **every request in
  its queue loses its KV** (recompute: they are prefilled again over prompt plus output so far).
- **sllm-ae** (ServerlessLLM, R = 1, QS = 4): free slots are counted on workers whose queue tail is the
  request's model; without one, scale up on a never-used worker, else on the worker of another model whose
  last iteration ended longest ago. That clock moves only when an iteration ends, so a worker just handed a
  load still looks least recently used and the next scale-ups pile onto it: the artifact's bug, kept by
  name here (`stale_lru`), absent from `sllm`.
- **sllm+-ae** (ServerlessLLM+): model-affinity batches of at most QS, first fit across every worker, else
  a new batch on the worker with the fewest; then every worker's batches are sorted shortest remaining time
  first (a batch with prefill left by its prefill time, else one request's decode step times its first
  request's remaining tokens), which preempts running decodes by recompute.
- **Failure rule**: at every arrival, a request without a first token `failure_seconds` (15 s) after it
  arrived fails and is dropped.

The executor (aegaeon.sim.unified) runs the iterations and keeps time; this module holds every decision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aegaeon.sched.cost import CostModel
from aegaeon.sched.request import RequestState

PENDING, EXECUTING, FINISHED, FAILED = "pending", "executing", "finished", "failed"
ARTIFACT_QUEUE_SIZE = 4  # QS of both artifact policies
ARTIFACT_REPLICAS = 1  # R of sllm-ae: free slots it wants before it stops scaling up
ARTIFACT_MAX_BATCH = 1024  # requests in one iteration
ARTIFACT_KV_SHARE = 0.8  # of the device memory the weights leave, for KV
FAILURE_SECONDS = 15.0
NEVER = 1e6  # seconds: the LRU scan's starting clock (the artifact's 10^9 ms)


@dataclass(eq=False)
class UnifiedRequest:
    """A request on a unified worker: its tokens so far (kept across evictions) and whether it has KV."""

    state: RequestState
    has_kv: bool = False
    status: str = PENDING

    @property
    def model(self) -> str:
        return self.state.spec.model

    @property
    def progress(self) -> int:
        return len(self.state.token_times)

    @property
    def context_len(self) -> int:
        return self.state.spec.input_len + self.progress

    @property
    def done(self) -> bool:
        return self.status in (FINISHED, FAILED)

    @property
    def needs_prefill(self) -> bool:
        return self.status != FAILED and not self.has_kv

    def evict(self) -> bool:
        """Lose the KV (recompute later); True when there was KV to lose."""
        lost = self.has_kv
        self.has_kv, self.status = False, PENDING
        return lost


@dataclass(eq=False)
class UnifiedWorker:
    model: str | None = None
    queue: list[UnifiedRequest] = field(default_factory=list)
    last_batch: float = 0.0  # when its last iteration ended: the artifact's LRU clock (stale_lru)

    def tail(self) -> tuple[str | None, int]:
        """The model at the queue's tail (the loaded one when the queue is empty) and how many requests of
        it end the queue."""
        if not self.queue:
            return self.model, 0
        model, count = self.queue[-1].model, 0
        for request in reversed(self.queue):
            if request.model != model:
                break
            count += 1
        return model, count


def expire(requests: list[UnifiedRequest], now: float, limit: float = FAILURE_SECONDS) -> list:
    """Fail every request with no token `limit` seconds after its arrival; returns them."""
    failed = []
    for request in requests:
        if request.status != FAILED and request.progress == 0:
            if now - request.state.spec.arrival > limit:
                request.status = FAILED
                failed.append(request)
    return failed


def kv_budget_tokens(device_memory_bytes: int, weight_gb: float, kv_bytes_per_token: int) -> int:
    """The artifact's KV budget of a worker running a model: a share of the memory its nominal weights
    leave, over its KV bytes per token."""
    free_gb = device_memory_bytes / 2**30 - weight_gb
    return int(free_gb * ARTIFACT_KV_SHARE * 2**30 / kv_bytes_per_token)


def form_batch(
    worker: UnifiedWorker, budget_tokens: int, max_batch: int = ARTIFACT_MAX_BATCH
) -> tuple[list[UnifiedRequest], list[UnifiedRequest]]:
    """(prefill, decode) of the next iteration: the queue's leading requests of the loaded model, in order,
    while their contexts fit the KV budget (the first that does not fit stops it)."""
    prefill, decode, used = [], [], 0
    for request in worker.queue:
        if request.model != worker.model or len(prefill) + len(decode) >= max_batch:
            break
        if used + request.context_len > budget_tokens:
            break
        used += request.context_len
        (prefill if request.needs_prefill else decode).append(request)
    return prefill, decode


def to_evict(
    worker: UnifiedWorker, prefill: list[UnifiedRequest], decode: list[UnifiedRequest]
) -> list[UnifiedRequest]:
    """Requests that were running and are left out of the next iteration: they lose their KV."""
    chosen = {id(r) for r in prefill} | {id(r) for r in decode}
    return [r for r in worker.queue if r.status == EXECUTING and id(r) not in chosen]


class ArtifactSllm:
    """sllm-ae: where a new request goes (appended to one worker's queue)."""

    name = "sllm-ae"

    def __init__(
        self, queue_size: int = ARTIFACT_QUEUE_SIZE, replicas: int = ARTIFACT_REPLICAS
    ) -> None:
        self.queue_size, self.replicas = queue_size, replicas

    def place(self, request: UnifiedRequest, workers: list[UnifiedWorker]) -> int:
        tails = [w.tail() for w in workers]
        slots = sum(
            max(0, self.queue_size - count) for model, count in tails if model == request.model
        )
        target = self.stale_lru(request.model, workers, tails) if slots < self.replicas else None
        if target is None:
            same = [i for i, (model, _) in enumerate(tails) if model == request.model]
            target = min(same, key=lambda i: (tails[i][1], i)) if same else 0
        workers[target].queue.append(request)
        return target

    @staticmethod
    def stale_lru(model: str, workers: list[UnifiedWorker], tails: list) -> int | None:
        """The scale-up target: the first never-used worker, else the worker of another model whose last
        iteration ended longest ago. The clock is not moved by a load handed out, only by an iteration's
        end: the artifact's bug, kept on purpose."""
        best, oldest = None, NEVER
        for i, worker in enumerate(workers):
            tail_model = tails[i][0]
            if tail_model is None:
                return i
            if tail_model == model:
                continue
            if worker.last_batch < oldest:
                best, oldest = i, worker.last_batch
        return best


class ArtifactSllmPlus:
    """sllm+-ae: batches of one model of at most QS, placed first fit, every queue sorted SRTF."""

    name = "sllm+-ae"

    def __init__(
        self,
        cost: CostModel,
        queue_size: int = ARTIFACT_QUEUE_SIZE,
        step_time: Callable[[str, int], float] | None = None,
    ) -> None:
        """`step_time(model, context)`: one request's decode step, for the SRTF key (default: the cost
        model's decode step of a batch of one)."""
        self.cost, self.queue_size = cost, queue_size
        self.step_time = step_time or (lambda model, context: cost.decode_time(model, 1, context))

    def place(self, request: UnifiedRequest, workers: list[UnifiedWorker]) -> int:
        batches = [self._batches(w.queue) for w in workers]
        target = None
        for i, worker_batches in enumerate(batches):
            for batch in worker_batches:
                if batch[0].model == request.model and len(batch) < self.queue_size:
                    batch.append(request)
                    target = i
                    break
            if target is not None:
                break
        if target is None:
            target = min(range(len(workers)), key=lambda i: (len(batches[i]), i))
            batches[target].append([request])
        for worker, worker_batches in zip(workers, batches):
            worker_batches.sort(key=self._remaining_time)  # stable: equal keys keep their order
            worker.queue = [r for batch in worker_batches for r in batch]
        return target

    def _batches(self, queue: list[UnifiedRequest]) -> list[list[UnifiedRequest]]:
        batches: list[list[UnifiedRequest]] = []
        for request in queue:
            for batch in batches:
                if batch[0].model == request.model and len(batch) < self.queue_size:
                    batch.append(request)
                    break
            else:
                batches.append([request])
        return batches

    def _remaining_time(self, batch: list[UnifiedRequest]) -> float:
        first = batch[0]
        prompts = [r.state.spec.input_len for r in batch if r.needs_prefill]
        if prompts:
            return self.cost.prefill_time(first.model, prompts)
        spec = first.state.spec
        total = spec.input_len + spec.output_len
        middle = (first.context_len + total) // 2
        return self.step_time(first.model, middle) * (total - first.context_len)
