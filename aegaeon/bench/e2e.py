"""End-to-end benchmark: replay a synthetic workload in real time on a live node.

The workload is `workloads/synth-N-R-X-Y.csv` (generated on first use, by the
same generator the simulator reads); model `synth_model_NN` is served by tiny
model NN of a market of two shapes, made on first use. Requests are submitted
at their arrival times through the in-process client, every token's time is
recorded, and the run is scored by the same SLO code as the simulator and
written in the same JSON schema (`source: "live"`), plus what the workers
measured: per-request latency breakdowns, model switches with their stages,
KV swaps and arena usage samples (`trace`, see aegaeon.bench.trace), from which
figures 14-16 are drawn.
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from aegaeon.bench.trace import add_trace, decode_switch_figures
from aegaeon.client import Client
from aegaeon.config.link import LinkConfig
from aegaeon.config.serving import EngineConfig, NodeConfig
from aegaeon.errors import ConfigError
from aegaeon.models.maker import config_for, make_model
from aegaeon.sched.request import RequestSpec, RequestState
from aegaeon.sched.slo import SLO
from aegaeon.serve.node import Node
from aegaeon.sim.runner import RunLabel, result_record
from aegaeon.sim.sweep import ensure_workload

log = logging.getLogger(__name__)

MARKET_SHAPES = (
    config_for(
        "llama",
        layers=2,
        hidden=64,
        heads=4,
        kv_heads=2,
        intermediate=128,
        vocab=512,
        max_position=4096,
    ),
    config_for(
        "qwen2",
        layers=3,
        hidden=96,
        heads=6,
        kv_heads=2,
        intermediate=192,
        vocab=640,
        max_position=4096,
    ),
)
PROMPT_VOCAB = 500  # token ids below both market vocabularies


@dataclass(frozen=True)
class E2ERun:
    num_models: int = 12
    arrival_rate: float = 0.5
    duration: float = 60.0  # seconds of arrivals replayed (a longer workload file is cut here)
    inlen_scale: float = 0.2
    outlen_scale: float = 0.2
    instances: int = 4
    prefill_instances: int = 1
    policy: str = "aegaeon"
    seed: int = 0
    slo: SLO = field(default_factory=SLO)
    nnodes: int = 1
    link_gbps: float | None = None  # CPU workers' emulated host<->device link (aegaeon.device_link)
    prefetch: bool = False  # workers prefetch their next weights (EngineConfig.prefetch)
    tp: int = 1  # worker ranks per instance (tensor parallelism)
    # workers keep the models they ran in the arena the KV leaves free (EngineConfig.residency)
    residency: bool = False
    # forwards start before a switch's copy has landed (EngineConfig.layerwise)
    layerwise: bool = False
    slo_aware_rounds: bool = False  # decode turns cut for first deadlines at risk (NodeConfig)
    kv_mib: int = (
        32  # each worker's arena beside the largest model's weights (EngineConfig.kv_bytes)
    )

    @property
    def label(self) -> RunLabel:
        return RunLabel(self.num_models, self.arrival_rate, self.inlen_scale, self.outlen_scale)

    def validate(self) -> None:
        if self.num_models < 1 or self.arrival_rate <= 0 or self.duration <= 0 or self.nnodes < 1:
            raise ConfigError(
                "--num-models, --arrival-rate, --duration and --nnodes must be positive"
            )
        if self.kv_mib < 1:
            raise ConfigError(f"--kv-mib must be at least 1, not {self.kv_mib}")


def market_models(num_models: int, root: Path) -> dict[str, str]:
    """synth_model_NN -> a tiny checkpoint, alternating two shapes (made once, then reused)."""
    models = {}
    for i in range(num_models):
        path = root / f"market-{i:02d}"
        if not (path / "config.json").is_file():
            make_model(path, MARKET_SHAPES[i % 2], seed=i)
        models[f"synth_model_{i:02d}"] = str(path)
    return models


def load_requests(run: E2ERun, workloads_dir: Path) -> list[RequestSpec]:
    """The run's workload (generated into `workloads_dir` if missing), cut at `duration`, lengths within context."""
    requests, _ = ensure_workload(run.label, workloads_dir, run.duration, run.seed)
    limit = (MARKET_SHAPES[0].max_position - 1) // 2
    requests = [
        RequestSpec(
            r.request_id, r.model, r.arrival, min(r.input_len, limit), min(r.output_len, limit)
        )
        for r in requests
        if r.arrival < run.duration
    ]
    missing = sorted(
        {r.model for r in requests} - {f"synth_model_{i:02d}" for i in range(run.num_models)}
    )
    if missing:
        raise ConfigError(
            f"the workload names models outside synth_model_00..{run.num_models - 1:02d}: {missing[:3]}"
        )
    if not requests:
        raise ConfigError(f"no request arrives within --duration {run.duration} s: raise it")
    return requests


