"""One node of a cluster: its shared memory, its worker processes and its proxy (past 300 lines: start,
worker spawning and the link's handlers share the node's state).

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
from dataclasses import replace

from aegaeon.config.link import parse_address
from aegaeon.config.serving import NodeConfig
from aegaeon.errors import AegaeonError, ConfigError, LinkError
from aegaeon.ipc.messages import Hello, KvPayload, Routed, WorkerGone, decode, encode
from aegaeon.ipc.ring import Ring
from aegaeon.ipc.shm import ShmNamespace
from aegaeon.ipc.tcp import HeadLink, JoinLink, Peer
from aegaeon.kv.host_partition import HostKvPartition
from aegaeon.parallel.shard import open_shard
from aegaeon.serve.agent import NodeAgent
from aegaeon.serve.devices import check_devices
from aegaeon.serve.links import WorkerLink
from aegaeon.serve.model_admin import ModelChanges
from aegaeon.serve.proxy import Proxy
from aegaeon.serve.supervisor import Supervisor
from aegaeon.weights.host_cache import HostWeightCache
from aegaeon.worker.main import worker_main
from aegaeon.worker.spec import KV_SEGMENT, WorkerSpec, default_threads, inbox_name, outbox_name

log = logging.getLogger(__name__)


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
        self.supervisor: Supervisor | None = None
        self.good_models: dict[str, str] = {}
        self.changes = ModelChanges(self)
        # held while a replacement is spawned and registered, and while a model change is announced
        self.spawn_lock = threading.Lock()

    def start(self) -> Proxy:
        cfg = self.config
        check_devices(cfg.devices or (cfg.device,))
        self.namespace = ShmNamespace(cfg.cluster_id).claim()
        try:
            checkpoints = []
            for name, path in cfg.models.items():
                try:
                    checkpoints.append(open_shard(path, name, cfg.engine.tp_size))
                except AegaeonError as err:
                    self.unavailable[name] = str(err)
                    log.error("model %s is unavailable: %s", name, err)
            if not checkpoints:
                raise ConfigError(
                    "no model could be loaded: " + "; ".join(self.unavailable.values())
                )
            self.host_cache = HostWeightCache(self.namespace, checkpoints, cfg.engine.dtype)
            self.host_cache.start_prefetch()
            segment = self.namespace.create_segment(KV_SEGMENT, cfg.host_kv_bytes)
            self.good_models = {c.name: str(c.path) for c in checkpoints}
            links = [self._spawn(worker_id) for worker_id in range(cfg.num_instances)]
            imports = None
            if cfg.link_role is not None:
                share = cfg.kv_share
                imports = HostKvPartition(
                    segment.as_numpy("uint8", (segment.size,)),
                    (cfg.prefill_instances * share, (cfg.prefill_instances + 1) * share),
                    cfg.kv_slab_bytes,
                )
            alive = lambda wid: self.processes[wid].is_alive()  # noqa: E731
            if cfg.link_role == "join":
                self.agent = NodeAgent(links, imports)
                self.unavailable.update(self.agent.wait_ready(cfg.start_timeout, alive))
            else:
                self.proxy = Proxy(
                    links,
                    cfg.max_group_size,
                    imports=imports,
                    max_batch=cfg.max_batch,
                    limits=cfg.limits,
                    recovery=cfg.recovery,
                    prefetch=cfg.engine.prefetch,
                    slo=cfg.slo,
                )
                self.unavailable.update(self.proxy.wait_ready(cfg.start_timeout, alive))
            self.models = sorted(set(self.good_models) - set(self.unavailable))
            if cfg.link_role is not None:
                self._start_link(links)
            # a joining node's workers are not replaced: the head re-runs their requests on the others
            respawn = self._respawn if cfg.link_role != "join" else None
            self.supervisor = Supervisor(
                self.processes,
                self._lost,
                respawn,
                cfg.restarts,
                self.proxy.expire if self.proxy is not None else None,
            )
            self.supervisor.start()
        except BaseException:
            self.stop()
            raise
        log.info(
            "node %s up: %d prefill + %d decode workers, %d models",
            cfg.cluster_id,
            cfg.prefill_instances,
            cfg.num_instances - cfg.prefill_instances,
            len(self.config.models) - len(self.unavailable),
        )
        return self.proxy

    # ---- the TCP link -------------------------------------------------------------------------------------

    def _start_link(self, links: list[WorkerLink]) -> None:
        cfg = self.config
        host, port = parse_address(
            cfg.link_address,
            "--head" if cfg.link_role == "head" else "--join",
            listen=cfg.link_role == "head",
        )
        if cfg.link_role == "head":
            self.link = HeadLink(
                host, port, cfg.link, self._on_join, self._on_peer_message, self._on_lost
            )
            self.link.start()
            log.info("listening for nodes on %s:%d", host, self.link.port)
            return
        self.link = JoinLink(host, port, cfg.link, self.agent.on_head_message, self.agent.on_lost)
        hello = Hello(
            cfg.node_name,
            tuple(link.role for link in links),
            tuple(self.models),
            cfg.engine.tp_size,
        )
        log.info(
            "joining the head node at %s (waiting up to %g s for it)",
            cfg.link_address,
            cfg.start_timeout,
        )
        self.agent.attach(self.link, self.link.join(hello, timeout=cfg.start_timeout))
        log.info("joined the head node at %s", cfg.link_address)

    def _on_join(self, peer: Peer, hello: Hello) -> tuple[int, ...]:
        """A node with the right token asks to join: give its workers cluster-wide ids."""
        if sorted(hello.models) != self.models:
            raise LinkError(
                f"its models {sorted(hello.models)} differ from the head's {self.models}: start every "
                f"node with the same --models"
            )
        if not hello.roles:
            raise LinkError("it has no workers")
        if hello.tp != self.config.engine.tp_size:
            # a host KV block holds every rank's shard, rank by rank: another degree reads it wrongly
            raise LinkError(
                f"its instances run at --tp {hello.tp}, the head's at --tp "
                f"{self.config.engine.tp_size}: KV moves between instances of one degree; start every "
                f"node with the same --tp"
            )
        first = max(self.proxy.links) + 1
        ids = tuple(range(first, first + len(hello.roles)))
        links = [
            WorkerLink(
                worker_id,
                role,
                None,
                None,
                transport=self._transport(peer, worker_id),
                node=peer.node_name,
            )
            for worker_id, role in zip(ids, hello.roles)
        ]
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
            log.warning(
                "node %r sent %s for worker %s, which is not its own; ignored",
                peer.node_name,
                type(message).__name__,
                worker_id,
            )
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

    def _spawn(self, worker_id: int, generation: int = 0) -> WorkerLink:
        """Start worker `worker_id` (its `generation`-th replacement) with rings of its own; returns its link."""
        cfg = self.config
        role = "prefill" if worker_id < cfg.prefill_instances else "decode"
        share = cfg.kv_share
        partition = (worker_id * share, (worker_id + 1) * share) if role == "prefill" else (0, 0)
        inbox = Ring.create(
            self.namespace, inbox_name(worker_id, generation), cfg.ring_slots, cfg.ring_slot_bytes
        )
        outbox = Ring.create(
            self.namespace, outbox_name(worker_id, generation), cfg.ring_slots, cfg.ring_slot_bytes
        )
        devices = cfg.instance_devices(worker_id)
        tp = cfg.engine.tp_size
        engine = replace(
            cfg.engine,
            device=devices[0],
            tp_devices=devices if tp > 1 else (),
        )
        spec = WorkerSpec(
            cfg.cluster_id,
            worker_id,
            role,
            self.good_models,
            engine,
            partition,
            cfg.kv_slab_bytes,
            cfg.tpot_slo,
            cfg.threads_per_worker or default_threads(cfg.num_instances * tp),
            cfg.policy,
            cfg.max_batch,
            cfg.max_quota,
            generation,
            self.host_cache.segment_names(),
            slo_aware_rounds=cfg.slo_aware_rounds,
        )
        process = mp.get_context("spawn").Process(
            target=worker_main,
            args=(spec,),
            name=f"aegaeon-w{worker_id}" + (f"g{generation}" if generation else ""),
        )
        process.start()
        if worker_id < len(self.processes):
            self.processes[worker_id] = process
        else:
            self.processes.append(process)
        return WorkerLink(
            worker_id, role, inbox, outbox, kv_partition=partition, generation=generation
        )

    def _lost(self, worker_id: int, exitcode: int | None) -> None:
        (self.proxy or self.agent).worker_died(worker_id, exitcode)

    def _respawn(self, worker_id: int, generation: int) -> None:
        with self.spawn_lock:
            link = self._spawn(worker_id, generation)
            self.proxy.worker_back(link)
        log.info("worker %d replaced (restart %d)", worker_id, generation)

    def stop(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor = None
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
