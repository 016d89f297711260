"""Request-level auto-scaling across GPUs (the ServerlessLLM baselines) as a state machine.

Each GPU runs one model at a time and never preempts it. Work on a GPU is a queue of *runs*: requests of one
model served together as one batch, prefill then decode, on the same GPU.

sllm:  a request joins a run of its model, queued or running, on any GPU, if that run has fewer than
       `queue_size` requests (the smallest such run); otherwise it scales up: a new run on an idle GPU (one
       that already holds the model first, else the least recently used), else on the least recently used
       GPU. A request joining a running run is admitted at the run's next decode slice.
sllm+: requests are grouped per model in runs of at most `queue_size` that have not started; a new run goes
       to the GPU with the least predicted work, and each GPU picks its next run shortest-first (a run counts
       as its prefill time). Running runs take no new members.

The executor (the simulator) starts the runs this class hands out, decodes them in the slices of
`aegaeon.sched.rounds.RequestLevel`, and reports when a GPU's work ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aegaeon.errors import ConfigError
from aegaeon.sched.cost import CostModel
from aegaeon.sched.request import RequestSpec


@dataclass
class Run:
    model: str
    members: list[RequestSpec] = field(default_factory=list)
    joiners: list[RequestSpec] = field(
        default_factory=list
    )  # arrived while it runs: admitted next slice
    started: bool = False

    @property
    def size(self) -> int:
        return len(self.members) + len(self.joiners)


@dataclass
class GpuState:
    queue: list[Run] = field(default_factory=list)
    running: Run | None = None
    loaded: str | None = None
    last_used: float = -1.0
    busy_until: float = 0.0


class ServerlessScheduler:
    def __init__(self, num_gpus: int, cost: CostModel, queue_size: int = 4, plus: bool = False):
        if num_gpus < 1 or queue_size < 1:
            raise ConfigError(
                f"request-level scaling needs >= 1 GPU and a queue size >= 1, got {num_gpus}, "
                f"{queue_size}"
            )
        self.cost, self.queue_size, self.plus = cost, queue_size, plus
        self.gpus = [GpuState() for _ in range(num_gpus)]

    def submit(self, request: RequestSpec, now: float) -> int | None:
        """Place a request; returns the GPU to start now (it was idle), else None."""
        run, index = self._find_run(request.model)
        if run is not None:
            (run.joiners if run.started else run.members).append(request)
        else:
            index = self._scale_up_target(request.model, now)
            self.gpus[index].queue.append(Run(request.model, [request]))
        return index if self.gpus[index].running is None else None

    def next_run(self, index: int) -> Run | None:
        """The run GPU `index` starts now (it leaves the queue), or None when its queue is empty."""
        gpu = self.gpus[index]
        gpu.running = None
        if not gpu.queue:
            return None
        pick = (
            min(range(len(gpu.queue)), key=lambda i: self._estimate(gpu.queue[i]))
            if self.plus
            else 0
        )
        run = gpu.queue.pop(pick)
        run.started = True
        gpu.running = run
        gpu.loaded = run.model
        return run

    def take_joiners(self, index: int) -> list[RequestSpec]:
        """The requests that joined GPU `index`'s running run since its last slice (they are members now)."""
        run = self.gpus[index].running
        fresh, run.joiners = run.joiners, []
        run.members.extend(fresh)
        return fresh

    def progress(self, index: int, now: float, busy_until: float) -> None:
        """The executor's GPU `index` is busy until `busy_until` with its running run (its predicted end: the
        longest member's remaining tokens at the current step time), as sllm+ places by predicted work."""
        gpu = self.gpus[index]
        gpu.last_used, gpu.busy_until = now, busy_until

    def _find_run(self, model: str) -> tuple[Run | None, int]:
        best: tuple[Run | None, int] = (None, -1)
        for index, gpu in enumerate(self.gpus):
            runs = list(gpu.queue) + ([] if self.plus or gpu.running is None else [gpu.running])
            for run in runs:
                if run.model == model and run.size < self.queue_size:
                    if best[0] is None or run.size < best[0].size:
                        best = (run, index)
        return best

    def _scale_up_target(self, model: str, now: float) -> int:
        if self.plus:
            return min(range(len(self.gpus)), key=lambda i: (self._predicted_work(i, now), i))
        idle = [i for i, g in enumerate(self.gpus) if g.running is None and not g.queue]
        if idle:
            warm = [i for i in idle if self.gpus[i].loaded == model]
            return (warm or sorted(idle, key=lambda i: self.gpus[i].last_used))[0]
        return min(range(len(self.gpus)), key=lambda i: (self.gpus[i].last_used, i))

    def _predicted_work(self, index: int, now: float) -> float:
        gpu = self.gpus[index]
        return max(0.0, gpu.busy_until - now) + sum(self._estimate(run) for run in gpu.queue)

    def _estimate(self, run: Run) -> float:
        return self.cost.prefill_time(run.model, [r.input_len for r in run.members])
