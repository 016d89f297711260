"""MuxServe's decisions: static placement of models onto GPUs, and the order a GPU serves its models in.

Models are placed by memory at the start (largest first, onto the GPU with the most room), each with a
fixed KV reserve; they never move, and models that fit nowhere are unservable. A GPU multiplexes its
resident models without switch cost: pending prefills first (in placement order), then one TPOT-long
decode slice per model with work, in turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aegaeon.sched.cost import CostModel


def place_models(
    models: list[str],
    cost: CostModel,
    num_gpus: int,
    device_memory_bytes: int,
    kv_reserve_bytes: int,
) -> tuple[dict[str, int], list[str]]:
    """Greedy placement; returns (model -> GPU index, unplaceable models)."""
    free = [device_memory_bytes] * num_gpus
    placement, unplaced = {}, []
    for model in sorted(models, key=lambda m: (-cost.weight_bytes(m), m)):
        need = cost.weight_bytes(model) + kv_reserve_bytes
        gpu = max(range(len(free)), key=lambda i: (free[i], -i))
        if free[gpu] >= need:
            free[gpu] -= need
            placement[model] = gpu
        else:
            unplaced.append(model)
    return placement, sorted(unplaced)


@dataclass
class ColocatedTurns:
    """What one MuxServe GPU does next: ("prefill", model) while a resident model has prompts waiting,
    else ("decode", model) for the next model with work in turn, else None (idle)."""

    models: list[str]
    turn: int = 0
    waiting: dict[str, int] = field(default_factory=dict)  # model -> prompts waiting
    decoding: dict[str, int] = field(default_factory=dict)  # model -> requests decoding

    def next_action(self) -> tuple[str, str] | None:
        for model in self.models:
            if self.waiting.get(model):
                return "prefill", model
        busy = [m for m in self.models if self.decoding.get(m)]
        if not busy:
            return None
        model = busy[self.turn % len(busy)]
        self.turn += 1
        return "decode", model
