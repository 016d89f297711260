"""A joining node's end of the node link."""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable

import zmq

from aegaeon.config.link import LinkConfig
from aegaeon.errors import LinkError
from aegaeon.ipc.messages import Heartbeat, Hello, Refused, Welcome
from aegaeon.ipc.tcp.endpoint import LinkEndpoint

log = logging.getLogger(__name__)

_HANDSHAKE_FAILED = object()  # what the join thread hands `join` when CURVE's handshake fails


class JoinLink(LinkEndpoint):
    """A joining node's end: says Hello, waits to be welcomed, then carries its workers' messages."""

    def __init__(
        self,
        host: str,
        port: int,
        config: LinkConfig,
        on_head_message: Callable[[object], None],
        on_lost: Callable[[], None],
    ):
        super().__init__(zmq.DEALER, config, "link-join")
        self.address = f"{host}:{port}"
        self.socket.curve_serverkey = self.keys.head_public
        self.socket.curve_publickey = self.keys.node_public
        self.socket.curve_secretkey = self.keys.node_secret
        self._monitor_handshakes()
        self.socket.connect(f"tcp://{host}:{port}")
        self.on_head_message, self.on_lost = on_head_message, on_lost
        self.answer: queue.Queue[object] = queue.Queue()
        self.accepted = False
        self.last_seen = time.monotonic()

    def join(self, hello: Hello, timeout: float) -> tuple[int, ...]:
        """Say hello; returns this node's worker ids, or raises LinkError (refused, or no answer)."""
        self.start()
        self.send(hello)
        try:
            answer = self.answer.get(timeout=timeout)
        except queue.Empty:
            raise LinkError(
                f"no answer from the head node at {self.address} within {timeout:g} s: is "
                f"`aegaeon-launch start --head` running there, and is the port reachable?"
            ) from None
        if isinstance(answer, Refused):
            raise LinkError(f"the head node at {self.address} refused this node: {answer.reason}")
        if answer is _HANDSHAKE_FAILED:
            raise LinkError(
                f"the head node at {self.address} refused this node: wrong cluster token (the "
                f"encrypted handshake failed; pass the head's --token)"
            )
        self.accepted = True
        self.last_seen = time.monotonic()
        return answer.worker_ids

    def on_handshake_failed(self) -> None:
        if not self.accepted:
            self.answer.put(_HANDSHAKE_FAILED)

    def on_message(self, peer: bytes | None, message: object) -> None:
        self.last_seen = time.monotonic()
        if not self.accepted:
            if isinstance(message, (Welcome, Refused)):
                self.answer.put(message)
            return
        if not isinstance(message, Heartbeat):
            self.on_head_message(message)

    def beat(self, now: float) -> None:
        if not self.accepted:
            return
        if now - self.last_seen > self.config.heartbeat_timeout:
            self.accepted = False
            log.error(
                "the head node at %s sent nothing for %.1f s", self.address, now - self.last_seen
            )
            self.on_lost()
            return
        self.send(Heartbeat(time.time()))
