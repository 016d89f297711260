"""ServerlessLLM and ServerlessLLM+ in the simulator: request-level auto-scaling on unified GPUs.

Every decision is `aegaeon.sched.serverless.ServerlessScheduler`'s (which run a request joins, where a run
scales up, which run a GPU starts next) and `aegaeon.sched.rounds.RequestLevel`'s (how long a decode slice
lasts before joiners are admitted). This module advances the clock: loading a model costs the cost model's
switch time, a run's prompts are prefilled together, joiners between slices.
"""

from __future__ import annotations

from aegaeon.config.sim import SimConfig
from aegaeon.sched.cost import CostModel
from aegaeon.sched.decode import REQUEST_LEVEL_SLICE, DecodeCandidate
from aegaeon.sched.request import RequestState
from aegaeon.sched.rounds import RequestLevel
from aegaeon.sched.serverless import ServerlessScheduler
from aegaeon.sched.slo import SLO
from aegaeon.sim.core import EventLoop, decode_for, prefill


class ServerlessSystem:
    def __init__(
        self,
        loop: EventLoop,
        cost: CostModel,
        slo: SLO,
        config: SimConfig,
        models: list[str],
        policy: str = "sllm",
    ):
        self.loop, self.cost, self.slo, self.config = loop, cost, slo, config
        self.name = policy
        plus = policy == "sllm+"
        self.scheduler = ServerlessScheduler(config.num_instances, cost, config.queue_size, plus)
        # ServerlessLLM+ decodes a run to its end; ServerlessLLM admits joiners between slices
        self.slices = [
            RequestLevel(config.max_batch, float("inf") if plus else REQUEST_LEVEL_SLICE)
            for _ in range(config.num_instances)
        ]
        self.loaded: list[str | None] = [None] * config.num_instances
        self.states: dict[int, RequestState] = {}
        self.switches = 0

    def submit(self, state: RequestState) -> None:
        self.states[state.spec.request_id] = state
        start = self.scheduler.submit(state.spec, self.loop.now)
        if start is not None:
            self._start_next(start)

    def _start_next(self, index: int) -> None:
        run = self.scheduler.next_run(index)
        if run is None:
            return
        t = self.loop.now + self.cost.switch_time(self.loaded[index], run.model)
        self.switches += self.loaded[index] != run.model
        self.loaded[index] = run.model
        t = prefill(self.cost, run.model, [self.states[r.request_id] for r in run.members], t)
        self._continue(index, t)

    def _continue(self, index: int, t: float) -> None:
        """Decode the running run slice by slice, admitting joiners between slices."""
        run = self.scheduler.gpus[index].running
        fresh = self.scheduler.take_joiners(index)
        if fresh:
            t = prefill(self.cost, run.model, [self.states[r.request_id] for r in fresh], t)
        live = [
            self.states[r.request_id] for r in run.members if not self.states[r.request_id].finished
        ]
        run.members = [s.spec for s in live]
        # the whole run's predicted end, not this slice's: a GPU decoding a batch is not idle to sllm+
        left = max((s.remaining for s in live), default=0)
        context = sum(s.context_len for s in live)
        self.scheduler.progress(
            index, t, t + left * self.cost.decode_time(run.model, len(live), context) if live else t
        )
        turn = self.slices[index].next_turn(
            [DecodeCandidate(s.spec.request_id, s.model, s.context_len) for s in live]
        )
        if turn is None:
            self.loop.at(t, lambda: self._start_next(index))
            return
        batch = [self.states[i] for i in turn.request_ids]
        budget = None if turn.quota == float("inf") else turn.quota
        t = decode_for(self.cost, run.model, batch, t, budget)
        self.loop.at(t, lambda: self._continue(index, t))
