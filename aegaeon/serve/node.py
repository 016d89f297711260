"""One node of a cluster: its shared memory, its worker processes and its proxy.

`Node.start()` claims the cluster's shm namespace (removing a crashed run's
leftovers), loads every model into the host weight cache (workers attach it),
makes the host KV cache segment (one partition per prefill worker), the rings,
and spawns one worker process per instance. `Node.stop()` shuts the workers
down (killing those that do not exit) and unlinks everything it made.

In a multi-node cluster (`NodeConfig.link`), the head node runs the proxy and
listens on the TCP link; a joining node runs an agent instead of a proxy and
connects to the head. Both keep one more partition of the host KV cache for KV
blocks that arrive over the link.
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
from aegaeon.ipc.messages import Hello, KvPayload, Routed, WorkerGone, decode, encode
from aegaeon.ipc.tcp import HeadLink, JoinLink, LinkConfig, LinkError, Peer, parse_address
from aegaeon.serve.agent import NodeAgent
from aegaeon.serve.host_kv import HostKvArea
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
    device: str = "cpu"  # every worker's device, unless `devices` names one per worker
    devices: tuple[str, ...] = ()  # e.g. ("cuda:0", "cuda:1"): one worker per entry (num_instances must match)
    engine: EngineConfig = EngineConfig()
    host_kv_bytes: int = 64 * 1024 * 1024
    kv_slab_bytes: int = 256 * 1024
    ring_slots: int = 1024
    ring_slot_bytes: int = 16 * 1024
    tpot_slo: float = 0.1
    threads_per_worker: int | None = None
    start_timeout: float = 120.0
    policy: str = "aegaeon"  # decode scaling: "aegaeon" (token-level) or "sllm" (request-level)
    # Multi-node: "head" listens on `link_address` (HOST:PORT); "join" connects to the head there.
    link_role: str | None = None
    link_address: str = ""
    link: LinkConfig | None = None
    node_name: str = "node"

    def validate(self) -> None:
        if self.devices and len(self.devices) != self.num_instances:
            raise ConfigError(f"{len(self.devices)} devices given for {self.num_instances} instances: one worker "
                              f"runs per device")
        if self.policy not in ("aegaeon", "sllm"):
            raise ConfigError(f"--policy {self.policy!r} is not a live policy: use aegaeon or sllm")
        if self.link_role not in (None, "head", "join"):
            raise ConfigError(f"link role {self.link_role!r}: use head or join")
        if self.link_role is not None:
            if self.link is None:
                raise ConfigError("a multi-node node needs the cluster token (--token)")
            parse_address(self.link_address, "--head" if self.link_role == "head" else "--join",
                          listen=self.link_role == "head")
        if self.link_role is None and not 1 <= self.prefill_instances < self.num_instances:
            raise ConfigError(f"--prefill-instances {self.prefill_instances} must be at least 1 and below "
                              f"--num-instances {self.num_instances}, leaving decode instances")
        if self.link_role is not None and not (self.num_instances >= 1 and 0 <= self.prefill_instances <= self.num_instances):
            raise ConfigError(f"--num-instances {self.num_instances} must be at least 1 and --prefill-instances "
                              f"{self.prefill_instances} between 0 and it (the other nodes bring the other role)")
        if self.host_kv_bytes < self.kv_partitions * self.kv_slab_bytes:
            raise ConfigError(f"host KV cache of {self.host_kv_bytes} bytes is smaller than one slab per partition "
                              f"({self.kv_partitions} of {self.kv_slab_bytes} bytes)")

    @property
    def kv_partitions(self) -> int:
        """One per prefill worker, and one for KV arriving from other nodes."""
        return self.prefill_instances + (self.link_role is not None)

    @property
    def kv_share(self) -> int:
        return self.host_kv_bytes // self.kv_partitions // self.kv_slab_bytes * self.kv_slab_bytes


class Node:
    def __init__(self, config: NodeConfig):
        config.validate()
        self.config = config
        self.namespace: ShmNamespace | None = None
        self.processes: list[mp.Process] = []
        self.proxy: Proxy | None = None
        self.agent: NodeAgent | None = None
        self.link: HeadLink | JoinLink | None = None
        self.unavailable: dict[str, str] = {}
        self.models: list[str] = []
        self._watching = False

    def start(self) -> Proxy:
        cfg = self.config
        check_devices(cfg.devices or (cfg.device,))
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
            segment = self.namespace.create_segment(KV_SEGMENT, cfg.host_kv_bytes)
            good = {c.name: str(c.path) for c in checkpoints}
            links = [self._spawn(worker_id, good) for worker_id in range(cfg.num_instances)]
            imports = None
            if cfg.link_role is not None:
                share = cfg.kv_share
                imports = HostKvArea(segment, (cfg.prefill_instances * share, (cfg.prefill_instances + 1) * share),
                                     cfg.kv_slab_bytes)
            alive = lambda wid: self.processes[wid].is_alive()  # noqa: E731
            if cfg.link_role == "join":
                self.agent = NodeAgent(links, imports)
                self.unavailable.update(self.agent.wait_ready(cfg.start_timeout, alive))
            else:
                self.proxy = Proxy(links, host_kv=imports, max_batch=cfg.engine.max_batch_size)
                self.unavailable.update(self.proxy.wait_ready(cfg.start_timeout, alive))
            self.models = sorted(set(good) - set(self.unavailable))
            if cfg.link_role is not None:
                self._start_link(links)
            self._watching = True
            self._watcher = threading.Thread(target=self._watch, name="node-watch", daemon=True)
            self._watcher.start()
        except BaseException:
            self.stop()
            raise
        log.info("node %s up: %d prefill + %d decode workers, %d models", cfg.cluster_id, cfg.prefill_instances,
                 cfg.num_instances - cfg.prefill_instances, len(self.config.models) - len(self.unavailable))
        return self.proxy

    # ---- the TCP link -------------------------------------------------------------------------------------

    def _start_link(self, links: list[WorkerLink]) -> None:
        cfg = self.config
        host, port = parse_address(cfg.link_address, "--head" if cfg.link_role == "head" else "--join",
                                   listen=cfg.link_role == "head")
        if cfg.link_role == "head":
            self.link = HeadLink(host, port, cfg.link, self._on_join, self._on_peer_message, self._on_lost)
            self.link.start()
            log.info("listening for nodes on %s:%d", host, self.link.port)
            return
        self.link = JoinLink(host, port, cfg.link, self.agent.on_head_message, self.agent.on_lost)
        hello = Hello(cfg.link.token, cfg.node_name, tuple(link.role for link in links), tuple(self.models))
        log.info("joining the head node at %s (waiting up to %g s for it)", cfg.link_address, cfg.start_timeout)
        self.agent.attach(self.link, self.link.join(hello, timeout=cfg.start_timeout))
        log.info("joined the head node at %s", cfg.link_address)

    def _on_join(self, peer: Peer, hello: Hello) -> tuple[int, ...]:
        """A node with the right token asks to join: give its workers cluster-wide ids."""
        if sorted(hello.models) != self.models:
            raise LinkError(f"its models {sorted(hello.models)} differ from the head's {self.models}: start every "
                            f"node with the same --models")
        if not hello.roles:
            raise LinkError("it has no workers")
        first = max(self.proxy.links) + 1
        ids = tuple(range(first, first + len(hello.roles)))
        links = [WorkerLink(worker_id, role, None, None, transport=self._transport(peer, worker_id),
                            node=peer.node_name)
                 for worker_id, role in zip(ids, hello.roles)]
        self.proxy.add_remote_links(links)
        return ids

    def _transport(self, peer: Peer, worker_id: int):
        def send(message: object) -> None:
            if isinstance(message, KvPayload):
                self.link.send_to(peer, message)
            else:
                self.link.send_to(peer, Routed(worker_id, encode(message)))
        return send

    def _on_peer_message(self, peer: Peer, message: object) -> None:
        worker_id = getattr(message, "worker_id", None)
        if worker_id not in peer.worker_ids:
            log.warning("node %r sent %s for worker %s, which is not its own; ignored", peer.node_name,
                        type(message).__name__, worker_id)
            return
        if isinstance(message, Routed):
            self.proxy.deliver(worker_id, decode(message.frame))
        elif isinstance(message, KvPayload):
            self.proxy.deliver(worker_id, message)
        elif isinstance(message, WorkerGone):
            self.proxy.worker_died(worker_id, message.exitcode)

    def _on_lost(self, peer: Peer) -> None:
        for worker_id in peer.worker_ids:
            self.proxy.worker_died(worker_id, None, f"node {peer.node_name!r} stopped answering")

    def wait(self, timeout: float | None = None) -> bool:
        """Joining node: block until the head is lost (True) or `timeout` passes (False)."""
        return self.agent.lost.wait(timeout) if self.agent is not None else False

    def _spawn(self, worker_id: int, models: dict[str, str]) -> WorkerLink:
        cfg = self.config
        role = "prefill" if worker_id < cfg.prefill_instances else "decode"
        share = cfg.kv_share
        partition = (worker_id * share, (worker_id + 1) * share) if role == "prefill" else (0, 0)
        inbox = Ring.create(self.namespace, inbox_name(worker_id), cfg.ring_slots, cfg.ring_slot_bytes)
        outbox = Ring.create(self.namespace, outbox_name(worker_id), cfg.ring_slots, cfg.ring_slot_bytes)
        spec = WorkerSpec(cfg.cluster_id, worker_id, role, models, replace(cfg.engine, device=cfg.devices[worker_id] if cfg.devices else cfg.device), partition,
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
                if not process.is_alive():
                    (self.proxy or self.agent).worker_died(worker_id, process.exitcode)
            time.sleep(0.1)

    def stop(self) -> None:
        self._watching = False
        if getattr(self, "_watcher", None) is not None:
            self._watcher.join()
            self._watcher = None
        if self.link is not None:
            self.link.close()
            self.link = None
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None
        if self.agent is not None:
            self.agent.close()
            self.agent = None
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


def check_devices(devices: tuple[str, ...]) -> None:
    """Fail before anything starts when a device does not exist on this machine."""
    import torch

    for device in devices:
        try:
            parsed = torch.device(device)
        except RuntimeError:
            raise ConfigError(f"device {device!r} is not a torch device name (cpu, cuda:0, ...)") from None
        if parsed.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(f"device {device}: this torch build or machine has no CUDA GPU; use --device cpu "
                                  f"--num-instances N for virtual CPU instances")
            if (parsed.index or 0) >= torch.cuda.device_count():
                raise ConfigError(f"device {device}: this machine has {torch.cuda.device_count()} GPUs")
        elif parsed.type != "cpu":
            raise ConfigError(f"device {device}: only cpu and cuda devices are supported")
