"""Models added to and removed from a running node, one change at a time.

Adding: open the checkpoint, check that the host has the shared memory for it, load it into a host cache
segment of its own, then announce it to every worker (each registers it, checking that its weights and a KV
slab fit its arena) and wait for all of them. A refusal anywhere undoes the change everywhere.

Removing: refuse new requests of the model, wait up to a drain timeout for the ones in flight to finish
(those still running then fail with a 503), tell every worker to drop the model, and unlink its segment.

A worker replaced during a change is either among the workers told of it or starts with the model set
after it (`Node.spawn_lock` orders the two). Changes are
refused on a multi-node cluster (each node would have to load the model too): not built yet.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aegaeon.errors import RequestError
from aegaeon.ipc.messages import AddModel, RemoveModel
from aegaeon.ipc.shm import SHM_DIR
from aegaeon.parallel.shard import open_shard
from aegaeon.weights.host_cache import cached_bytes

if TYPE_CHECKING:
    from aegaeon.serve.node import Node

log = logging.getLogger(__name__)

SHM_HEADROOM = (
    64 * 2**20
)  # left free in /dev/shm after a model is added (rings, KV imports, other users)
WORKER_ANSWER_TIMEOUT = 120.0  # seconds every worker gets to register or drop a model


class ModelChangeError(RequestError):
    """A model change the node refuses; `status` is the HTTP status the API answers with."""

    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class ModelAdded:
    name: str
    path: str
    weight_bytes: int
    load_seconds: float


@dataclass(frozen=True)
class ModelRemoved:
    name: str
    drained: int  # requests that finished while the node waited
    failed: int  # requests still running at the drain timeout, failed with a 503


def shm_free_bytes() -> int:
    stats = os.statvfs(SHM_DIR)
    return stats.f_bavail * stats.f_frsize


class ModelChanges:
    def __init__(self, node: "Node"):
        self.node = node
        self._lock = threading.Lock()

    def add(self, name: str, path: str) -> ModelAdded:
        """Serve `name` from checkpoint `path` on the running node; ModelChangeError when it cannot be."""
        with self._lock:
            node = self._running_node()
            if name in node.good_models or name in node.unavailable:
                raise ModelChangeError(
                    409, f"model {name} is already served: remove it first", "model_exists"
                )
            # rank 0's shard names the model in the host cache, which holds every rank's shard
            checkpoint = open_shard(path, name, node.config.engine.tp_size)
            need = cached_bytes(checkpoint, node.config.engine.dtype)
            free = shm_free_bytes()
            if need + SHM_HEADROOM > free:
                raise ModelChangeError(
                    400,
                    f"model {name} needs {need / 2**20:.1f} MiB of host shared memory and {SHM_DIR} has "
                    f"{free / 2**20:.1f} MiB free ({SHM_HEADROOM // 2**20} MiB kept spare): remove a "
                    f"model or enlarge {SHM_DIR}",
                    "insufficient_memory",
                )
            started = time.perf_counter()
            cache = node.host_cache
            entry = cache.add(checkpoint)
            try:
                cache.load(name)
                cache.wait(name)
            except BaseException:
                cache.remove(name)
                raise
            loaded = time.perf_counter() - started
            # under the spawn lock: a worker replaced now either is among those told, or starts with it
            with node.spawn_lock:
                node.good_models[name] = str(path)
                node.proxy.begin_model_change(AddModel(name, str(path), entry.segment_name))
            errors, silent = node.proxy.model_changes.wait(WORKER_ANSWER_TIMEOUT)
            if errors or silent:
                del node.good_models[name]
                node.proxy.change_model(RemoveModel(name), WORKER_ANSWER_TIMEOUT)
                cache.remove(name)
                reasons = list(errors.values()) + [
                    f"worker {w} did not answer within {WORKER_ANSWER_TIMEOUT:g} s" for w in silent
                ]
                raise ModelChangeError(
                    400, f"model {name} was not added: " + "; ".join(reasons), "model_rejected"
                )
            node.models = sorted(set(node.good_models) - set(node.unavailable))
            log.info("model %s added from %s (%.1f s to load)", name, path, loaded)
            return ModelAdded(name, str(path), entry.layout.total_bytes, loaded)

    def remove(self, name: str, drain_timeout: float = 60.0) -> ModelRemoved:
        """Drain `name`'s requests (up to `drain_timeout` s, then fail the rest) and stop serving it."""
        with self._lock:
            node = self._running_node()
            if name not in node.good_models and name not in node.unavailable:
                raise ModelChangeError(
                    404, f"model {name} is not served: see GET /v1/models", "model_not_found"
                )
            if len(set(node.good_models) - {name}) == 0:
                raise ModelChangeError(
                    409,
                    f"model {name} is the node's last model: add another one before removing it",
                    "last_model",
                )
            proxy = node.proxy
            proxy.close_model(name)
            before = proxy.in_flight(name)
            deadline = time.monotonic() + drain_timeout
            while proxy.in_flight(name) and time.monotonic() < deadline:
                time.sleep(0.05)
            failed = proxy.fail_model(name, f"model {name} was removed from the node")
            with node.spawn_lock:  # as in `add`: a replaced worker is told, or starts without it
                node.good_models.pop(name, None)
                node.unavailable.pop(name, None)
                proxy.begin_model_change(RemoveModel(name))
            errors, silent = proxy.model_changes.wait(WORKER_ANSWER_TIMEOUT)
            for worker, error in errors.items():
                log.warning("worker %d: removing model %s: %s", worker, name, error)
            if silent:
                log.warning("workers %s did not confirm removing model %s", sorted(silent), name)
            if name in node.host_cache.models:
                node.host_cache.remove(name)
            proxy.close_model(name, closed=False)  # a later add of the same name serves again
            node.models = sorted(set(node.good_models) - set(node.unavailable))
            log.info("model %s removed (%d drained, %d failed)", name, before - failed, failed)
            return ModelRemoved(name, before - failed, failed)

    def _running_node(self) -> "Node":
        node = self.node
        if node.proxy is None:
            raise ModelChangeError(
                409,
                "models are changed on the head node of a cluster, through its API",
                "not_head",
            )
        if node.config.link_role is not None:
            raise ModelChangeError(
                409,
                "models cannot be added or removed at run time on a multi-node cluster yet: restart "
                "the nodes with the new models",
                "multi_node",
            )
        return node