def node_config(run: E2ERun, models: dict[str, str], **link: object) -> NodeConfig:
    return NodeConfig(
        models,
        run.instances,
        run.prefill_instances,
        cluster_id=f"e2e{run.seed}",
        engine=EngineConfig(
            kv_bytes=run.kv_mib * 2**20,
            link_gbps=run.link_gbps,
            prefetch=run.prefetch,
            residency=run.residency,
            layerwise=run.layerwise,
            tp_size=run.tp,
        ),
        host_kv_bytes=128 * 2**20,
        policy=run.policy,
        slo=run.slo,
        slo_aware_rounds=run.slo_aware_rounds,
        **link,
    )


@contextmanager
def launch_cluster(run: E2ERun, models: dict[str, str]) -> Iterator[Node]:
    """One node, or `nnodes` nodes on this machine joined over the TCP link on loopback (the head is yielded;
    every node has `instances` workers, `prefill_instances` of them prefill)."""
    if run.nnodes == 1:
        with Node(node_config(run, models)) as node:
            yield node
        return
    token = secrets.token_hex(16)
    head = Node(
        node_config(
            run,
            models,
            link_role="head",
            link_address="127.0.0.1:0",
            link=LinkConfig(token),
            node_name="head",
        )
    )
    nodes = [head]
    try:
        head.start()
        for index in range(1, run.nnodes):
            joined = Node(
                replace(
                    node_config(
                        run,
                        models,
                        link_role="join",
                        link_address=f"127.0.0.1:{head.link.port}",
                        link=LinkConfig(token),
                        node_name=f"node{index}",
                    ),
                    cluster_id=f"e2e{run.seed}n{index}",
                )
            )
            nodes.append(joined)
            joined.start()
        yield head
    finally:
        for node in reversed(nodes):
            node.stop()


def run_e2e(
    run: E2ERun,
    models_root: Path,
    workloads_dir: Path,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    run.validate()
    requests = load_requests(run, workloads_dir)
    states = [RequestState(spec) for spec in requests]
    with launch_cluster(run, market_models(run.num_models, models_root)) as node:
        client = Client(node.proxy, timeout=run.duration * 4 + 60)
        start = time.time()
        proxy_ids, collectors = _replay(client, states, start, progress)
        for thread in collectors:
            thread.join()
        events = node.proxy.telemetry.events(since=start)
        nodes = {str(link.worker_id): link.node for link in node.proxy.links.values()}
    extra = {
        "instances": run.instances,
        "prefill_instances": run.prefill_instances,
        "nnodes": run.nnodes,
        "device": "cpu",
        "seed": run.seed,
        "link_gbps": run.link_gbps,
        "tp": run.tp,
        "kv_mib": run.kv_mib,
        "variant": "_".join(
            tag
            for tag in (
                "prefetch" if run.prefetch else "",
                "resident" if run.residency else "",
                "layerwise" if run.layerwise else "",
                "sloround" if run.slo_aware_rounds else "",
                f"kv{run.kv_mib}" if run.kv_mib != E2ERun.kv_mib else "",
                f"tp{run.tp}" if run.tp > 1 else "",
            )
            if tag
        ),
        **decode_switch_figures(events, run.prefill_instances, run.instances),
    }
    result = result_record(
        run.policy,
        run.label,
        states,
        run.slo,
        run.duration,
        run.instances * run.tp * run.nnodes,
        extra,
        source="live",
    )
    add_trace(result, states, proxy_ids, events, start, nodes)
    return result


def _replay(
    client: Client,
    states: list[RequestState],
    start: float,
    progress: Callable[[int, int], None] | None,
) -> tuple[list[int], list[threading.Thread]]:
    rng = random.Random(0)
    threads, proxy_ids, done = [], [], [0]
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
        prompt = [rng.randrange(PROMPT_VOCAB) for _ in range(state.spec.input_len)]
        handle = client.submit(state.model, prompt, state.spec.output_len, ignore_eos=True)
        proxy_ids.append(handle.submit.request_id)
        thread = threading.Thread(target=collect, args=(state, handle), daemon=True)
        thread.start()
        threads.append(thread)
    return proxy_ids, threads
