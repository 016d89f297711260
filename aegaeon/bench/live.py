"""Live replay of a synthetic workload on a CPU node of tiny models.

The workload comes from the same generator as the simulator's (Poisson
arrivals per model, ShareGPT-like lengths, scaled); model `synth_model_NN` is
served by tiny model NN of a market of two shapes, made on first use. Requests
are submitted at their arrival times through the in-process client, every
token's time is recorded, and the result is scored by the same SLO code as the
simulator and written in the same JSON schema (`source: "live"`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aegaeon.client import Client
from aegaeon.engine.engine import EngineConfig
from aegaeon.models.maker import config_for, make_model
from aegaeon.sched.request import RequestSpec, RequestState
from aegaeon.sched.slo import SLO
from aegaeon.serve.node import Node, NodeConfig
from aegaeon.sim.runner import RunLabel, result_record
from aegaeon.workload import WorkloadSpec, generate

log = logging.getLogger(__name__)

MARKET_SHAPES = (
    config_for("llama", layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=512, max_position=4096),
    config_for("qwen2", layers=3, hidden=96, heads=6, kv_heads=2, intermediate=192, vocab=640, max_position=4096),
)


@dataclass(frozen=True)
class LiveRun:
    num_models: int = 12
    arrival_rate: float = 0.5
    duration: float = 60.0
    inlen_scale: float = 0.25
    outlen_scale: float = 0.25
    instances: int = 4
    prefill_instances: int = 1
    policy: str = "aegaeon"
    seed: int = 0
    slo: SLO = field(default_factory=SLO)


def market_models(num_models: int, root: Path) -> dict[str, str]:
    """synth_model_NN -> a tiny checkpoint, alternating two shapes (made once, then reused)."""
    models = {}
    for i in range(num_models):
        path = root / f"market-{i:02d}"
        if not (path / "config.json").is_file():
            make_model(path, MARKET_SHAPES[i % 2], seed=i)
        models[f"synth_model_{i:02d}"] = str(path)
    return models


def run_live(run: LiveRun, models_root: Path, progress: Callable[[int, int], None] | None = None) -> dict:
    requests = generate(WorkloadSpec(run.num_models, run.arrival_rate, run.duration, run.inlen_scale,
                                     run.outlen_scale, run.seed))
    limit = MARKET_SHAPES[0].max_position - 1
    requests = [RequestSpec(r.request_id, r.model, r.arrival, min(r.input_len, limit // 2),
                            min(r.output_len, limit // 2)) for r in requests]
    config = NodeConfig(market_models(run.num_models, models_root), run.instances, run.prefill_instances,
                        cluster_id=f"live{run.seed}", engine=EngineConfig(kv_bytes=32 * 2**20),
                        host_kv_bytes=128 * 2**20, policy=run.policy, tpot_slo=run.slo.tpot)
    states = [RequestState(spec) for spec in requests]
    with Node(config) as node:
        client = Client(node.proxy, timeout=run.duration * 4 + 60)
        start = time.time()
        collectors = _replay(client, states, start, progress)
        for thread in collectors:
            thread.join()
    label = RunLabel(run.num_models, run.arrival_rate, run.inlen_scale, run.outlen_scale)
    extra = {"instances": run.instances, "prefill_instances": run.prefill_instances, "device": "cpu"}
    return result_record(run.policy, label, states, run.slo, run.duration, run.instances, extra, source="live")


def _replay(client: Client, states: list[RequestState], start: float,
            progress: Callable[[int, int], None] | None) -> list[threading.Thread]:
    rng = random.Random(0)
    threads, done = [], [0]
    lock = threading.Lock()

    def collect(state: RequestState, handle) -> None:
        result = client.complete(handle)
        state.token_times = [t - start for t in result.token_times]
        state.failed = result.error
        with lock:
            done[0] += 1
            if progress:
                progress(done[0], len(states))

    for state in states:
        delay = start + state.spec.arrival - time.time()
        if delay > 0:
            time.sleep(delay)
        vocab = 500  # below both market vocabularies
        prompt = [rng.randrange(vocab) for _ in range(state.spec.input_len)]
        handle = client.submit(state.model, prompt, state.spec.output_len, ignore_eos=True)
        thread = threading.Thread(target=collect, args=(state, handle), daemon=True)
        thread.start()
        threads.append(thread)
    return threads
