"""The proxy's KV-handoff relay: a prefilled request's KV from its prefill worker to a decode worker.

A local prefill worker's `SwapOut` names blocks in its partition of this node's host KV cache; a local
decode worker gets a `SwapIn` with those handles and releases them once it has the KV. A remote decode
worker gets the bytes (`KvPayload`), and KV arriving from another node is written into this node's import
partition first. The relay counts the handles each prefill partition has out, so a respawned prefill worker
is given groups only once its partition holds nothing a decode worker may still read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aegaeon.errors import AegaeonError
from aegaeon.ipc.messages import KvPayload, KvRelease, SwapIn, SwapOut
from aegaeon.kv.host_partition import HostKvPartition, store_in_order
from aegaeon.serve.links import WorkerLink
from aegaeon.serve.requests import LiveRequest

log = logging.getLogger(__name__)


class KvRelay:
    def __init__(
        self,
        imports: HostKvPartition | None,
        links: Callable[[int], WorkerLink | None],
        first_decode_slack: Callable[[LiveRequest], float | None] = lambda request: None,
    ):
        self.imports, self.links = imports, links
        self.first_decode_slack = first_decode_slack  # what each handoff tells the decode worker
        self.issued: dict[
            int, WorkerLink
        ] = {}  # a local prefill handle still out -> the incarnation that issued it
        self.pending_imports: list[
            KvPayload
        ] = []  # arrived KV waiting for room in the import partition

    def hand_off(
        self,
        swap: SwapOut | KvPayload,
        issuer: WorkerLink,
        request: LiveRequest | None,
        target: WorkerLink | None,
    ) -> str | None:
        """Send a finished prefill on to `target`; returns why it could not go (the request must fail or
        re-run), or None. The host blocks of a request that cannot go are freed."""
        local_blocks = isinstance(swap, SwapOut)
        if local_blocks:
            self._taken(swap.host_handles, issuer)
        if request is None or target is None:
            if local_blocks:
                self.release(KvRelease(swap.request_id, swap.host_handles))
            return None if request is None else "no decode worker is alive"
        target.live[swap.request_id] = swap.model
        target.served += 1
        request.decode_worker = target.worker_id
        fields = (
            swap.request_id,
            swap.model,
            swap.host_handles,
            swap.num_tokens,
            swap.generated,
            swap.sampler_state,
            swap.block_bytes,
        )
        slack = self.first_decode_slack(request)
        if target.remote:
            if local_blocks:  # the bytes travel; this node's blocks are free at once
                data = self.imports.read(swap.host_handles, swap.block_bytes)
                self.release(KvRelease(swap.request_id, swap.host_handles))
            else:
                data = swap.data
            try:
                target.send(request.run)
                target.send(
                    KvPayload(
                        *fields, first_decode_slack=slack, worker_id=target.worker_id, data=data
                    )
                )
            except AegaeonError as err:  # e.g. a KV payload over the link's frame limit
                return (
                    f"request {swap.request_id} could not move to worker {target.worker_id}: {err}"
                )
            return None
        target.send(request.run)
        if local_blocks:
            request.unreleased = swap.host_handles
            target.send(SwapIn(*fields, first_decode_slack=slack))
        else:
            self.pending_imports.append(
                KvPayload(*fields, worker_id=target.worker_id, data=swap.data)
            )
        return None

    def hold(self, swap: SwapOut | KvPayload, issuer: WorkerLink) -> None:
        """A finished prefill waits (no decode worker now): its local blocks count as out."""
        if isinstance(swap, SwapOut):
            self._taken(swap.host_handles, issuer)

    def retry_imports(
        self, wanted: Callable[[KvPayload], bool], requests: Callable[[int], LiveRequest | None]
    ) -> None:
        """Store arrived KV in the import partition, oldest first, while it has room."""
        if self.imports is None:
            return
        for payload, handles in store_in_order(
            self.imports, self.pending_imports, wanted, lambda p: (p.data, p.block_bytes)
        ):
            request = requests(payload.request_id)
            request.unreleased = handles
            self.links(payload.worker_id).send(
                SwapIn(
                    payload.request_id,
                    payload.model,
                    handles,
                    payload.num_tokens,
                    payload.generated,
                    payload.sampler_state,
                    payload.block_bytes,
                    self.first_decode_slack(request),
                )
            )

    def release(self, message: KvRelease) -> None:
        """Return host KV blocks to the prefill worker that issued them (or to the import partition)."""
        if not message.host_handles:
            return
        if self.imports is not None and self.imports.owns(message.host_handles[0]):
            self.imports.free(message.host_handles)
            return
        by_issuer: dict[int, tuple[WorkerLink, list[int]]] = {}
        for handle in message.host_handles:
            issuer = self.issued.pop(handle, None)
            if issuer is not None:
                by_issuer.setdefault(id(issuer), (issuer, []))[1].append(handle)
        for issuer, handles in by_issuer.values():
            if not issuer.dead:  # a dead incarnation's blocks are only counted back in
                issuer.send(KvRelease(message.request_id, tuple(handles)))

    def partition_clear(self, partition: tuple[int, int]) -> bool:
        """Whether no handle of this prefill partition is still held by a decode worker."""
        return not any(link.kv_partition == partition for link in self.issued.values())

    def _taken(self, handles: tuple[int, ...], issuer: WorkerLink) -> None:
        if not issuer.remote:
            self.issued.update((handle, issuer) for handle in handles)
