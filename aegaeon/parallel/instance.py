"""A tensor-parallel instance: rank 0's executor leads, the other ranks follow its step decisions.

Rank 0 lives in the process that talks to the proxy (a node's worker, or the profiler) and is used
exactly like a one-device StepExecutor. Every call that changes an executor's state (a request added or
removed, a step, a switch, a KV move, a model added) is first broadcast to the followers, which make the same
call on their own shard (aegaeon.parallel.follower), so every rank holds the same sequences in the same
order and enters the model's collectives together; tokens agree because every rank samples from the same
gathered logits with the same random state (an unseeded sampled request is given one seed for the group).
Every broadcast call ends with the ranks counting who made it without an error (`TensorParallelGroup.
succeeded`): so the proxy hears of a KV handoff or a model change, and a switch is timed, only once every rank
is done, and ranks that disagree (one failed where another did not: their states have diverged) lose the
instance (GroupLost) instead of computing on. A prefetch is decided by rank 0 alone (whether a copy can
start now depends on timing), then made on every rank, waiting for what it needs. Reads are rank 0's alone.

The followers are child processes of rank 0 (aegaeon.parallel.launch starts them): a node supervises the
instance as one worker, and losing any rank loses the instance (GroupLost), which the node replaces whole.
"""

from __future__ import annotations

import logging
import pickle
import random
import subprocess
from dataclasses import dataclass, replace
from typing import Any

from aegaeon.engine.executor import KvImport, StepExecutor
from aegaeon.errors import IntegrityError
from aegaeon.models.sampler import GREEDY_BELOW, SamplingParams
from aegaeon.parallel.group import GroupLost, TensorParallelGroup

log = logging.getLogger(__name__)

# calls every rank makes; the rest (reads) are rank 0's
BROADCAST = frozenset(
    "add import_kv export_kv reserve_kv swap_out swap_in remove step switch_to prefetch add_model "
    "remove_model fail_model".split()
)
FOLLOWER_JOIN_S = 10.0
SAME_MODELS = (
    "_same_models"  # not a call: the followers check that they serve the models rank 0 serves
)


@dataclass(frozen=True)
class HostRef:
    """A host buffer named instead of pickled: each rank maps its own view of the same shared segment."""

    name: str


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
        self._broken = False  # a call was cut short by GroupLost: the ranks are out of step
        self.owned: list[Any] = []  # closed after the group (a standalone instance's host cache)

    @property
    def tp_size(self) -> int:
        return self.group.size

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._executor, name)
        if name not in BROADCAST:
            return attr

        def collective(*args: Any, **kwargs: Any) -> Any:
            if self._broken:
                raise GroupLost(f"{name}: the tensor-parallel instance was lost")
            if name == "prefetch":
                return self._guarded(self._prefetch, *args, **kwargs)
            args, kwargs = self._portable(name, args, kwargs)
            op = (name, self._refs(name, args), self._refs(name, kwargs))
            try:
                pickle.dumps(op)  # an argument that cannot travel fails this call, not the instance
            except Exception as err:
                raise IntegrityError(
                    f"{name}: its arguments cannot be sent to the other ranks: {err}"
                )
            return self._guarded(self._call, attr, op, *args, **kwargs)

        return collective

    def _guarded(self, fn, *args: Any, **kwargs: Any) -> Any:
        """A GroupLost (or any non-Exception) mid-call leaves the ranks out of step: no collective of control
        may follow it (a follower may be waiting in a different one), so close() then only kills them."""
        try:
            return fn(*args, **kwargs)
        except BaseException as err:
            self._broken = self._broken or not isinstance(err, Exception)
            raise

    def _call(self, attr, op: tuple, *args: Any, **kwargs: Any) -> Any:
        self.group.broadcast_op(op)
        try:
            result = attr(*args, **kwargs)
        except Exception:
            self._agree(op[0], False)
            raise
        self._agree(op[0], True)
        return result

    def _prefetch(self, model: str) -> bool:
        """Rank 0 decides whether a copy starts now; the followers then start theirs, waiting for their copy
        in flight if it has not landed yet, so that every rank holds the same slots. A call that changes
        nothing on rank 0 (its copy of `model` is already pending) is not sent."""
        pending = self._executor.runner.pending
        if pending is not None and pending.model == model:
            return True
        try:
            started = self._executor.prefetch(model)
        except (
            Exception
        ) as err:  # rank 0 may have dropped its copy in flight: its slots are not the others'
            raise GroupLost(f"prefetch of {model} failed on rank 0: {err}") from err
        if not started:
            return False
        self.group.broadcast_op(("prefetch", (model,), {"wait": True}))
        self._agree("prefetch", True)
        return True

    def _agree(self, name: str, ok: bool) -> None:
        done = self.group.succeeded(ok)
        if done not in (0, self.group.size):
            raise GroupLost(
                f"{name}: {done} of {self.group.size} tensor-parallel ranks made it, the others failed: "
                f"their states have diverged, so the instance is lost"
            )

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
        if not self._broken:
            try:
                self.group.broadcast_op(None)
            except BaseException:  # followers already gone: nothing to tell them
                log.debug("followers did not hear the close", exc_info=True)
        for follower in self._followers:
            try:
                follower.wait(0 if self._broken else FOLLOWER_JOIN_S)
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
