"""One node of a cluster: its shared memory, its worker processes and its proxy.

`Node.start()` claims the cluster's shm namespace (removing a crashed run's
leftovers), loads every model into the host weight cache (workers attach it),
makes the host KV cache segment (one partition per prefill worker), the rings,
and spawns one worker process per instance. `Node.stop()` shuts the workers
down (killing those that do not exit) and unlinks everything it made.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
import time
from dataclasses import dataclass, replace

from aegaeon.engine.engine import EngineConfig
from aegaeon.engine.worker import KV_SEGMENT, WorkerSpec, default_threads, inbox_name, outbox_name, worker_main
from aegaeon.errors import AegaeonError, ConfigError
from aegaeon.ipc.ring import Ring
from aegaeon.ipc.shm import ShmNamespace
from aegaeon.serve.proxy import Proxy, WorkerLink
from aegaeon.weights.checkpoint import open_checkpoint
from aegaeon.weights.host_cache import HostWeightCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeConfig:
    models: dict[str, str]
    num_instances: int = 4
    prefill_instances: int = 1
    cluster_id: str = "default"
    device: str = "cpu"
    engine: EngineConfig = EngineConfig()
    host_kv_bytes: int = 64 * 1024 * 1024
    kv_slab_bytes: int = 256 * 1024
    ring_slots: int = 1024
    ring_slot_bytes: int = 16 * 1024
    tpot_slo: float = 0.1
    threads_per_worker: int | None = None
    start_timeout: float = 120.0
    policy: str = "aegaeon"  # decode scaling: "aegaeon" (token-level) or "sllm" (request-level)

    def validate(self) -> None:
        if self.policy not in ("aegaeon", "sllm"):
            raise ConfigError(f"--policy {self.policy!r} is not a live policy: use aegaeon or sllm")
        if not 1 <= self.prefill_instances < self.num_instances:
            raise ConfigError(f"--prefill-instances {self.prefill_instances} must be at least 1 and below "
                              f"--num-instances {self.num_instances}, leaving decode instances")
        if self.host_kv_bytes < self.prefill_instances * self.kv_slab_bytes:
            raise ConfigError(f"host KV cache of {self.host_kv_bytes} bytes is smaller than one slab per prefill "
                              f"instance ({self.kv_slab_bytes} bytes each)")


class Node:
    def __init__(self, config: NodeConfig):
        config.validate()
        self.config = config
        self.namespace: ShmNamespace | None = None
        self.processes: list[mp.Process] = []
        self.proxy: Proxy | None = None
        self.unavailable: dict[str, str] = {}
        self._watching = False

    def start(self) -> Proxy:
        cfg = self.config
        self.namespace = ShmNamespace(cfg.cluster_id).claim()
        try:
            checkpoints = []
            for name, path in cfg.models.items():
                try:
                    checkpoints.append(open_checkpoint(path, name))
                except AegaeonError as err:
                    self.unavailable[name] = str(err)
                    log.error("model %s is unavailable: %s", name, err)
            if not checkpoints:
                raise ConfigError("no model could be loaded: " + "; ".join(self.unavailable.values()))
            self.host_cache = HostWeightCache(self.namespace, checkpoints, cfg.engine.dtype)
            self.host_cache.start_prefetch()
            self.namespace.create_segment(KV_SEGMENT, cfg.host_kv_bytes)
            good = {c.name: str(c.path) for c in checkpoints}
            links = [self._spawn(worker_id, good) for worker_id in range(cfg.num_instances)]
            self.proxy = Proxy(links)
            self.unavailable.update(self.proxy.wait_ready(cfg.start_timeout,
                                                          alive=lambda wid: self.processes[wid].is_alive()))
            self._watching = True
            self._watcher = threading.Thread(target=self._watch, name="node-watch", daemon=True)
            self._watcher.start()
        except BaseException:
            self.stop()
            raise
        log.info("node %s up: %d prefill + %d decode workers, %d models", cfg.cluster_id, cfg.prefill_instances,
                 cfg.num_instances - cfg.prefill_instances, len(self.config.models) - len(self.unavailable))
        return self.proxy

    def _spawn(self, worker_id: int, models: dict[str, str]) -> WorkerLink:
        cfg = self.config
        role = "prefill" if worker_id < cfg.prefill_instances else "decode"
        share = cfg.host_kv_bytes // cfg.prefill_instances // cfg.kv_slab_bytes * cfg.kv_slab_bytes
        partition = (worker_id * share, (worker_id + 1) * share) if role == "prefill" else (0, 0)
        inbox = Ring.create(self.namespace, inbox_name(worker_id), cfg.ring_slots, cfg.ring_slot_bytes)
        outbox = Ring.create(self.namespace, outbox_name(worker_id), cfg.ring_slots, cfg.ring_slot_bytes)
        spec = WorkerSpec(cfg.cluster_id, worker_id, role, models, replace(cfg.engine, device=cfg.device), partition,
                          cfg.kv_slab_bytes, cfg.tpot_slo,
                          cfg.threads_per_worker or default_threads(cfg.num_instances), cfg.policy)
        process = mp.get_context("spawn").Process(target=worker_main, args=(spec,), name=f"aegaeon-w{worker_id}")
        process.start()
        self.processes.append(process)
        return WorkerLink(worker_id, role, inbox, outbox, kv_partition=partition)

    def _watch(self) -> None:
        """Tell the proxy about workers that exit while the node runs (crash, kill -9)."""
        while self._watching:
            for worker_id, process in enumerate(self.processes):
                if not process.is_alive() and self.proxy is not None:
                    self.proxy.worker_died(worker_id, process.exitcode)
            time.sleep(0.1)

    def stop(self) -> None:
        self._watching = False
        if getattr(self, "_watcher", None) is not None:
            self._watcher.join()
            self._watcher = None
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                log.warning("worker %s did not stop; killing it", process.name)
                process.kill()
                process.join()
        self.processes.clear()
        if getattr(self, "host_cache", None) is not None:
            self.host_cache.close()
        if self.namespace is not None:
            self.namespace.close()
            self.namespace = None

    def __enter__(self) -> "Node":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
