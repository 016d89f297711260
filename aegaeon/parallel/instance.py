"""A tensor-parallel instance: rank 0's executor leads, the other ranks follow its step decisions.

Rank 0 lives in the process that talks to the proxy (a node's worker, or the profiler) and is used
exactly like a one-device StepExecutor. Every call that changes an executor's state (a request added or
removed, a step, a switch, a KV move, a model added) is first broadcast to the followers, which make the same
call on their own shard (aegaeon.parallel.follower), so every rank holds the same sequences in the same
order and enters the model's collectives together; tokens agree because every rank samples from the same
gathered logits with the same random state (an unseeded sampled request is given one seed for the group).
Calls whose effect leaves the group (a KV handoff through host memory, a model added or removed) and switches
end on a barrier, so the proxy hears of them, and a switch is timed, only once every rank is done. Reads are rank 0's alone.

The followers are child processes of rank 0: a node supervises the instance as one worker, and losing any
rank loses the instance (GroupLost), which the node replaces whole.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import subprocess
import sys
from dataclasses import dataclass, replace
from typing import Any

from aegaeon.config.serving import EngineConfig
from aegaeon.engine.executor import KvImport, StepExecutor
from aegaeon.errors import IntegrityError
from aegaeon.models.sampler import GREEDY_BELOW, SamplingParams
from aegaeon.parallel.group import GroupAddress, TensorParallelGroup, free_address

log = logging.getLogger(__name__)

# calls every rank makes; the rest (reads) are rank 0's
BROADCAST = frozenset(
    "add import_kv export_kv reserve_kv swap_out swap_in remove step switch_to prefetch add_model "
    "remove_model fail_model".split()
)
# calls whose effect is seen outside the group, and switches (a switch takes as long as its slowest rank's
# copy; timed on rank 0 alone it would hide that): every rank has finished before rank 0 returns
SYNCHRONOUS = frozenset("import_kv export_kv add_model remove_model switch_to".split())
FOLLOWER_JOIN_S = 10.0


@dataclass(frozen=True)
class HostRef:
    """A host buffer named instead of pickled: each rank maps its own view of the same shared segment."""

    name: str


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


def pin_seed(sampling: SamplingParams) -> SamplingParams:
    """A sampled request without a seed gets one, so that every rank draws the same tokens."""
    if sampling.temperature < GREEDY_BELOW or sampling.seed is not None:
        return sampling
    return replace(sampling, seed=random.getrandbits(63))


class LeaderExecutor:
    """Rank 0 of a group: a StepExecutor's interface; state changes are broadcast to the followers."""

    def __init__(
        self,
        executor: StepExecutor,
        group: TensorParallelGroup,
        followers: list[subprocess.Popen],
        host_tensors: dict[str, Any],
    ):
        self._executor = executor
        self.group = group
        self._followers = followers
        # by address, not identity: a fresh view of the same shared segment is the same buffer
        self._host_refs = {
            tensor.data_ptr(): HostRef(name) for name, tensor in host_tensors.items()
        }
        self._closed = False
        self.owned: list[Any] = []  # closed after the group (a standalone instance's host cache)

    @property
    def tp_size(self) -> int:
        return self.group.size

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._executor, name)
        if name not in BROADCAST:
            return attr

        def collective(*args: Any, **kwargs: Any) -> Any:
            args, kwargs = self._portable(name, args, kwargs)
            shared_args, shared_kwargs = self._refs(name, args), self._refs(name, kwargs)
            self.group.broadcast_op((name, shared_args, shared_kwargs))
            try:
                return attr(*args, **kwargs)
            finally:
                if name in SYNCHRONOUS:
                    self.group.barrier()

        return collective

    @staticmethod
    def _portable(name: str, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Pin the seed of a request every rank is about to start sampling."""
        if name == "add":
            args = list(args)
            if "sampling" in kwargs:
                kwargs = dict(kwargs, sampling=pin_seed(kwargs["sampling"]))
            elif len(args) > 3:
                args[3] = pin_seed(args[3])
            else:
                kwargs = dict(kwargs, sampling=pin_seed(SamplingParams()))
            return tuple(args), kwargs
        if name == "import_kv":
            request: KvImport = args[0]
            return (replace(request, sampling=pin_seed(request.sampling)),) + tuple(
                args[1:]
            ), kwargs
        return args, kwargs

    def _refs(self, name: str, values: Any) -> Any:
        """Name the shared host buffers among a call's arguments; a KV move through any other buffer would
        reach only rank 0's shard, so it is refused."""

        def shared(value: Any) -> Any:
            if not hasattr(value, "data_ptr"):
                return value
            ref = self._host_refs.get(value.data_ptr())
            if ref is None and name in ("import_kv", "export_kv"):
                raise IntegrityError(
                    f"{name} through a host buffer the group's ranks do not share: pass a view that "
                    f"starts at one of the segments start_group was given ({sorted(r.name for r in self._host_refs.values())})"
                )
            return value if ref is None else ref

        if isinstance(values, dict):
            return {k: shared(v) for k, v in values.items()}
        return tuple(shared(v) for v in values)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.group.broadcast_op(None)
        except BaseException:  # followers already gone: nothing to tell them
            log.debug("followers did not hear the close", exc_info=True)
        for follower in self._followers:
            try:
                follower.wait(FOLLOWER_JOIN_S)
            except subprocess.TimeoutExpired:
                follower.kill()
                follower.wait()
        self._executor.close()
        self.group.close()
        for thing in reversed(self.owned):
            thing.close()

    def __enter__(self) -> "LeaderExecutor":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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
    except BaseException:
        for follower in followers:
            follower.kill()
            follower.wait()
        raise
    log.info(
        "tensor-parallel instance of %d ranks is up (rendezvous %s)", size, address.init_method
    )
    return LeaderExecutor(executor, group, followers, host_tensors or {})


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
