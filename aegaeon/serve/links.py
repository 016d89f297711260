"""A node's view of its workers' message links: rings on this node, or a transport to a joined node.

The proxy (head node) and the agent (joining node) both read their local workers' outboxes on one thread
per worker and write their inboxes from a queue on another, so a full ring never blocks the caller.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aegaeon.errors import AegaeonError
from aegaeon.ipc.messages import encode
from aegaeon.ipc.ring import Ring, RingEmptyError, RingFullError

log = logging.getLogger(__name__)


@dataclass
class WorkerLink:
    """One worker (one incarnation of it: a respawned worker gets a new link)."""

    worker_id: int
    role: str
    inbox: Ring | None
    outbox: Ring | None
    kv_partition: tuple[int, int] = (0, 0)
    ready: threading.Event = field(default_factory=threading.Event)
    unavailable: dict[str, str] = field(default_factory=dict)
    live: dict[int, str] = field(default_factory=dict)  # decode: request id -> model
    served: int = 0  # requests handed to this worker
    switches: int = 0  # model switches it reported
    steps: int = 0
    turn_model: str | None = (
        None  # decode: the model of the turn under way (TurnStarted .. StepDone)
    )
    outgoing: "queue.Queue[bytes | None]" = field(default_factory=queue.Queue)
    dead: bool = False
    transport: Callable[[object], None] | None = (
        None  # a worker of another node: sends over the TCP link
    )
    node: str = "local"  # the name of the node it runs on, for a worker of another node
    generation: int = 0  # how many times this worker id was respawned

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

    def close(self) -> None:
        """Stop the link's threads (the worker is gone or the node stops)."""
        self.dead = True
        self.outgoing.put(None)


def start_link_threads(
    links: list[WorkerLink],
    on_frame: Callable[[WorkerLink, bytes], None],
    stopping: Callable[[], bool],
    prefix: str,
) -> list[threading.Thread]:
    """For each worker on this node: a thread reading its outbox into `on_frame` until `stopping()` or the link
    dies, and one writing its queued messages into its inbox."""

    def read(link: WorkerLink) -> None:
        while not stopping() and not link.dead:
            try:
                frame = link.outbox.get(timeout=0.1)
            except RingEmptyError:
                continue
            try:
                on_frame(link, frame)
            except Exception:  # one bad frame never stops the link
                log.exception("worker %d: a message could not be handled", link.worker_id)

    threads = [
        threading.Thread(
            target=read, args=(link,), name=f"{prefix}-read-w{link.worker_id}", daemon=True
        )
        for link in links
    ]
    threads += [
        threading.Thread(
            target=link.run_sender, name=f"{prefix}-send-w{link.worker_id}", daemon=True
        )
        for link in links
    ]
    for thread in threads:
        thread.start()
    return threads


def wait_for_workers(
    links: list[WorkerLink], timeout: float, alive: Callable[[int], bool] | None = None
) -> dict[str, str]:
    """Wait for every worker's hello; returns the models some worker could not load (name -> why).
    `alive(worker_id)` lets a worker that dies while starting fail the wait at once."""
    deadline = time.monotonic() + timeout
    unavailable: dict[str, str] = {}
    for link in links:
        while not link.ready.wait(0.1):
            if alive is not None and not alive(link.worker_id):
                raise RuntimeError(
                    f"worker {link.worker_id} exited while starting: see its log above"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"worker {link.worker_id} did not start within {timeout} s: see its log"
                )
        unavailable.update(link.unavailable)
    return unavailable
