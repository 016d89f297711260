"""What the proxy does for the requests of a lost worker: run them again, or park them until their role has a
worker again, and fail them (503) only after the grace period.

A request runs again from what its client has seen (`LiveRequest.next_run`: prompt plus streamed tokens,
re-prefilled, then continued). A request that keeps killing workers must not run forever, but the innocent
ones it shared a worker with must not pay for it: a loss is charged only to the requests the dead worker was
computing (`suspects`), and a request charged more than `max_reruns` times fails. A replacement prefill worker gets groups only once no decode worker may still read its partition's
blocks (they were its predecessor's; its own allocator starts empty).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aegaeon.config.serving import RecoveryConfig
from aegaeon.ipc.messages import KvPayload, KvRelease, SwapOut
from aegaeon.serve.handoff import KvRelay
from aegaeon.serve.links import WorkerLink
from aegaeon.serve.requests import LiveRequest, RequestTable
from aegaeon.serve.router import Router


@dataclass
class _Parked:
    """Work waiting for a role to come back: a request to prefill, or a finished prefill to decode."""

    request: LiveRequest
    since: float
    swap: SwapOut | KvPayload | None = None
    issuer: WorkerLink | None = None


def suspects(held: list[LiveRequest], role: str, turn_model: str | None) -> set[int]:
    """The ids of the requests among `held` that a lost worker was computing when it died: a prefill
    worker's group (every request it was sent), a decode worker's current turn's batch (the requests of
    `turn_model`), or everything a decode worker held when it died between turns (while it admitted them)."""
    if role == "decode" and turn_model is not None:
        return {r.request_id for r in held if r.model == turn_model}
    return {r.request_id for r in held}


class Recovery:
    def __init__(
        self,
        config: RecoveryConfig,
        table: RequestTable,
        router: Router,
        relay: KvRelay,
        clock: Callable[[], float],
    ):
        self.config, self.table, self.router, self.relay, self.clock = (
            config,
            table,
            router,
            relay,
            clock,
        )
        self.parked: list[_Parked] = []
        self.respawned_prefill: list[
            tuple[WorkerLink, WorkerLink]
        ] = []  # (lost, replacement) not yet in use

    def rerun(self, request: LiveRequest, reason: str, charged: bool = True) -> None:
        """The worker holding `request` is gone: run it again, park it, or fail it when it has been among
        the suspects (`charged`) of more than `max_reruns` losses."""
        request.prefill_worker = request.decode_worker = None
        request.unreleased = ()
        if charged and request.suspected >= self.config.max_reruns:
            self.table.fail(
                request,
                f"{reason}; the request was being computed by {request.suspected + 1} "
                f"workers that died, so it is not run again: submit it again if it should be",
            )
            return
        request.suspected += charged
        request.reruns += 1
        self.table.rerun += 1
        if self.router.prefill_alive:
            self.router.dispatch(request)
        else:
            self.parked.append(_Parked(request, self.clock()))

    def park_handoff(
        self, request: LiveRequest, swap: SwapOut | KvPayload, issuer: WorkerLink
    ) -> bool:
        """A finished prefill with no decode worker alive waits for one (its blocks stay in host memory);
        False when the node does not wait (no grace period)."""
        if self.config.recovery_grace <= 0:
            return False
        self.relay.hold(swap, issuer)
        self.parked.append(_Parked(request, self.clock(), swap, issuer))
        return True

    def prefill_replaced(self, lost: WorkerLink, replacement: WorkerLink) -> None:
        self.respawned_prefill.append((lost, replacement))
        self.activate_replacements()

    def activate_replacements(self) -> None:
        for lost, new in list(self.respawned_prefill):
            if new.dead:
                self.respawned_prefill.remove((lost, new))
            elif self.relay.partition_clear(new.kv_partition):
                self.respawned_prefill.remove((lost, new))
                self.router.prefill_back(lost, new)
                self.unpark()

    def unpark(self) -> None:
        """Send on the parked work whose role has a worker again."""
        parked, self.parked = self.parked, []
        for item in parked:
            if item.request.done:
                self._drop(item)
            elif item.swap is None and self.router.prefill_alive:
                self.router.dispatch(item.request)
            elif (
                item.swap is not None
                and (target := self.router.pick_decode(item.request.model)) is not None
            ):
                problem = self.relay.hand_off(item.swap, item.issuer, item.request, target)
                if problem is not None:
                    self.table.fail(item.request, problem)
            else:
                self.parked.append(item)

    def forget(self, request: LiveRequest) -> None:
        """The request was cancelled: drop its parked work (and free its host blocks)."""
        for item in [p for p in self.parked if p.request is request]:
            self.parked.remove(item)
            self._drop(item)

    def expire(self) -> None:
        """Fail the parked work whose role has had no worker for longer than the grace period."""
        self.unpark()
        now, kept = self.clock(), []
        for item in self.parked:
            if now - item.since <= self.config.recovery_grace:
                kept.append(item)
                continue
            role = "prefill" if item.swap is None else "decode"
            self._drop(item)
            self.table.fail(
                item.request,
                f"no {role} worker has been alive for {self.config.recovery_grace:g} s: "
                f"the request cannot continue",
            )
        self.parked = kept

    def _drop(self, item: _Parked) -> None:
        if isinstance(item.swap, SwapOut):
            self.relay.release(KvRelease(item.request.request_id, item.swap.host_handles))
