"""The artifact-faithful baselines in the simulator: unified workers running sllm-ae or sllm+-ae.

Every decision is aegaeon.sched.unified's (where a request goes, how queues are ordered, what the next
iteration admits, what loses its KV, which requests fail); this module advances the clock. A worker's loop,
as the artifact's: drop finished and failed requests; sleep while the queue is empty; load the head's model
when it is not the loaded one (every request in the queue loses its KV); otherwise run one iteration (all
admitted prefills together, else one decode step) and stamp a token on each request in it. Times are the
artifact's latency regressions refitted from the profiles' tables (`ArtifactLatency`; `SimConfig.
artifact_latency=False`: this project's fitted cost model), loads the profiles' `artifact_baseline` (a flat
16 GiB/s of nominal sizes).
Arrivals at a time run before the iterations that end then (the artifact's event order).
"""

from __future__ import annotations

from aegaeon.config.sim import SimConfig
from aegaeon.errors import ConfigError
from aegaeon.sched.artifact_cost import ArtifactLatency
from aegaeon.sched.cost import ArtifactSizes, TableCostModel
from aegaeon.sched.request import RequestState
from aegaeon.sched.slo import SLO
from aegaeon.sched.unified import (
    EXECUTING,
    FAILED,
    FINISHED,
    ArtifactSllm,
    ArtifactSllmPlus,
    UnifiedRequest,
    UnifiedWorker,
    expire,
    form_batch,
    kv_budget_tokens,
    to_evict,
)
from aegaeon.sim.core import EventLoop


class UnifiedSystem:
    runs_to_completion = (
        True  # the artifact runs until every request that did not fail has finished
    )

    def __init__(
        self,
        loop: EventLoop,
        cost: TableCostModel,
        slo: SLO,
        config: SimConfig,
        models: list[str],
        policy: str = "sllm-ae",
    ):
        if config.artifact_latency:
            cost = ArtifactLatency(cost)
        self.loop, self.cost, self.config = loop, cost, config
        self.name = policy
        step = cost.single_step if isinstance(cost, ArtifactLatency) else None
        self.policy = (
            ArtifactSllmPlus(cost, config.queue_size, step)
            if policy == "sllm+-ae"
            else ArtifactSllm(config.queue_size)
        )
        self.sizes = {model: self._artifact_sizes(model) for model in models}
        self.budgets = {
            model: kv_budget_tokens(config.device_memory_bytes, s.weight_gb, s.kv_bytes_per_token)
            for model, s in self.sizes.items()
        }
        self.workers = [UnifiedWorker() for _ in range(config.num_instances)]
        self.busy = [False] * config.num_instances
        self.live: list[UnifiedRequest] = []
        self.switches = 0
        self.kv_losses = (
            0  # requests whose KV a load or a preemption destroyed (each is prefilled again)
        )
        self.failed = 0

    def _artifact_sizes(self, model: str) -> ArtifactSizes:
        sizes = self.cost.model(model).artifact
        if sizes is None:
            raise ConfigError(
                f"model {model} ({self.cost.model(model).name}) has no `artifact_baseline` in its profile: "
                f"the artifact-faithful baselines need the artifact's stated sizes"
            )
        return sizes

    def submit(self, state: RequestState) -> None:
        now = self.loop.now
        for request in expire(self.live, now, self.config.failure_seconds):
            request.state.failed = (
                f"no first token {self.config.failure_seconds:g} s after arrival (the artifact's "
                f"failure rule)"
            )
            self.failed += 1
        self.live = [r for r in self.live if not r.done]
        request = UnifiedRequest(state)
        self.live.append(request)
        self.policy.place(request, self.workers)
        for index, busy in enumerate(self.busy):
            if not busy:  # woken after every arrival of this instant, as the artifact's workers are
                self.busy[index] = True
                self.loop.at(now, lambda i=index: self._next(i))

    def _next(self, index: int) -> None:
        worker = self.workers[index]
        worker.queue = [r for r in worker.queue if not r.done]
        if not worker.queue:
            self.busy[index] = False
            return
        head = worker.queue[0].model
        if head != worker.model:
            self.kv_losses += sum(r.evict() for r in worker.queue)
            worker.model = head  # the policy sees the new model while it loads
            self.switches += 1
            self.loop.at(self.loop.now + self.sizes[head].load_seconds, lambda: self._next(index))
            return
        prefill, decode = form_batch(worker, self.budgets[head])
        self.kv_losses += sum(r.evict() for r in to_evict(worker, prefill, decode))
        batch = prefill or decode
        for request in batch:
            request.status = EXECUTING
        if prefill:
            seconds = self.cost.prefill_time(head, [r.context_len for r in prefill])
        else:
            seconds = self.cost.decode_time(head, len(decode), sum(r.context_len for r in decode))
        end = self.loop.now + seconds
        self.loop.at(end, lambda: self._iteration_done(index, batch))

    def _iteration_done(self, index: int, batch: list[UnifiedRequest]) -> None:
        now = self.loop.now
        for request in batch:
            if request.status == FAILED:
                continue  # failed while its prefill ran: the work is lost
            request.state.token_times.append(now)
            request.has_kv = True
            if request.state.finished:
                request.status = FINISHED
        self.workers[index].last_batch = now
        self._next(index)
