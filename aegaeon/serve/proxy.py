"""The proxy of a node: routes requests to prefill workers with grouped FCFS,
hands finished prefills to decode workers, and streams tokens back.

It never touches tensors. Each worker has an inbox and an outbox ring; one
thread per outbox turns the worker's messages into state changes under one
lock. Grouped FCFS (`aegaeon.sched.prefill`) decides which prefill worker runs
which group; a prefill worker gets its next group when it reports the last one
done. A decode worker is chosen per request: one already serving that model if
it is not busier than the rest, else the least busy.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from aegaeon.errors import AegaeonError, RequestError
from aegaeon.ipc.messages import (Cancel, KvPayload, KvRelease, Schedule, Shutdown, StepDone, Submit, SwapIn, SwapOut,
                                  Tokens, Trace, WorkerReady, decode, encode)
from aegaeon.ipc.ring import Ring, RingEmptyError, RingFullError
from aegaeon.sched.decode import DEFAULT_MAX_BATCH, choose_decode_instance
from aegaeon.sched.prefill import GroupedFCFS
from aegaeon.sched.request import RequestSpec
from aegaeon.serve.host_kv import HostKvArea, store_arrivals
from aegaeon.serve.telemetry import Telemetry

log = logging.getLogger(__name__)


@dataclass
class RequestState:
    submit: Submit
    arrival: float
    tokens: "queue.Queue[Tokens]" = field(default_factory=queue.Queue)
    listener: Callable[[Tokens], None] | None = None  # set by async front ends instead of reading `tokens`
    prefill_worker: int | None = None
    decode_worker: int | None = None
    unreleased: tuple[int, ...] = ()  # host KV handles handed to a decode worker, not yet released
    done: bool = False

    def deliver(self, message: Tokens) -> None:
        if self.listener is not None:
            self.listener(message)
        else:
            self.tokens.put(message)


@dataclass
class WorkerLink:
    """The proxy's view of one worker: rings on this node, or `transport` to a worker of another node."""

    worker_id: int
    role: str
    inbox: Ring | None
    outbox: Ring | None
    kv_partition: tuple[int, int] = (0, 0)
    ready: threading.Event = field(default_factory=threading.Event)
    unavailable: dict[str, str] = field(default_factory=dict)
    busy: bool = False  # prefill: running a group
    group_tokens: int = 0  # prefill: prompt tokens of the running group
    loaded: str | None = None
    live: dict[int, str] = field(default_factory=dict)  # decode: request id -> model
    served: int = 0  # requests handed to this worker
    switches: int = 0  # model switches it reported
    steps: int = 0
    outgoing: "queue.Queue[bytes | None]" = field(default_factory=queue.Queue)
    dead: bool = False
    transport: Callable[[object], None] | None = None  # a worker of another node: sends over the TCP link
    node: str = "local"  # the name of the node it runs on, for a worker of another node

    @property
    def remote(self) -> bool:
        return self.transport is not None

    def send(self, message: object) -> None:
        """Queue a message; the link's sender thread writes it, so a full ring never blocks the caller."""
        if self.dead:
            return
        if self.transport is not None:
            self.transport(message)
        else:
            self.outgoing.put(encode(message))

    def run_sender(self) -> None:
        while (frame := self.outgoing.get()) is not None:
            while not self.dead:
                try:
                    self.inbox.put(frame, timeout=0.5)
                    break
                except RingFullError:
                    continue  # the worker is behind: keep the frame (back-pressure), unless it died
                except AegaeonError as err:  # never let one bad frame stop the link
                    log.error("worker %d: message dropped: %s", self.worker_id, err)
                    break


def start_link_threads(links: list[WorkerLink], on_frame: Callable[[WorkerLink, bytes], None],
                       stopping: Callable[[], bool], prefix: str) -> list[threading.Thread]:
    """For each worker on this node: a thread reading its outbox into `on_frame` until `stopping()`, and one
    writing its queued messages into its inbox."""
    def read(link: WorkerLink) -> None:
        while not stopping():
            try:
                frame = link.outbox.get(timeout=0.1)
            except RingEmptyError:
                continue
            on_frame(link, frame)

    threads = [threading.Thread(target=read, args=(link,), name=f"{prefix}-read-w{link.worker_id}", daemon=True)
               for link in links]
    threads += [threading.Thread(target=link.run_sender, name=f"{prefix}-send-w{link.worker_id}", daemon=True)
                for link in links]
    for thread in threads:
        thread.start()
    return threads


