"""MuxServe in the simulator: executes `aegaeon.sched.muxserve`'s placement and turn order on the clock.

A prefill action prefills every waiting prompt of the model together; a decode action decodes the model's
batch for one TPOT. Switching between resident models costs nothing.
"""

from __future__ import annotations

from aegaeon.config.sim import SimConfig
from aegaeon.sched.cost import CostModel
from aegaeon.sched.muxserve import ColocatedTurns, place_models
from aegaeon.sched.request import RequestState
from aegaeon.sched.slo import SLO
from aegaeon.sim.core import EventLoop, decode_for, prefill


class MuxServeSystem:
    name = "muxserve"

    def __init__(
        self,
        loop: EventLoop,
        cost: CostModel,
        slo: SLO,
        config: SimConfig,
        models: list[str],
        policy: str = "muxserve",
    ):
        self.loop, self.cost, self.slo, self.config = loop, cost, slo, config
        self.placement, self.unservable = place_models(
            models,
            cost,
            config.num_instances,
            config.device_memory_bytes,
            config.muxserve_kv_reserve_bytes,
        )
        self.turns = [ColocatedTurns([]) for _ in range(config.num_instances)]
        for model, gpu in self.placement.items():
            self.turns[gpu].models.append(model)
        self.pending: dict[str, list[RequestState]] = {}
        self.active: dict[str, list[RequestState]] = {}
        self.running = [False] * config.num_instances
        self.switches = 0

    def submit(self, state: RequestState) -> None:
        gpu = self.placement.get(state.model)
        if gpu is None:
            state.failed = f"model {state.model} could not be placed"
            return
        self.pending.setdefault(state.model, []).append(state)
        self.turns[gpu].waiting[state.model] = len(self.pending[state.model])
        if not self.running[gpu]:
            self._step(gpu)

    def _step(self, index: int) -> None:
        turns, t = self.turns[index], self.loop.now
        action = turns.next_action()
        self.running[index] = action is not None
        if action is None:
            return
        kind, model = action
        if kind == "prefill":
            fresh = self.pending.pop(model)
            turns.waiting[model] = 0
            t = prefill(self.cost, model, fresh, t)
            self.active.setdefault(model, []).extend(s for s in fresh if not s.finished)
        else:
            t = decode_for(self.cost, model, self.active[model], t, self.slo.tpot)
            self.active[model] = [s for s in self.active[model] if not s.finished]
        turns.decoding[model] = len(self.active.get(model, []))
        self.loop.at(t, lambda: self._step(index))
