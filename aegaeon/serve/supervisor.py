"""The node's supervisor: notices worker processes that exit, tells the proxy, and starts replacements.

A lost worker is replaced with the same id, role, device and host KV partition after a back-off that
doubles from `RestartPolicy.backoff` up to `max_backoff`; after `max_restarts` replacements of one worker id
it stays down (the proxy then fails the work of a role left without workers once its grace period ends).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from aegaeon.config.serving import RestartPolicy

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1


class Supervisor:
    def __init__(
        self,
        processes: list,
        on_lost: Callable[[int, int | None], None],
        respawn: Callable[[int, int], None] | None,
        policy: RestartPolicy = RestartPolicy(),
        on_tick: Callable[[], None] | None = None,
    ):
        """`processes[i]` is worker i's process (replaced in place by `respawn(i, generation)`); without
        `respawn`, lost workers are only reported."""
        self.processes, self.on_lost, self.respawn, self.policy = (
            processes,
            on_lost,
            respawn,
            policy,
        )
        self.on_tick = on_tick
        self.restarts: dict[int, int] = {}
        self.due: dict[int, float] = {}  # worker id -> when its replacement starts
        self.reported: dict[int, object] = {}  # worker id -> the process last reported lost
        self._running = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._run, name="node-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while self._running:
            try:
                self.check(time.monotonic())
            except Exception:  # the supervisor itself must never stop watching
                log.exception("supervisor check failed")
            time.sleep(POLL_SECONDS)

    def check(self, now: float) -> None:
        for worker_id, process in enumerate(list(self.processes)):
            if process.is_alive() or self.reported.get(worker_id) is process:
                continue
            self.reported[worker_id] = process
            self.on_lost(worker_id, process.exitcode)
            self._schedule(worker_id, now)
        for worker_id, when in list(self.due.items()):
            if now >= when and self._running:
                del self.due[worker_id]
                self.restarts[worker_id] = self.restarts.get(worker_id, 0) + 1
                try:
                    self.respawn(worker_id, self.restarts[worker_id])
                except Exception:
                    log.exception("worker %d could not be replaced", worker_id)
                    self._schedule(worker_id, now)
        if self.on_tick is not None:
            self.on_tick()

    def _schedule(self, worker_id: int, now: float) -> None:
        done = self.restarts.get(worker_id, 0)
        if self.respawn is None:
            return
        if done >= self.policy.max_restarts:
            log.error("worker %d was replaced %d times: it stays down", worker_id, done)
            return
        delay = min(self.policy.max_backoff, self.policy.backoff * 2**done)
        self.due[worker_id] = now + delay
        log.warning("worker %d lost: a replacement starts in %.1f s", worker_id, delay)
