"""Starting a tensor-parallel instance: the follower ranks as child processes, rank 0 here.

`start_group` is what a node's worker calls (the node's launcher owns the host weight cache);
`standalone_instance` also owns the cache, for the profiler and the benchmarks.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass, replace
from typing import Any

from aegaeon.config.serving import EngineConfig
from aegaeon.engine.executor import StepExecutor
from aegaeon.parallel.group import GroupAddress, TensorParallelGroup, free_address
from aegaeon.parallel.instance import SAME_MODELS, LeaderExecutor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FollowerSpec:
    """What rank `config.tp_rank` is started with (pickled to its stdin)."""

    models: dict[str, str]
    config: EngineConfig
    cluster_id: str  # whose host weight cache the ranks attach
    weight_segments: dict[str, str]
    address: GroupAddress
    host_segments: dict[
        str, str
    ]  # HostRef name -> shared segment of cluster_id (e.g. the KV segment)
    threads: int
    leader_pid: int


def rank_device(config: EngineConfig, rank: int) -> str:
    return config.tp_devices[rank] if config.tp_devices else config.device


def start_group(
    models: dict[str, str],
    config: EngineConfig,
    cluster_id: str,
    weight_segments: dict[str, str] | None = None,
    host_segments: dict[str, str] | None = None,
    host_tensors: dict[str, Any] | None = None,
    threads: int = 1,
) -> LeaderExecutor:
    """Start ranks 1..N-1 as child processes and build rank 0 here, over the host weight cache of
    `cluster_id` (made by its owner from rank-0 shards: aegaeon.parallel.shard.open_shard). `host_segments`
    names the shared segments that `host_tensors` (rank 0's views of them) map, for the followers to map."""
    size = config.tp_size
    address = free_address()
    weight_segments = dict(weight_segments or {})
    followers = []
    for rank in range(1, size):
        spec = FollowerSpec(
            dict(models),
            replace(config, tp_rank=rank, device=rank_device(config, rank)),
            cluster_id,
            weight_segments,
            address,
            dict(host_segments or {}),
            threads,
            os.getpid(),
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "aegaeon.parallel.follower"], stdin=subprocess.PIPE
        )
        process.stdin.write(pickle.dumps(spec))
        process.stdin.close()
        followers.append(process)
    try:
        group = TensorParallelGroup(0, size, address, config.device)
        executor = StepExecutor(
            models,
            replace(config, tp_rank=0),
            host_cache_of=cluster_id,
            weight_segments=weight_segments or None,
            tp_group=group,
        )
        group.barrier()  # every follower has built its executor
        leader = LeaderExecutor(executor, group, followers, host_tensors or {})
        unavailable = sorted(executor.unavailable)
        group.broadcast_op((SAME_MODELS, (unavailable,), {}))
        leader._agree("opening the models (the same ones unavailable on every rank)", True)
    except BaseException:
        for follower in followers:
            follower.kill()
            follower.wait()
        raise
    log.info(
        "tensor-parallel instance of %d ranks is up (rendezvous %s)", size, address.init_method
    )
    return leader


def standalone_instance(
    models: dict[str, str], config: EngineConfig, threads: int = 1
) -> StepExecutor | LeaderExecutor:
    """An instance of `config.tp_size` ranks that owns its host weight cache (what a node's launcher holds
    otherwise): a plain StepExecutor at TP 1, a LeaderExecutor whose close also frees the cache above."""
    if config.tp_size == 1:
        return StepExecutor(models, config)
    from aegaeon.ipc.shm import ShmNamespace
    from aegaeon.parallel.shard import open_shard
    from aegaeon.weights.host_cache import HostWeightCache

    namespace = ShmNamespace(config.cluster_id or f"tp{os.getpid()}").claim()
    cache = None
    try:
        cache = HostWeightCache(
            namespace,
            [open_shard(path, name, config.tp_size) for name, path in models.items()],
            config.dtype,
        )
        cache.start_prefetch()
        leader = start_group(
            models, config, namespace.cluster_id, cache.segment_names(), threads=threads
        )
    except BaseException:
        if cache is not None:
            cache.close()
        namespace.close()
        raise
    leader.owned += [namespace, cache]
    return leader
