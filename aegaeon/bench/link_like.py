"""`--link-like DEVICE`: the emulated link's rate and the SLOs that put a CPU market where a GPU's is.

What decides whether token-level scaling pays is how many decode steps a model switch costs, and how many
steps fit in the TPOT SLO. On an H100 (profiles/H100) the paper's models switch in about 35 decode steps
of a batch of 8 at 1,024 tokens of context, and the 0.1 s TPOT SLO is about 10 such steps. A CPU runs tiny
models whose switch is a tenth of a step. The rule: measure the CPU market's decode step s_cpu and its mean
weight bytes W, then

    G    = W / (R_switch * s_cpu)        so that a switch costs R_switch steps, as on the reference device,
    SLOs = (TTFT, TPOT) * s_cpu / s_ref  so that each SLO spans as many steps as it does there,

where R_switch = switch_ref / s_ref, switch_ref = weight bytes / (H2D bandwidth x fast-switch efficiency),
and s_ref is the profiled decode step, both averaged over the reference device's profiled models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from aegaeon.sched.slo import SLO

REFERENCE_BATCH = 8
REFERENCE_CONTEXT = 1024  # tokens per sequence


@dataclass(frozen=True)
class Regime:
    """A reference device's ratios (from its profiles)."""

    device: str
    step_s: float  # its mean decode step (batch 8, 1,024 tokens each)
    switch_s: float  # its mean model switch
    slo: SLO  # the SLO its runs are judged by

    @property
    def switch_per_step(self) -> float:
        return self.switch_s / self.step_s

    @property
    def tpot_per_step(self) -> float:
        return self.slo.tpot / self.step_s


@dataclass(frozen=True)
class LinkLike:
    """What a CPU market gets from a regime."""

    regime: Regime
    cpu_step_s: float
    cpu_weight_bytes: float

    @property
    def gbps(self) -> float:
        return self.cpu_weight_bytes / (self.regime.switch_per_step * self.cpu_step_s) / 1e9

    @property
    def slo(self) -> SLO:
        scale = self.cpu_step_s / self.regime.step_s
        return SLO(self.regime.slo.ttft * scale, self.regime.slo.tpot * scale)

    def describe(self) -> str:
        return (
            f"like {self.regime.device}: a switch costs {self.regime.switch_per_step:.1f} decode steps and the "
            f"TPOT SLO spans {self.regime.tpot_per_step:.1f} (reference step {self.regime.step_s * 1e3:.2f} ms, "
            f"switch {self.regime.switch_s * 1e3:.0f} ms); CPU step {self.cpu_step_s * 1e3:.2f} ms, mean "
            f"weights {self.cpu_weight_bytes / 2**20:.2f} MiB -> link {self.gbps:.4g} GB/s, SLO TTFT "
            f"{self.slo.ttft:.3g} s / TPOT {self.slo.tpot:.3g} s"
        )


def reference_regime(
    device: str = "H100", slo: SLO | None = None, root: Path | None = None
) -> Regime:
    from aegaeon.profiles import load_device_profiles

    costs, link = load_device_profiles(device, root)
    steps = [
        c.decode_time(REFERENCE_BATCH, REFERENCE_BATCH * REFERENCE_CONTEXT) for c in costs.values()
    ]
    switches = [
        c.weight_bytes / (link.h2d_bandwidth * link.fast_switch_efficiency) for c in costs.values()
    ]
    return Regime(device, mean(steps), mean(switches), slo or SLO())


def measure_cpu_market(models: dict[str, str], threads: int = 1) -> tuple[float, float]:
    """(median decode step of a batch of 8, mean weight bytes) over the market's distinct checkpoints shapes,
    measured on one engine with `threads` torch threads (a worker's)."""
    import torch

    from aegaeon.bench.switch import decode_step_time
    from aegaeon.config.serving import EngineConfig
    from aegaeon.engine.executor import StepExecutor

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with StepExecutor(models, EngineConfig(kv_bytes=32 * 2**20)) as engine:
            sizes = {
                name: entry.weights.total_bytes for name, entry in engine.runner.entries.items()
            }
            steps = []
            for name in _one_per_size(sizes):
                engine.host_cache.wait(name)
                engine.runner.switch_to(name)
                steps.append(decode_step_time(engine, name, "cpu"))
    finally:
        torch.set_num_threads(previous)
    return mean(steps), mean(sizes.values())


def _one_per_size(sizes: dict[str, int]) -> list[str]:
    seen: dict[int, str] = {}
    for name, size in sizes.items():
        seen.setdefault(size, name)
    return list(seen.values())
