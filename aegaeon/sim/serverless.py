"""ServerlessLLM and ServerlessLLM+ in the simulator: request-level auto-scaling.

Each GPU runs one model at a time and never preempts it. Work on a GPU is a
queue of *runs* (requests of one model served together as one batch).

sllm:  a request joins a run of its model, queued or running, on any GPU, if
       that run has fewer than QS requests; otherwise it scales up: a new run on
       an idle GPU, else on the least-recently-used GPU. A request joining a
       running run is prefilled between decode slices of REQUEST_LEVEL_SLICE
       seconds, as the live request-level worker admits it.
sllm+: requests are grouped per model in batches of at most QS that have not
       started, a new batch goes to the least-loaded GPU, and each GPU picks
       its next batch shortest-remaining-time-first (a batch counts as its
       prefill time). Running batches take no new members.
Loading a model costs the cost model's switch time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aegaeon.sched.cost import CostModel
from aegaeon.sched.decode import REQUEST_LEVEL_SLICE
from aegaeon.sched.request import RequestState
from aegaeon.sched.slo import SLO
from aegaeon.sim.core import EventLoop, SimConfig, decode_for, prefill


@dataclass
class _Run:
    model: str
    members: list[RequestState] = field(default_factory=list)
    joiners: list[RequestState] = field(default_factory=list)
    started: bool = False

    @property
    def size(self) -> int:
        return len(self.members) + len(self.joiners)


@dataclass
class _Gpu:
    queue: list[_Run] = field(default_factory=list)
    running: _Run | None = None
    loaded: str | None = None
    last_used: float = -1.0
    busy_until: float = 0.0


class ServerlessSystem:
    def __init__(self, loop: EventLoop, cost: CostModel, slo: SLO, config: SimConfig, plus: bool = False):
        self.loop, self.cost, self.slo, self.config, self.plus = loop, cost, slo, config, plus
        self.name = "sllm+" if plus else "sllm"
        self.gpus = [_Gpu() for _ in range(config.num_gpus)]
        self.switches = 0

    def submit(self, state: RequestState) -> None:
        run, index = self._find_run(state.model)
        if run is not None:
            (run.joiners if run.started else run.members).append(state)
        else:
            index = self._scale_up_target(state.model)
            self.gpus[index].queue.append(_Run(state.model, [state]))
        if self.gpus[index].running is None:
            self._start_next(index)

    def _find_run(self, model: str) -> tuple[_Run | None, int]:
        best: tuple[_Run | None, int] = (None, -1)
        for index, gpu in enumerate(self.gpus):
            runs = list(gpu.queue) + ([] if self.plus or gpu.running is None else [gpu.running])
            for run in runs:
                if run.model == model and run.size < self.config.queue_size:
                    if best[0] is None or run.size < best[0].size:
                        best = (run, index)
        return best

    def _scale_up_target(self, model: str) -> int:
        if self.plus:
            return min(range(len(self.gpus)), key=lambda i: (self._predicted_work(i), i))
        idle = [i for i, g in enumerate(self.gpus) if g.running is None and not g.queue]
        if idle:
            warm = [i for i in idle if self.gpus[i].loaded == model]
            return (warm or sorted(idle, key=lambda i: self.gpus[i].last_used))[0]
        return min(range(len(self.gpus)), key=lambda i: (self.gpus[i].last_used, i))

    def _predicted_work(self, index: int) -> float:
        gpu = self.gpus[index]
        t = max(0.0, gpu.busy_until - self.loop.now)
        return t + sum(self._batch_estimate(run) for run in gpu.queue)

    def _batch_estimate(self, run: _Run) -> float:
        return self.cost.prefill_time(run.model, [s.spec.input_len for s in run.members])

    def _start_next(self, index: int) -> None:
        gpu = self.gpus[index]
        gpu.running = None
        if not gpu.queue:
            return
        pick = min(range(len(gpu.queue)), key=lambda i: self._batch_estimate(gpu.queue[i])) if self.plus else 0
        run = gpu.queue.pop(pick)
        run.started = True
        gpu.running = run
        t = self.loop.now + self.cost.switch_time(gpu.loaded, run.model)
        self.switches += gpu.loaded != run.model
        gpu.loaded = run.model
        t = prefill(self.cost, run.model, run.members, t)
        self._continue(index, t)

    def _continue(self, index: int, t: float) -> None:
        """Decode the running run in slices, admitting joiners between them."""
        gpu, run = self.gpus[index], self.gpus[index].running
        if run.joiners:
            fresh, run.joiners = run.joiners, []
            t = prefill(self.cost, run.model, fresh, t)
            run.members.extend(fresh)
        run.members = [s for s in run.members if not s.finished]
        gpu.busy_until = t
        gpu.last_used = t
        if not run.members and not run.joiners:
            self.loop.at(t, lambda: self._start_next(index))
            return
        t = decode_for(self.cost, run.model, run.members, t, None if self.plus else REQUEST_LEVEL_SLICE)
        self.loop.at(t, lambda: self._continue(index, t))
