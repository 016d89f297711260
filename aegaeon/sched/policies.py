"""The registry of policies by name: the one place a name is mapped to what runs it.

The node, the CLI and the simulator take names from here. A policy the live node can run has a decode
policy class (aegaeon.sched.rounds) for its decode workers; every policy names the simulator system that
executes it (a "module:Class" path, imported only by the simulator, so this package stays pure).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from aegaeon.errors import ConfigError
from aegaeon.sched.cost import CostModel
from aegaeon.sched.rounds import (
    UNBOUNDED_KV,
    DecodePolicy,
    RequestLevel,
    RoundConfig,
    WeightedRoundRobin,
)


def _token_level(cost: CostModel, rounds: RoundConfig, kv_capacity_bytes: int) -> DecodePolicy:
    return WeightedRoundRobin(cost, rounds, kv_capacity_bytes)


def _request_level(cost: CostModel, rounds: RoundConfig, kv_capacity_bytes: int) -> DecodePolicy:
    return RequestLevel(rounds.max_batch)


@dataclass(frozen=True)
class PolicyInfo:
    name: str
    summary: str
    sim_system: str  # "module:Class" of the simulator system that executes it
    live_decode: object | None = (
        None  # (cost, RoundConfig, kv capacity) -> DecodePolicy; None: simulator only
    )

    @property
    def live(self) -> bool:
        return self.live_decode is not None

    def decode_policy(
        self, cost: CostModel, rounds: RoundConfig, kv_capacity_bytes: int = UNBOUNDED_KV
    ) -> DecodePolicy:
        if self.live_decode is None:
            raise ConfigError(
                f"policy {self.name!r} runs in the simulator only; live policies: "
                f"{', '.join(live_policies())}"
            )
        return self.live_decode(cost, rounds, kv_capacity_bytes)

    def system_class(self) -> type:
        module, _, name = self.sim_system.partition(":")
        return getattr(importlib.import_module(module), name)


POLICIES: dict[str, PolicyInfo] = {
    p.name: p
    for p in (
        PolicyInfo(
            "aegaeon",
            "token-level: grouped-FCFS prefill, weighted round-robin decode (the paper's system)",
            "aegaeon.sim.aegaeon_system:AegaeonSystem",
            _token_level,
        ),
        PolicyInfo(
            "sllm",
            "request-level: a model keeps its instance until its requests are done (ServerlessLLM); "
            "live, the decode workers of a disaggregated node scale this way",
            "aegaeon.sim.serverless:ServerlessSystem",
            _request_level,
        ),
        PolicyInfo(
            "sllm+",
            "ServerlessLLM with model-affinity batches and shortest-job-first order",
            "aegaeon.sim.serverless:ServerlessSystem",
        ),
        PolicyInfo(
            "sllm-ae",
            "ServerlessLLM as the paper artifact's simulator runs it: unified workers, a load evicts the "
            "GPU's queue (recompute), its stale-LRU scale-up, the 15 s failure rule",
            "aegaeon.sim.unified:UnifiedSystem",
        ),
        PolicyInfo(
            "sllm+-ae",
            "ServerlessLLM+ as the artifact's simulator runs it: first-fit model batches, SRTF order that "
            "preempts decodes by recompute, the 15 s failure rule",
            "aegaeon.sim.unified:UnifiedSystem",
        ),
        PolicyInfo(
            "muxserve",
            "static spatial-temporal colocation, placement-limited (MuxServe)",
            "aegaeon.sim.muxserve:MuxServeSystem",
        ),
    )
}


def policy(name: str) -> PolicyInfo:
    try:
        return POLICIES[name]
    except KeyError:
        raise ConfigError(f"unknown policy {name!r}: choose from {', '.join(POLICIES)}") from None


def live_policies() -> list[str]:
    return [name for name, info in POLICIES.items() if info.live]


def parse_policies(text: str, live: bool = False, flag: str = "--policy") -> list[str]:
    """A comma-separated list of policy names (live ones only when `live`), checked against the registry."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    allowed = live_policies() if live else list(POLICIES)
    unknown = [p for p in names if p not in allowed]
    if unknown or not names:
        raise ConfigError(f"{flag} {text!r}: unknown {unknown}; choose from {', '.join(allowed)}")
    return names
