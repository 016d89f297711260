"""MuxServe in the simulator: static spatial-temporal colocation.

At start, models are placed onto GPUs by memory (largest first, onto the GPU
with the most room), each with `muxserve_kv_reserve_bytes` of KV room; they
never move. Models that fit nowhere are unservable: their requests never
finish. Each GPU multiplexes its resident models without switch cost: pending
prefills first, then one TPOT-long decode slice per model in turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aegaeon.sched.cost import CostModel
from aegaeon.sched.request import RequestState
from aegaeon.sched.slo import SLO
from aegaeon.sim.core import EventLoop, SimConfig, decode_for, prefill


@dataclass
class _Colocated:
    models: list[str] = field(default_factory=list)
    free_bytes: int = 0
    pending: dict[str, list[RequestState]] = field(default_factory=dict)
    active: dict[str, list[RequestState]] = field(default_factory=dict)
    turn: int = 0
    running: bool = False


def place_models(models: list[str], cost: CostModel, config: SimConfig) -> tuple[dict[str, int], list[str]]:
    """Greedy placement; returns (model -> GPU index, unplaceable models)."""
    free = [config.device_memory_bytes] * config.num_gpus
    placement, unplaced = {}, []
    for model in sorted(models, key=lambda m: (-cost.weight_bytes(m), m)):
        need = cost.weight_bytes(model) + config.muxserve_kv_reserve_bytes
        gpu = max(range(len(free)), key=lambda i: (free[i], -i))
        if free[gpu] >= need:
            free[gpu] -= need
            placement[model] = gpu
        else:
            unplaced.append(model)
    return placement, sorted(unplaced)


class MuxServeSystem:
    name = "muxserve"

    def __init__(self, loop: EventLoop, cost: CostModel, slo: SLO, config: SimConfig, models: list[str]):
        self.loop, self.cost, self.slo, self.config = loop, cost, slo, config
        self.placement, self.unservable = place_models(models, cost, config)
        self.gpus = [_Colocated() for _ in range(config.num_gpus)]
        for model, gpu in self.placement.items():
            self.gpus[gpu].models.append(model)
        self.switches = 0

    def submit(self, state: RequestState) -> None:
        gpu_index = self.placement.get(state.model)
        if gpu_index is None:
            state.failed = f"model {state.model} could not be placed"
            return
        gpu = self.gpus[gpu_index]
        gpu.pending.setdefault(state.model, []).append(state)
        if not gpu.running:
            self._step(gpu_index)

    def _step(self, index: int) -> None:
        gpu, t = self.gpus[index], self.loop.now
        for model in gpu.models:
            fresh = gpu.pending.pop(model, [])
            if fresh:
                t = prefill(self.cost, model, fresh, t)
                gpu.active.setdefault(model, []).extend(s for s in fresh if not s.finished)
                self.loop.at(t, lambda: self._step(index))
                gpu.running = True
                return
        busy = [m for m in gpu.models if gpu.active.get(m)]
        if not busy:
            gpu.running = False
            return
        gpu.running = True
        model = busy[gpu.turn % len(busy)]
        gpu.turn += 1
        t = decode_for(self.cost, model, gpu.active[model], t, self.slo.tpot)
        gpu.active[model] = [s for s in gpu.active[model] if not s.finished]
        self.loop.at(t, lambda: self._step(index))
