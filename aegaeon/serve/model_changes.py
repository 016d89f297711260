"""Waiting for every worker of a node to take a model change (AddModel / RemoveModel) and answer it.

The node makes one change at a time: the proxy sends it to every live worker and `ModelChangeWaiter` holds
the answers until each worker has replied or is gone. A worker that dies meanwhile counts as done: its
replacement is spawned with the node's model set as it is after the change.
"""

from __future__ import annotations

import threading
import time

from aegaeon.errors import RequestError


class ModelChangeWaiter:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._change: tuple[str, bool] | None = None
        self._pending: set[int] = set()
        self._errors: dict[int, str] = {}

    def expect(self, name: str, added: bool, worker_ids: set[int]) -> None:
        with self._cond:
            if self._change is not None:
                raise RequestError(
                    f"model {self._change[0]} is being changed: one model change at a time"
                )
            self._change, self._pending, self._errors = (name, added), set(worker_ids), {}

    def answered(self, worker_id: int, name: str, added: bool, error: str) -> None:
        with self._cond:
            if self._change != (name, added) or worker_id not in self._pending:
                return  # a late answer to a change that timed out
            self._pending.discard(worker_id)
            if error:
                self._errors[worker_id] = error
            self._cond.notify_all()

    def worker_gone(self, worker_id: int) -> None:
        with self._cond:
            self._pending.discard(worker_id)
            self._cond.notify_all()

    def wait(self, timeout: float) -> tuple[dict[int, str], set[int]]:
        """(errors by worker id, workers that did not answer within `timeout`); ends the change."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            result = dict(self._errors), set(self._pending)
            self._change, self._pending, self._errors = None, set(), {}
            return result
