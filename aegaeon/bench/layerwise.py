"""Layer-wise readiness, measured: the switch time a cold switch exposes to its first forward, with the
forward waiting for the whole copy (the default) and with it waiting layer by layer (EngineConfig.layerwise),
side by side on one engine each, for prefills and decode steps, at links that make the copy a chosen
multiple of the forward. The rule of aegaeon.sched.layerwise predicts each point.

One trial: bind the other model, then time `switch_to(model)` plus one forward (a prefill of a fresh prompt,
or a decode step of a batch already prefilled), and a second forward of the same kind with the model bound;
the exposed switch is the first time less the second. The two engines alternate trial by trial, so machine
noise falls on both alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aegaeon.config.serving import EngineConfig
from aegaeon.device_link import EmulatedLink
from aegaeon.engine.executor import StepExecutor
from aegaeon.engine.layerwise import stage_shares
from aegaeon.models.sampler import SamplingParams
from aegaeon.profiler import sync
from aegaeon.sched.layerwise import layerwise_exposed


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> "Spread":
        return cls(statistics.median(values), min(values), max(values))


@dataclass(frozen=True)
class LayerwisePoint:
    kind: str  # "prefill" (of `size` prompt tokens) or "decode" (a step of `size` sequences)
    size: int
    ratio: float  # the copy over the forward, as set by the link
    link_gbps: float
    copy_s: float  # the weight copy alone at that link
    forward_s: Spread  # the forward with the model bound
    whole_copy_exposed_s: Spread  # the default: the forward waits for the whole copy
    layerwise_exposed_s: Spread
    predicted_s: float  # aegaeon.sched.layerwise.layerwise_exposed at the measured copy and forward

    @property
    def saved(self) -> float:
        """The share of the exposed switch layer-wise readiness hides (medians)."""
        whole = self.whole_copy_exposed_s.median
        return 1.0 - self.layerwise_exposed_s.median / whole if whole > 0 else 0.0


def bench_layerwise(
    model: Path,
    prefills: tuple[int, ...] = (128, 512),
    decode_batches: tuple[int, ...] = (8,),
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0),
    trials: int = 5,
    progress: Callable[[str], None] | None = None,
) -> list[LayerwisePoint]:
    points = []
    models = {"first": model, "second": model}
    base = dict(kv_bytes=64 * 2**20, link_gbps=1.0)  # any emulated link; each point sets its rate
    with (
        StepExecutor(models, EngineConfig(**base)) as whole,
        StepExecutor(models, EngineConfig(**base, layerwise=True)) as layered,
    ):
        for engine in (whole, layered):
            engine.host_cache.join()
        entry = layered.runner.entries["second"]
        cfg = entry.checkpoint.config
        shares = stage_shares(entry.weights, cfg.num_layers, cfg.tie_word_embeddings)
        nbytes = entry.weights.total_bytes
        kinds = [("prefill", n) for n in prefills] + [("decode", b) for b in decode_batches]
        for kind, size in kinds:
            trial = {
                engine: _Trial(engine, kind, size) for engine in (whole, layered)
            }  # ids and prompts per engine
            forward = statistics.median(trial[whole].forward() for _ in range(3))
            for ratio in ratios:
                gbps = nbytes / (ratio * forward) / 1e9
                for engine in (whole, layered):
                    engine.runner.link = EmulatedLink(gbps)  # the instrument: this point's link
                exposed = {whole: [], layered: []}
                forwards = []
                for _ in range(trials):
                    for engine in (whole, layered):
                        total, bound = trial[engine].switch_and_forward()
                        exposed[engine].append(max(0.0, total - bound))
                        forwards.append(bound)
                copy_s = nbytes / (gbps * 1e9)
                point = LayerwisePoint(
                    kind,
                    size,
                    ratio,
                    gbps,
                    copy_s,
                    Spread.of(forwards),
                    Spread.of(exposed[whole]),
                    Spread.of(exposed[layered]),
                    layerwise_exposed(copy_s, statistics.median(forwards), shares),
                )
                points.append(point)
                if progress:
                    progress(f"{kind} {size} at copy/forward {ratio:g}: {point.saved:.0%} hidden")
            for engine in (whole, layered):
                trial[engine].close()
    return points


class _Trial:
    """One engine's requests for one kind of forward."""

    def __init__(self, engine: StepExecutor, kind: str, size: int):
        self.engine, self.kind, self.size = engine, kind, size
        self.next_id = 1
        self.batch: list[int] = []
        engine.switch_to("second")
        if kind == "decode":
            for _ in range(size):
                self.batch.append(self._add(8, max_tokens=10_000))
            engine.step("second", self.batch)  # their prefill: from now on each step decodes

    def _add(self, prompt_len: int, max_tokens: int = 2) -> int:
        request_id, self.next_id = self.next_id, self.next_id + 1
        prompt = [(request_id * 31 + i) % 4000 + 1 for i in range(prompt_len)]
        self.engine.add(
            request_id, "second", prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True)
        )
        return request_id

    def forward(self) -> float:
        """One forward of this kind with the model bound (seconds)."""
        ids = self.batch if self.kind == "decode" else [self._add(self.size)]
        sync(str(self.engine.arena.device))
        began = time.perf_counter()
        self.engine.step("second", ids)
        sync(str(self.engine.arena.device))
        seconds = time.perf_counter() - began
        if self.kind == "prefill":
            self.engine.remove(ids[0])
        return seconds

    def switch_and_forward(self) -> tuple[float, float]:
        """(seconds of a switch to the model plus one forward, seconds of one more forward)."""
        self.engine.switch_to("first")
        self.engine.runner.wait_landed()  # the timed switch starts with no copy in flight
        ids = self.batch if self.kind == "decode" else [self._add(self.size)]
        began = time.perf_counter()
        self.engine.switch_to("second")
        self.engine.step("second", ids)
        sync(str(self.engine.arena.device))
        total = time.perf_counter() - began
        self.engine.take_weight_wait()
        if self.kind == "prefill":
            self.engine.remove(ids[0])
        return total, self.forward()

    def close(self) -> None:
        for request_id in self.batch:
            self.engine.remove(request_id)