def wait_for_workers(links: list[WorkerLink], timeout: float,
                     alive: Callable[[int], bool] | None = None) -> dict[str, str]:
    """Wait for every worker's hello; returns the models some worker could not load (name -> why).
    `alive(worker_id)` lets a worker that dies while starting fail the wait at once."""
    deadline = time.monotonic() + timeout
    unavailable: dict[str, str] = {}
    for link in links:
        while not link.ready.wait(0.1):
            if alive is not None and not alive(link.worker_id):
                raise RuntimeError(f"worker {link.worker_id} exited while starting: see its log above")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {link.worker_id} did not start within {timeout} s: see its log")
        unavailable.update(link.unavailable)
    return unavailable


class _PrefillCost:
    """What grouped FCFS needs to compare prefill workers: per-token and switch times, learnt from the
    workers' StepDone reports (moving averages; the starting values only matter until the first group)."""

    def __init__(self) -> None:
        self.per_token = 1e-4
        self.switch = 0.01

    def observe(self, tokens: int, seconds: float, switch_seconds: float) -> None:
        if switch_seconds > 0:
            self.switch = 0.7 * self.switch + 0.3 * switch_seconds
        if tokens > 0:
            self.per_token = 0.7 * self.per_token + 0.3 * max(0.0, seconds - switch_seconds) / tokens

    def prefill_time(self, model: str, input_lens) -> float:
        return self.per_token * sum(input_lens)

    def switch_time(self, from_model: str | None, to_model: str) -> float:
        return 0.0 if from_model == to_model else self.switch


