"""What a worker process is told at spawn time, and the names of its shared-memory rings."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from aegaeon.config.serving import EngineConfig
from aegaeon.sched.decode import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUOTA

KV_SEGMENT = "kvcache"


@dataclass(frozen=True)
class WorkerSpec:
    cluster_id: str
    worker_id: int
    role: str  # "prefill" or "decode"
    models: dict[str, str]
    engine: EngineConfig
    kv_partition: tuple[int, int] = (
        0,
        0,
    )  # prefill: [start, end) of its share of the host KV segment
    kv_slab_bytes: int = 2 * 1024 * 1024
    tpot_slo: float = 0.1
    threads: int = 1
    policy: str = "aegaeon"  # a live policy of aegaeon.sched.policies
    max_batch: int = DEFAULT_MAX_BATCH  # decode batch cap (the simulator's too)
    max_quota: float = DEFAULT_MAX_QUOTA

    generation: int = 0  # respawns of this worker id so far: each incarnation has rings of its own
    weight_segments: dict[str, str] = field(default_factory=dict)  # model -> its host cache segment
    # beyond the paper: decode turns shortened for requests whose first decode deadline is at risk
    slo_aware_rounds: bool = False


def inbox_name(worker_id: int, generation: int = 0) -> str:
    return f"w{worker_id}.in" if generation == 0 else f"w{worker_id}g{generation}.in"


def outbox_name(worker_id: int, generation: int = 0) -> str:
    return f"w{worker_id}.out" if generation == 0 else f"w{worker_id}g{generation}.out"


def default_threads(num_workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, num_workers))
