"""The collectives of one tensor-parallel group, inside one node.

torch.distributed joins the group's ranks (NCCL on GPUs, gloo on CPU); step decisions travel as pickled
objects on a gloo group beside it (`broadcast_op`), so a GPU group's control never waits behind its tensor
stream. The node-to-node link stays the ZeroMQ one: a group never spans nodes. A group that loses a rank
cannot compute: every collective that fails raises `GroupLost`, which the worker treats as fatal (the node
replaces the whole group).
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

# a rank that has not joined, or not met the others in a model collective, within this long is gone; the
# node then replaces the group
DEFAULT_TIMEOUT_S = 120.0
# followers wait for rank 0's next call on the control group for as long as the instance is idle: they
# notice a dead leader by its closed connections (and die with it: the parent-death signal), not by a timeout
CONTROL_TIMEOUT = timedelta(days=365)


class GroupLost(BaseException):
    """A rank of the tensor-parallel group is gone or a collective failed: the group cannot go on.

    A BaseException, like SystemExit: the handlers that keep a worker alive through one request's failure
    (`except Exception`) must not catch it, since no further step of this group can run."""


@dataclass(frozen=True)
class GroupAddress:
    """Where the group's ranks meet (rank 0 listens there)."""

    host: str
    port: int

    @property
    def init_method(self) -> str:
        return f"tcp://{self.host}:{self.port}"


def free_address(host: str = "127.0.0.1") -> GroupAddress:
    """A port nobody listens on now, for the group's rendezvous."""
    with socket.socket() as s:
        s.bind((host, 0))
        return GroupAddress(host, s.getsockname()[1])


class TensorParallelGroup:
    """Rank `rank` of `size`, joined at `address`. `comm_seconds` counts the time spent in the model's
    collectives (all-reduce and all-gather), for the all-reduce's share of a step."""

    def __init__(
        self,
        rank: int,
        size: int,
        address: GroupAddress,
        device: str = "cpu",
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ):
        self.rank, self.size = rank, size
        self.device = torch.device(device)
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(
                backend,
                init_method=address.init_method,
                rank=rank,
                world_size=size,
                timeout=timedelta(seconds=timeout_s),
            )
            # step decisions on a gloo group of their own (even beside NCCL): a collective of the model can
            # never pair with one of control, and an idle instance's followers wait without a timeout
            self.control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
        except Exception as err:
            raise GroupLost(
                f"tensor-parallel rank {rank}/{size} could not join the group at "
                f"{address.init_method}: {err}"
            ) from err
        self.comm_seconds = 0.0
        log.info("tensor-parallel rank %d/%d joined (%s)", rank, size, backend)

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place (a row-parallel layer's partial sums)."""
        start = time.perf_counter()
        try:
            dist.all_reduce(tensor)
        except Exception as err:
            raise GroupLost(f"all-reduce failed on rank {self.rank}: {err}") from err
        self.comm_seconds += time.perf_counter() - start
        return tensor

    def all_gather_last(self, tensor: torch.Tensor) -> torch.Tensor:
        """The ranks' `tensor`s side by side along the last dimension (vocabulary-parallel logits)."""
        start = time.perf_counter()
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        try:
            dist.all_gather(parts, tensor.contiguous())
        except Exception as err:
            raise GroupLost(f"all-gather failed on rank {self.rank}: {err}") from err
        self.comm_seconds += time.perf_counter() - start
        return torch.cat(parts, dim=-1)

    def broadcast_op(self, op: object = None) -> object:
        """Rank 0's `op`, on every rank (rank 0 passes it, the others receive it)."""
        box = [op]
        try:
            dist.broadcast_object_list(box, src=0, group=self.control)
        except Exception as err:
            raise GroupLost(f"the group's leader is gone (rank {self.rank}): {err}") from err
        return box[0]

    def barrier(self) -> None:
        try:
            dist.barrier(group=self.control)
        except Exception as err:
            raise GroupLost(f"a rank is gone (barrier on rank {self.rank}): {err}") from err

    def succeeded(self, ok: bool) -> int:
        """How many ranks made the call just broadcast without an error (every rank says, on control)."""
        count = torch.tensor([int(ok)], dtype=torch.int64)
        try:
            dist.all_reduce(count, group=self.control)
        except Exception as err:
            raise GroupLost(f"a rank is gone (rank {self.rank}): {err}") from err
        return int(count.item())

    def close(self) -> None:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # a group whose peers are gone may not tear down cleanly
                log.debug("destroying the tensor-parallel group failed", exc_info=True)
