"""The agent of a joining node: its workers' side of the TCP link to the head node's proxy.

A joining node has no proxy. The agent reads its workers' outboxes and
forwards their messages to the head (`Routed`, under cluster-wide worker ids);
messages from the head go into the right worker's inbox. KV crosses the link
as bytes: a local prefill worker's `SwapOut` is read from this node's host KV
cache, its blocks are freed at once and the bytes go to the head as a
`KvPayload`; a `KvPayload` for a local decode worker is written into this
node's import partition (waiting for room when it is full) and handed over as
a `SwapIn`, and its blocks are freed here when the worker releases them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from aegaeon.errors import AegaeonError
from aegaeon.ipc.messages import (
    KvPayload,
    KvRelease,
    Routed,
    Shutdown,
    SwapIn,
    SwapOut,
    WorkerGone,
    WorkerReady,
    decode,
    encode,
)
from aegaeon.ipc.tcp import JoinLink
from aegaeon.kv.host_partition import HostKvPartition, store_in_order
from aegaeon.serve.links import WorkerLink, start_link_threads, wait_for_workers

log = logging.getLogger(__name__)


class NodeAgent:
    def __init__(self, links: list[WorkerLink], host_kv: HostKvPartition):
        self.links = links
        self.host_kv = host_kv
        self.global_ids: dict[int, int] = {}  # local worker id -> cluster-wide id
        self.local: dict[int, WorkerLink] = {}  # cluster-wide id -> link
        self.link: JoinLink | None = None
        self.lock = threading.Lock()
        self.pending: list[KvPayload] = []
        self.lost = threading.Event()  # set when the head stops answering
        self._stopping = False
        self._threads = start_link_threads(links, self._on_frame, lambda: self._stopping, "agent")

    def wait_ready(self, timeout: float, alive: Callable[[int], bool]) -> dict[str, str]:
        return wait_for_workers(self.links, timeout, alive)

    def attach(self, link: JoinLink, worker_ids: tuple[int, ...]) -> None:
        """The head welcomed this node: forward from now on."""
        with self.lock:
            self.link = link
            for local, cluster_id in zip(self.links, worker_ids):
                self.global_ids[local.worker_id] = cluster_id
                self.local[cluster_id] = local

    # ---- from the head --------------------------------------------------------------------------------------

    def on_head_message(self, message: object) -> None:
        with self.lock:
            if isinstance(message, Routed):
                link = self.local.get(message.worker_id)
                if link is None:
                    log.warning(
                        "head sent a message for worker %d, which is not on this node",
                        message.worker_id,
                    )
                    return
                link.outgoing.put(message.frame)
            elif isinstance(message, KvPayload):
                self.pending.append(message)
                self._import()
            else:
                log.warning("unexpected %s from the head; ignored", type(message).__name__)

    def on_lost(self) -> None:
        self.lost.set()

    def _import(self) -> None:
        def wanted(payload: KvPayload) -> bool:
            link = self.local.get(payload.worker_id)
            return link is not None and not link.dead

        for payload, handles in store_in_order(
            self.host_kv, self.pending, wanted, lambda p: (p.data, p.block_bytes)
        ):
            self.local[payload.worker_id].send(
                SwapIn(
                    payload.request_id,
                    payload.model,
                    handles,
                    payload.num_tokens,
                    payload.generated,
                    payload.sampler_state,
                    payload.block_bytes,
                    # as the head sent it: the time it waited here for import room is not taken off
                    payload.first_decode_slack,
                )
            )

    # ---- from this node's workers ---------------------------------------------------------------------------

    def _on_frame(self, link: WorkerLink, frame: bytes) -> None:
        message = decode(frame)
        with self.lock:
            self._on_worker_message(link, message, frame)

    def _on_worker_message(self, link: WorkerLink, message: object, frame: bytes) -> None:
        if isinstance(message, WorkerReady):
            link.unavailable = message.unavailable
            link.ready.set()
            return
        if self.link is None:
            return  # not joined yet: nothing to forward to
        cluster_id = self.global_ids[link.worker_id]
        if isinstance(message, SwapOut):
            data = self.host_kv.read(message.host_handles, message.block_bytes)
            link.send(
                KvRelease(message.request_id, message.host_handles)
            )  # the bytes travel; blocks are free
            self._to_head(
                KvPayload(
                    message.request_id,
                    message.model,
                    message.host_handles,
                    message.num_tokens,
                    message.generated,
                    message.sampler_state,
                    message.block_bytes,
                    worker_id=cluster_id,
                    data=data,
                ),
                cluster_id,
            )
        elif isinstance(message, KvRelease):
            if message.host_handles and self.host_kv.owns(message.host_handles[0]):
                self.host_kv.free(message.host_handles)
                self._import()
            self._to_head(Routed(cluster_id, encode(KvRelease(message.request_id, ()))), cluster_id)
        else:
            self._to_head(Routed(cluster_id, frame), cluster_id)

    def _to_head(self, message: object, cluster_id: int) -> None:
        try:
            self.link.send(message)
        except (
            AegaeonError
        ) as err:  # a frame over the link's limit: the request times out at the head
            log.error("worker %d: message to the head dropped: %s", cluster_id, err)

    def worker_died(self, worker_id: int, exitcode: int | None) -> None:
        with self.lock:
            link = next(link for link in self.links if link.worker_id == worker_id)
            if link.dead:
                return
            link.close()
            log.error("worker %d died (exit code %s)", worker_id, exitcode)
            if self.link is not None:
                self.link.send(WorkerGone(self.global_ids[worker_id], exitcode))

    def close(self) -> None:
        self._stopping = True
        for link in self.links:
            link.send(Shutdown("node stopping"))
            link.outgoing.put(None)
        for thread in self._threads:
            thread.join(timeout=2)
