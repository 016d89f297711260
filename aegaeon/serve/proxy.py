"""Longer than 300 lines because every method reads and changes the same request, worker and recovery
state under the one lock, and the parts that stand alone already live in router, handoff, recovery,
requests, links and telemetry.

The proxy of a node: admits requests, routes them (`router`), relays KV handoffs (`handoff`), streams
tokens back, and recovers from lost workers.

It never touches tensors. One thread per local worker turns that worker's messages into state changes under
one lock. When a worker is lost, the requests it held run again from what their clients have already seen
(prompt plus streamed tokens: re-prefill, then continue) on the workers left or on its replacement; a request
fails (503) only when its role has had no worker for `recovery_grace` seconds, or when it was already run
`max_reruns` times (a request that keeps killing workers is not run forever).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from aegaeon.config.serving import AdmissionLimits, RecoveryConfig
from aegaeon.errors import RequestError
from aegaeon.ipc.events import EVENT_TYPES, Event
from aegaeon.ipc.messages import (
    AddModel,
    Cancel,
    KvPayload,
    KvRelease,
    ModelChanged,
    RemoveModel,
    Shutdown,
    StepDone,
    Submit,
    SwapOut,
    Tokens,
    TurnStarted,
    WorkerReady,
    decode,
    encode,
)
from aegaeon.kv.host_partition import HostKvPartition
from aegaeon.sched.decode import DEFAULT_MAX_BATCH
from aegaeon.sched.slo import SLO, next_token_deadline
from aegaeon.serve.handoff import KvRelay
from aegaeon.serve.links import WorkerLink, start_link_threads, wait_for_workers
from aegaeon.serve.model_changes import ModelChangeWaiter
from aegaeon.serve.recovery import Recovery, suspects
from aegaeon.serve.requests import LiveRequest, RequestTable
from aegaeon.serve.router import Router
from aegaeon.serve.telemetry import Telemetry

log = logging.getLogger(__name__)

SAMPLING_EXTRAS = frozenset(
    {
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "min_tokens",
        "stop_token_ids",
        "logprobs",
        "prompt_logprobs",
    }
)


class UnavailableError(RequestError):
    """The cluster cannot take the request now (no worker of a role is alive): HTTP 503."""


class Proxy:
    """`imports` (multi-node clusters) is the head node's import partition of its host KV cache: KV that
    arrives from other nodes is stored there for local decode workers. Without it every worker is local, and
    the node needs prefill and decode workers of its own."""

    def __init__(
        self,
        links: list[WorkerLink],
        max_group_size: int = 8,
        imports: HostKvPartition | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        limits: AdmissionLimits = AdmissionLimits(),
        recovery: RecoveryConfig = RecoveryConfig(),
        clock: Callable[[], float] = time.monotonic,
        prefetch: bool = False,
        slo: SLO | None = None,
    ):
        self.links = {link.worker_id: link for link in links}
        if imports is None and not (
            any(w.role == "prefill" for w in links) and any(w.role == "decode" for w in links)
        ):
            raise RequestError("a node needs at least one prefill and one decode worker")
        self.table = RequestTable(limits)
        self.router = Router(
            [w for w in links if w.role == "prefill"],
            [w for w in links if w.role == "decode"],
            self.table.get,
            clock,
            max_group_size,
            max_batch,
            prefetch=prefetch,
        )
        self.slo = slo  # with it, handoffs say when a request's first decode token is due
        self.relay = KvRelay(imports, self.links.get, self._first_decode_slack)
        self.clock = clock
        self.recovery = Recovery(recovery, self.table, self.router, self.relay, clock)
        # every node's rings have the same slots, so a Submit that fits here fits a joined node's too
        self.max_message_bytes = min(link.inbox.max_message_bytes for link in links)
        self.telemetry = Telemetry()
        self.lock = threading.RLock()
        self.restarts = 0
        self._stopping = False
        self.model_changes = ModelChangeWaiter()
        self.closed_models: set[str] = set()  # being removed: no new requests
        self._threads = start_link_threads(links, self._on_frame, lambda: self._stopping, "proxy")
        self._handlers = {
            WorkerReady: self._on_ready,
            Tokens: self._on_tokens,
            **{event: self._on_event for event in EVENT_TYPES},
            SwapOut: self._on_handoff,
            KvPayload: self._on_handoff,
            KvRelease: self._on_release,
            StepDone: self._on_step_done,
            TurnStarted: self._on_turn_started,
            ModelChanged: self._on_model_changed,
        }

    @property
    def requests(self) -> dict[int, LiveRequest]:
        return self.table.requests

    @property
    def cancelled(self) -> int:
        return self.table.cancelled

    def request_counts(self) -> dict[str, tuple[int, int]]:
        """Per model: (requests being decoded, requests admitted and not yet handed to a decode worker)."""
        counts: dict[str, list[int]] = {}
        with self.lock:
            for request in self.table.requests.values():
                entry = counts.setdefault(request.model, [0, 0])
                entry[0 if request.decode_worker is not None else 1] += 1
        return {model: (decoding, queued) for model, (decoding, queued) in counts.items()}

    @property
    def prefill(self) -> list[WorkerLink]:
        return self.router.prefill

    @property
    def decode(self) -> list[WorkerLink]:
        return self.router.decode

    # ---- requests -----------------------------------------------------------------------------------------

    def wait_ready(
        self, timeout: float, alive: Callable[[int], bool] | None = None
    ) -> dict[str, str]:
        return wait_for_workers(list(self.links.values()), timeout, alive)

    def submit(
        self,
        model: str,
        prompt_ids: list[int],
        max_tokens: int = 16,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        ignore_eos: bool = False,
        top_k: int = 0,
        min_p: float = 0.0,
        **extras,
    ) -> LiveRequest:
        """Admit and route a request. OverloadedError beyond the admission limits (429), UnavailableError when
        no prefill worker is alive (503), RequestError when the request cannot be sent at all. `extras`: any of
        Submit's SAMPLING_EXTRAS (penalties, min_tokens, stop_token_ids, logprobs)."""
        unknown = set(extras) - SAMPLING_EXTRAS
        if unknown:
            raise TypeError(f"Proxy.submit() got unknown sampling fields {sorted(unknown)}")
        if "stop_token_ids" in extras:
            extras["stop_token_ids"] = tuple(extras["stop_token_ids"])
        fields = dict(
            model=model,
            prompt_ids=tuple(prompt_ids),
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            ignore_eos=ignore_eos,
            top_k=top_k,
            min_p=min_p,
            **extras,
        )
        with self.lock:
            if self._stopping:
                raise UnavailableError("the node is shutting down")
            if model in self.closed_models:
                raise RequestError(f"model {model} is being removed from the node")
            if not self.router.prefill_alive:
                raise UnavailableError(
                    "no prefill worker is alive: the node cannot serve now, retry later"
                )
            frame = len(encode(Submit(0, **fields)))
            if frame > self.max_message_bytes:
                raise RequestError(
                    f"model {model}: a prompt of {len(prompt_ids)} tokens makes a {frame}-byte "
                    f"message, over the {self.max_message_bytes}-byte ring slot: start the node "
                    f"with larger ring slots"
                )
            request = self.table.admit(fields, self.clock())
            self.router.dispatch(request)
        return request

    def listen(self, request: LiveRequest, listener: Callable[[Tokens], None]) -> None:
        """Route the request's token messages to `listener` (called on a proxy thread), oldest first."""
        with self.lock:
            while not request.tokens.empty():
                listener(request.tokens.get_nowait())
            request.listener = listener

    def cancel(self, request_id: int, by_client: bool = True) -> None:
        """Stop the request wherever it is and free its KV (host and device): its client is gone, or (not
        `by_client`) the API has what it needs (a stop string) or gives the request up (a timeout, a
        refused sibling choice)."""
        with self.lock:
            request = self.table.get(request_id)
            if request is None or request.done:
                return
            self.table.end(request)
            self.table.cancelled += by_client
            for worker_id in {request.prefill_worker, request.decode_worker} - {None}:
                link = self.links[worker_id]
                link.send(Cancel(request_id))
                link.live.pop(request_id, None)
            self.recovery.forget(request)
            log.info("request %d cancelled%s", request_id, " by its client" if by_client else "")

    # ---- worker messages ----------------------------------------------------------------------------------

    def _on_frame(self, link: WorkerLink, frame: bytes) -> None:
        message = decode(frame)
        with self.lock:
            self._on_message(link, message)

    def deliver(self, worker_id: int, message: object) -> None:
        """A message of a remote worker, from the TCP link."""
        with self.lock:
            link = self.links.get(worker_id)
            if link is not None and link.remote:
                self._on_message(link, message)

    def _on_message(self, link: WorkerLink, message: object) -> None:
        if link.dead:
            return  # a lost incarnation's late messages: its requests run again elsewhere
        handler = self._handlers.get(type(message))
        if handler is None:
            log.warning(
                "worker %d sent an unexpected %s; ignored", link.worker_id, type(message).__name__
            )
        else:
            handler(link, message)

    def _on_ready(self, link: WorkerLink, message: WorkerReady) -> None:
        link.unavailable = message.unavailable
        link.ready.set()

    def _on_event(self, link: WorkerLink, event: Event) -> None:
        # a joined node's worker knows only its local id: the proxy's id for it is the link's
        self.telemetry.record(replace(event, worker_id=link.worker_id))

    def _on_tokens(self, link: WorkerLink, message: Tokens) -> None:
        request = self.table.get(message.request_id)
        if request is None or link.worker_id not in (request.prefill_worker, request.decode_worker):
            return
        if (
            self.slo is not None
            and request.first_decode_due is None
            and message.token_ids
            and link.worker_id == request.prefill_worker
        ):
            request.first_decode_due = next_token_deadline(
                request.arrival, [self.clock()], self.slo
            )
        request.deliver(message)
        if message.finish_reason is not None or message.error is not None:
            link.live.pop(message.request_id, None)
            self.table.end(request)

    def _first_decode_slack(self, request: LiveRequest) -> float | None:
        """Seconds from now until `request`'s first decode token is due (None: not known)."""
        if request.first_decode_due is None:
            return None
        return request.first_decode_due - self.clock()

    def _on_handoff(self, link: WorkerLink, message: SwapOut | KvPayload) -> None:
        request = self.table.get(message.request_id)
        target = self.router.pick_decode(message.model)
        if (
            request is not None
            and target is None
            and self.recovery.park_handoff(request, message, link)
        ):
            return
        problem = self.relay.hand_off(message, link, request, target)
        if problem is not None and request is not None:
            self.table.fail(request, problem)
        self._retry_imports()

    def _on_release(self, link: WorkerLink, message: KvRelease) -> None:
        request = self.table.get(message.request_id)
        if request is not None:
            request.unreleased = ()
        self.relay.release(message)
        self._retry_imports()
        self.recovery.activate_replacements()

    def _on_turn_started(self, link: WorkerLink, message: TurnStarted) -> None:
        link.turn_model = message.model

    def _on_step_done(self, link: WorkerLink, message: StepDone) -> None:
        link.turn_model = None
        link.steps += message.steps
        link.switches += message.switch_seconds > 0
        if link.role == "prefill":
            self.router.group_done(link, message)

    def _on_model_changed(self, link: WorkerLink, message: ModelChanged) -> None:
        self.model_changes.answered(link.worker_id, message.name, message.added, message.error)

    # ---- models added and removed at run time ---------------------------------------------------------

    def change_model(
        self, message: AddModel | RemoveModel, timeout: float
    ) -> tuple[dict[int, str], set[int]]:
        """Send the change to every live worker and wait for their answers: (errors by worker id, workers
        that did not answer in time). Only a node whose workers are all its own changes models."""
        self.begin_model_change(message)
        return self.model_changes.wait(timeout)

    def begin_model_change(self, message: AddModel | RemoveModel) -> None:
        """The sending half of `change_model` (its caller then waits with `model_changes.wait`)."""
        with self.lock:
            targets = [link for link in self.links.values() if not link.dead]
            if any(link.remote for link in targets):
                raise RequestError(
                    "models cannot be added or removed at run time on a multi-node cluster yet: "
                    "restart the nodes with the new --models"
                )
            self.model_changes.expect(
                message.name, isinstance(message, AddModel), {link.worker_id for link in targets}
            )
            for link in targets:
                link.send(message)

    def close_model(self, model: str, closed: bool = True) -> None:
        """Refuse new requests of `model` (it is being removed), or take them again."""
        with self.lock:
            (self.closed_models.add if closed else self.closed_models.discard)(model)

    def in_flight(self, model: str) -> int:
        with self.lock:
            return self.table.per_model.get(model, 0)

    def fail_model(self, model: str, reason: str) -> int:
        """End every request of `model` with `reason` (503 to its client), freeing it on the workers."""
        with self.lock:
            doomed = [r for r in self.table.requests.values() if r.model == model]
            for request in doomed:
                for worker_id in {request.prefill_worker, request.decode_worker} - {None}:
                    link = self.links[worker_id]
                    link.send(Cancel(request.request_id))
                    link.live.pop(request.request_id, None)
                self.recovery.forget(request)
                self.table.fail(request, reason)
            return len(doomed)

    def _retry_imports(self) -> None:
        def wanted(payload: KvPayload) -> bool:
            link = self.links.get(payload.worker_id)
            return payload.request_id in self.table.requests and link is not None and not link.dead

        self.relay.retry_imports(wanted, self.table.get)

    # ---- workers lost and back ----------------------------------------------------------------------------

    def worker_died(self, worker_id: int, exitcode: int | None, cause: str | None = None) -> None:
        """Stop routing to a lost worker and run the requests it held again elsewhere (or park them until its
        role has a worker again)."""
        with self.lock:
            link = self.links[worker_id]
            if link.dead:
                return
            link.close()
            self.model_changes.worker_gone(worker_id)
            cause = cause or f"died with exit code {exitcode}"
            log.error("worker %d (%s) %s", worker_id, link.role, cause)
            held = self.table.held_by(worker_id, link.role)
            blamed = suspects(held, link.role, link.turn_model)
            if link.role == "prefill":  # queued for it, never sent: not suspects
                queued = self.router.prefill_lost(link)
                held += [r for r in map(self.table.get, queued) if r is not None and r not in held]
            link.live.clear()
            for request in held:
                if request.unreleased:
                    self.relay.release(KvRelease(request.request_id, request.unreleased))
                self.recovery.rerun(
                    request,
                    f"worker {worker_id} ({link.role}) {cause}",
                    charged=request.request_id in blamed,
                )

    def worker_back(self, new: WorkerLink) -> None:
        """A replacement for a lost local worker (same id, role and partition) has started."""
        with self.lock:
            old = self.links[new.worker_id]
            self.links[new.worker_id] = new
            self.restarts += 1
            self._threads += start_link_threads(
                [new], self._on_frame, lambda: self._stopping, "proxy"
            )
            if new.role == "decode":
                self.router.decode_back(old, new)
            else:
                self.recovery.prefill_replaced(old, new)
            self.recovery.unpark()

    def expire(self) -> None:
        """Fail parked work past its grace period (the node's supervisor calls this now and then)."""
        with self.lock:
            self.recovery.expire()

    def health(self) -> tuple[bool, str, dict]:
        """(serving, why not, details): serving needs a live worker of each role and a node not stopping."""
        with self.lock:
            alive = [link for link in self.links.values() if not link.dead]
            workers = {
                role: sum(link.role == role for link in alive) for role in ("prefill", "decode")
            }
            details = {
                "workers": workers,
                "remote_workers": sum(link.remote for link in alive),
                "requests": len(self.table),
                "parked": len(self.recovery.parked),
                "restarts": self.restarts,
                "rerun": self.table.rerun,
            }
            if self._stopping:
                return False, "the node is shutting down", details
            missing = [
                role
                for role, n in workers.items()
                if n == 0 or (role == "prefill" and not self.router.prefill_alive)
            ]
            if missing:
                return False, f"no {' or '.join(missing)} worker is alive", details
            return True, "", details

    # ---- nodes that join --------------------------------------------------------------------------------

    def add_remote_links(self, links: list[WorkerLink]) -> None:
        """Workers of a node that joined over the TCP link (their messages come in through `deliver`)."""
        with self.lock:
            for link in links:
                link.ready.set()
                self.links[link.worker_id] = link
                (self.router.add_prefill if link.role == "prefill" else self.router.add_decode)(
                    link
                )
            self.recovery.unpark()

    def close(self) -> None:
        with self.lock:
            self._stopping = True
        for link in self.links.values():
            if link.remote:
                continue  # a joined node stops on its own (its launcher), or when it loses the head
            link.send(Shutdown("node stopping"))
            link.outgoing.put(None)
        for thread in self._threads:
            thread.join(timeout=2)