class Proxy:
    """`host_kv` (multi-node clusters) is the head node's host KV cache with its import partition: KV that
    arrives from other nodes is stored there for local decode workers. Without it every worker is local,
    and the node needs prefill and decode workers of its own."""

    def __init__(self, links: list[WorkerLink], max_group_size: int = 8, host_kv: HostKvArea | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH):
        self.links = {link.worker_id: link for link in links}
        self.max_batch = max_batch  # the decode workers' batch limit: placement keeps a model's batch within it
        self.prefill = [link for link in links if link.role == "prefill"]
        self.decode = [link for link in links if link.role == "decode"]
        self.host_kv = host_kv
        self.pending_imports: list[KvPayload] = []  # arrived KV waiting for room in the import partition
        if host_kv is None and (not self.prefill or not self.decode):
            raise RequestError("a node needs at least one prefill and one decode worker")
        self.grouped = GroupedFCFS(len(self.prefill), max_group_size)
        # every node's rings have the same slots, so a Submit that fits here fits a joined node's too
        self.max_message_bytes = min(link.inbox.max_message_bytes for link in links)
        self.cost = _PrefillCost()
        self.requests: dict[int, RequestState] = {}
        self.telemetry = Telemetry()
        self.lock = threading.Lock()
        self._next_id = 0
        self.cancelled = 0
        self._stopping = False
        self._threads = start_link_threads(links, self._on_frame, lambda: self._stopping, "proxy")

    def add_remote_links(self, links: list[WorkerLink]) -> None:
        """Workers of a node that joined over the TCP link (their messages come in through `deliver`)."""
        with self.lock:
            for link in links:
                link.ready.set()
                self.links[link.worker_id] = link
                if link.role == "prefill":
                    self.prefill.append(link)
                    self.grouped.add_instance()
                    self._dispatch_prefill(len(self.prefill) - 1)
                else:
                    self.decode.append(link)

    def deliver(self, worker_id: int, message: object) -> None:
        """A message of a remote worker, from the TCP link."""
        with self.lock:
            link = self.links.get(worker_id)
            if link is not None and link.remote and not link.dead:
                self._on_message(link, message)

    # ---- requests ---------------------------------------------------------------------------------------------

    def wait_ready(self, timeout: float, alive: Callable[[int], bool] | None = None) -> dict[str, str]:
        return wait_for_workers(list(self.links.values()), timeout, alive)

    def submit(self, model: str, prompt_ids: list[int], max_tokens: int = 16, temperature: float = 0.0,
               top_p: float = 1.0, seed: int | None = None, ignore_eos: bool = False) -> RequestState:
        with self.lock:
            if self._stopping:
                raise RequestError("the node is shutting down")
            request_id = self._next_id
            self._next_id += 1
            submit = Submit(request_id, model, tuple(prompt_ids), max_tokens, temperature, top_p, seed, ignore_eos)
            frame = len(encode(submit))
            limit = self.max_message_bytes
            if frame > limit:
                raise RequestError(f"model {model}: a prompt of {len(prompt_ids)} tokens makes a {frame}-byte message, "
                                   f"over the {limit}-byte ring slot: start the node with larger ring slots")
            state = RequestState(submit, time.monotonic())
            self.requests[request_id] = state
            if all(w.dead for w in self.prefill):
                del self.requests[request_id]
                raise RequestError("no prefill worker is alive: restart the node")
            spec = RequestSpec(request_id, model, state.arrival, len(prompt_ids), max_tokens)
            busy = [float("inf") if w.dead else 0.0 for w in self.prefill]  # a dead instance never wins
            index = self.grouped.submit(spec, busy, [w.loaded for w in self.prefill], state.arrival, self.cost).instance
            state.prefill_worker = self.prefill[index].worker_id
            self._dispatch_prefill(index)
        return state

    def _dispatch_prefill(self, index: int) -> None:
        link = self.prefill[index]
        if link.busy:
            return
        group = self.grouped.next_group(index)
        if group is None:
            return
        link.busy, link.loaded = True, group.model
        link.group_tokens = sum(r.input_len for r in group.requests)
        ids = tuple(r.request_id for r in group.requests)
        for request_id in ids:
            link.send(self.requests[request_id].submit)
        link.send(Schedule(group.model, ids, 0.0))

    # ---- worker messages ----------------------------------------------------------------------------------

    def _on_frame(self, link: WorkerLink, frame: bytes) -> None:
        message = decode(frame)
        with self.lock:
            self._on_message(link, message)

    def _on_message(self, link: WorkerLink, message: object) -> None:
        if isinstance(message, WorkerReady):
            link.unavailable = message.unavailable
            link.ready.set()
        elif isinstance(message, Tokens):
            self._on_tokens(link, message)
        elif isinstance(message, Trace):  # a joined node's worker knows only its local id
            self.telemetry.record(replace(message, worker_id=link.worker_id))
        elif isinstance(message, (SwapOut, KvPayload)):
            self._hand_to_decode(message)
        elif isinstance(message, KvRelease):
            state = self.requests.get(message.request_id)
            if state is not None:
                state.unreleased = ()
            self._release(message)
        elif isinstance(message, StepDone):
            link.steps += message.steps
            link.switches += message.switch_seconds > 0
            if link.role == "prefill":
                self.cost.observe(link.group_tokens, message.seconds, message.switch_seconds)
                link.busy = False
                self._dispatch_prefill(self.prefill.index(link))

    def _release(self, message: KvRelease) -> None:
        """Return host KV blocks to the prefill worker whose partition holds them (or to the import partition)."""
        if not message.host_handles:
            return
        if self.host_kv is not None and self.host_kv.owns(message.host_handles[0]):
            self.host_kv.free(message.host_handles)
            self._retry_imports()
            return
        owner = self._owner_of(message.host_handles[0])
        if owner is not None:
            owner.send(message)

    def _owner_of(self, handle: int) -> WorkerLink | None:
        for link in self.prefill:
            if link.remote:
                continue
            start, end = link.kv_partition
            if start <= handle < end:
                return link
        return None

    def _on_tokens(self, link: WorkerLink, message: Tokens) -> None:
        state = self.requests.get(message.request_id)
        if state is None:
            return
        state.deliver(message)
        if message.finish_reason is not None or message.error is not None:
            state.done = True
            link.live.pop(message.request_id, None)
            del self.requests[message.request_id]

    def _hand_to_decode(self, swap: SwapOut | KvPayload) -> None:
        """Route a finished prefill to a decode worker. Its KV is either in this node's host KV cache (SwapOut)
        or in the message (KvPayload, from another node); a remote decode worker gets the bytes, a local one
        handles into this node's host KV cache."""
        state = self.requests.get(swap.request_id)
        target = self._pick_decode(swap.model)
        local_blocks = isinstance(swap, SwapOut)
        if state is None or target is None:  # cancelled meanwhile, or nowhere to go: free the host blocks
            if local_blocks:
                self._release(KvRelease(swap.request_id, swap.host_handles))
            if state is not None:
                self._fail(state, "no decode worker is alive: the request cannot continue")
            return
        target.live[swap.request_id] = swap.model
        target.served += 1
        state.decode_worker = target.worker_id
        fields = (swap.request_id, swap.model, swap.host_handles, swap.num_tokens, swap.generated,
                  swap.sampler_state, swap.block_bytes)
        if target.remote:
            if local_blocks:  # the bytes travel; this node's blocks are free at once
                data = self.host_kv.read(swap.host_handles, swap.block_bytes)
                self._release(KvRelease(swap.request_id, swap.host_handles))
            else:
                data = swap.data
            self._send_or_fail(target, state, state.submit)
            self._send_or_fail(target, state, KvPayload(*fields, worker_id=target.worker_id, data=data))
            return
        target.send(state.submit)
        if local_blocks:
            state.unreleased = swap.host_handles
            target.send(SwapIn(*fields))
        else:
            self.pending_imports.append(KvPayload(*fields, worker_id=target.worker_id, data=swap.data))
            self._retry_imports()

    def _retry_imports(self) -> None:
        """Store arrived KV in the import partition, oldest first, while it has room."""
        def wanted(payload: KvPayload) -> bool:
            return payload.request_id in self.requests and not self.links[payload.worker_id].dead

        for payload, swap_in in store_arrivals(self.host_kv, self.pending_imports, wanted):
            self.requests[payload.request_id].unreleased = swap_in.host_handles
            self.links[payload.worker_id].send(swap_in)

    def _send_or_fail(self, link: WorkerLink, state: RequestState, message: object) -> None:
        try:
            link.send(message)
        except AegaeonError as err:  # e.g. a KV payload over the link's frame limit
            self._fail(state, f"request {state.submit.request_id} could not move to worker {link.worker_id}: {err}")

    def _pick_decode(self, model: str) -> WorkerLink | None:
        alive = [w for w in self.decode if not w.dead]
        if not alive:
            return None
        return alive[choose_decode_instance(model, [Counter(w.live.values()) for w in alive], self.max_batch)]

    def listen(self, state: RequestState, listener: Callable[[Tokens], None]) -> None:
        """Route the request's token messages to `listener` (called on a proxy thread), oldest first."""
        with self.lock:
            while not state.tokens.empty():
                listener(state.tokens.get_nowait())
            state.listener = listener

    def cancel(self, request_id: int) -> None:
        """The client is gone: stop the request wherever it is and free its KV (host and device)."""
        with self.lock:
            state = self.requests.pop(request_id, None)
            if state is None or state.done:
                return
            state.done = True
            self.cancelled += 1
            worker = state.decode_worker if state.decode_worker is not None else state.prefill_worker
            if worker is not None:
                self.links[worker].send(Cancel(request_id))
                self.links[worker].live.pop(request_id, None)
            log.info("request %d cancelled by its client", request_id)

    def _fail(self, state: RequestState, reason: str) -> None:
        state.deliver(Tokens(state.submit.request_id, (), (), None, reason, unavailable=True))
        state.done = True
        self.requests.pop(state.submit.request_id, None)

    def worker_died(self, worker_id: int, exitcode: int | None, cause: str | None = None) -> None:
        """Fail the requests a dead worker held (they are not re-run) and stop routing to it."""
        with self.lock:
            link = self.links[worker_id]
            if link.dead:
                return
            link.dead = True
            link.outgoing.put(None)
            cause = cause or f"died with exit code {exitcode}"
            reason = f"worker {worker_id} ({link.role}) {cause}; the request was lost: submit it again"
            log.error("worker %d (%s) %s", worker_id, link.role, cause)
            for state in list(self.requests.values()):
                mine = state.decode_worker == worker_id if link.role == "decode" else (
                    state.prefill_worker == worker_id and state.decode_worker is None)
                if not mine:
                    continue
                if state.unreleased:
                    self._release(KvRelease(state.submit.request_id, state.unreleased))
                self._fail(state, reason)
            link.live.clear()
            if link.role == "prefill":
                self.grouped.queues[self.prefill.index(link)].clear()

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
