"""A follower rank of a tensor-parallel instance: `python -m aegaeon.parallel.follower`, its FollowerSpec
pickled on stdin (aegaeon.parallel.instance.start_group starts it).

It joins the group, builds its executor over its shard, then makes every call rank 0 broadcasts, until rank 0
says close (None) or is gone. A call that fails here fails on rank 0 too (same state, same inputs), where it
is reported; the follower only logs it. The follower dies with rank 0 (Linux: the parent-death signal).
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import signal
import sys

import torch

from aegaeon.engine.executor import StepExecutor
from aegaeon.ipc.shm import ShmNamespace
from aegaeon.parallel.group import TensorParallelGroup
from aegaeon.parallel.instance import SAME_MODELS, HostRef
from aegaeon.parallel.launch import FollowerSpec

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


def follow(executor: StepExecutor, group: TensorParallelGroup, host: dict[str, object]) -> None:
    """Make rank 0's calls on `executor` until it says close; `host` resolves HostRef arguments."""
    while True:
        op = group.broadcast_op()
        if op is None:
            return
        name, args, kwargs = op
        args = tuple(host[a.name] if isinstance(a, HostRef) else a for a in args)
        kwargs = {k: host[v.name] if isinstance(v, HostRef) else v for k, v in kwargs.items()}
        try:
            if name == SAME_MODELS:
                ok = sorted(executor.unavailable) == list(args[0])
            else:
                result = getattr(executor, name)(*args, **kwargs)
                # a prefetch rank 0 started must start here too (False would leave this rank's slots behind)
                ok = not (name == "prefetch" and result is False)
        except Exception as err:  # rank 0 should meet the same failure and report it
            log.info("rank %d: %s failed: %s", group.rank, name, err)
            ok = False
        if group.succeeded(ok) not in (0, group.size):
            log.error("rank %d: the ranks disagree on %s: the instance is lost", group.rank, name)
            return


def _die_with_parent(leader_pid: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: rely on the group's collectives failing
        return
    if os.getppid() != leader_pid:  # the leader died before the signal was armed
        sys.exit(1)


def main() -> None:
    spec: FollowerSpec = pickle.loads(sys.stdin.buffer.read())
    rank = spec.config.tp_rank
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s tp{rank} %(levelname)s %(name)s: %(message)s",
    )
    _die_with_parent(spec.leader_pid)
    torch.set_num_threads(spec.threads)
    group = TensorParallelGroup(rank, spec.config.tp_size, spec.address, spec.config.device)
    segments = [
        ShmNamespace(spec.cluster_id).attach_segment(s) for s in spec.host_segments.values()
    ]
    host = {
        name: segment.as_tensor(torch.uint8, (segment.size,))
        for name, segment in zip(spec.host_segments, segments)
    }
    executor = StepExecutor(
        spec.models,
        spec.config,
        host_cache_of=spec.cluster_id,
        weight_segments=spec.weight_segments or None,
        tp_group=group,
    )
    try:
        group.barrier()
        follow(executor, group, host)
    finally:
        executor.close()
        for segment in segments:
            segment.close()
        group.close()


if __name__ == "__main__":
    main()
