"""The TCP link between nodes: ZeroMQ over tcp:// with msgpack frames (`aegaeon.ipc.messages`).

The head node binds a ROUTER socket; every joining node connects a DEALER.
ZeroMQ does the framing, reconnection and high-water marks; this module adds:

- authentication: a joining node's first frame is `Hello` with the cluster's
  shared token (compared in constant time); the head answers `Welcome` or
  `Refused`, and ignores every other frame from a peer it has not accepted;
- bounded frames: ZMQ_MAXMSGSIZE drops a peer that sends a larger frame, and
  `send` refuses to build one;
- heartbeats: both sides send `Heartbeat` every HEARTBEAT_PERIOD; a peer silent
  for `heartbeat_timeout` is reported lost.

ZeroMQ sockets are not thread-safe, so each endpoint's socket belongs to one
thread: other threads queue frames and wake it through a pipe.
"""

from __future__ import annotations

import hmac
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from aegaeon.errors import AegaeonError
from aegaeon.ipc.messages import Heartbeat, Hello, MessageError, Refused, Welcome, decode, encode

log = logging.getLogger(__name__)

DEFAULT_MAX_FRAME_BYTES = 256 * 2**20  # the largest KV handoff of one request that may cross the link
HEARTBEAT_PERIOD = 1.0
DEFAULT_HEARTBEAT_TIMEOUT = 5.0
HIGH_WATER_MARK = 10_000  # frames queued per peer before ZeroMQ pushes back


class LinkError(AegaeonError):
    """The TCP link could not be set up or used."""


def parse_address(text: str, what: str, listen: bool = False) -> tuple[str, int]:
    """HOST:PORT; a listening address may use port 0 (any free port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not (0 if listen else 1) <= int(port) < 65536:
        raise LinkError(f"{what} {text!r} is not HOST:PORT")
    return host, int(port)


@dataclass(frozen=True)
class LinkConfig:
    token: str
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT

    def __post_init__(self) -> None:
        if len(self.token) < 8:
            raise LinkError("the cluster token must have at least 8 characters: pass --token (or AEGAEON_TOKEN)")
        if self.max_frame_bytes < 2**16 or self.heartbeat_timeout <= HEARTBEAT_PERIOD:
            raise LinkError(f"max frame {self.max_frame_bytes} bytes (>= 64 KiB) and heartbeat timeout "
                            f"{self.heartbeat_timeout} s (> {HEARTBEAT_PERIOD} s) are out of range")


class _Endpoint:
    """One ZeroMQ socket driven by its own thread."""

    def __init__(self, socket_type: int, config: LinkConfig, name: str):
        self.config = config
        self.context = zmq.Context()
        self.socket = self.context.socket(socket_type)
        self.socket.setsockopt(zmq.MAXMSGSIZE, config.max_frame_bytes)
        self.socket.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
        self.socket.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
        self.socket.setsockopt(zmq.LINGER, 0)
        self._outgoing: queue.Queue[tuple[bytes | None, bytes]] = queue.Queue()
        self._held: tuple[bytes | None, bytes] | None = None  # a frame the peer's high-water mark pushed back
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._running = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._running = True
        self._thread.start()

    def send(self, message: object, peer: bytes | None = None) -> None:
        """Queue `message` for `peer` (ROUTER) or the head (DEALER); safe from any thread."""
        frame = encode(message)
        if len(frame) > self.config.max_frame_bytes:
            raise LinkError(f"a {type(message).__name__} of {len(frame)} bytes exceeds the link's frame limit of "
                            f"{self.config.max_frame_bytes} bytes (--max-frame-mib)")
        self._outgoing.put((peer, frame))
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: a wake-up is pending already

    def close(self) -> None:
        if self.socket.closed:
            return
        self._running = False
        if self._thread.is_alive():
            self._wake()
            self._thread.join(timeout=5)
        self.socket.close(linger=0)
        self.context.term()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- the socket's thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        next_beat = time.monotonic()
        while self._running:
            ready = dict(poller.poll(timeout=100 if self._held is None else 5))
            if self._wake_r in ready:
                try:
                    os.read(self._wake_r, 65536)
                except BlockingIOError:
                    pass
            if self.socket in ready:
                self._receive_all()
            self._flush()
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + HEARTBEAT_PERIOD
                self.beat(now)

    def _receive_all(self) -> None:
        while True:
            try:
                parts = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            peer, frame = (parts[0], parts[-1]) if len(parts) > 1 else (None, parts[0])
            try:
                message = decode(frame)
            except MessageError as err:
                log.warning("link: dropped a malformed frame: %s", err)
                continue
            try:
                self.on_message(peer, message)
            except Exception:  # one bad message must not stop the link
                log.exception("link: handling %s failed", type(message).__name__)

    def _flush(self) -> None:
        while True:
            if self._held is None:
                try:
                    self._held = self._outgoing.get_nowait()
                except queue.Empty:
                    return
            peer, frame = self._held
            try:
                if peer is None:
                    self.socket.send(frame, zmq.NOBLOCK)
                else:
                    self.socket.send_multipart([peer, frame], zmq.NOBLOCK)
            except zmq.Again:
                return  # the peer is behind: keep the frame and retry (back-pressure, not loss)
            except zmq.ZMQError as err:  # EHOSTUNREACH: the peer is gone; its loss is reported by heartbeat
                log.info("link: frame to a departed peer dropped (%s)", err)
            self._held = None

    def on_message(self, peer: bytes | None, message: object) -> None:
        raise NotImplementedError

    def beat(self, now: float) -> None:
        raise NotImplementedError


@dataclass
class Peer:
    identity: bytes
    node_name: str
    worker_ids: tuple[int, ...] = ()
    last_seen: float = field(default_factory=time.monotonic)


class HeadLink(_Endpoint):
    """The head node's end: accepts joining nodes and carries their workers' messages.

    `on_join(peer, hello)` returns the worker ids given to the node, or raises LinkError to refuse it;
    `on_peer_message(peer, message)` gets every later message of an accepted node; `on_lost(peer)` is
    called once when an accepted node stops answering.
    """

    def __init__(self, host: str, port: int, config: LinkConfig,
                 on_join: Callable[[Peer, Hello], tuple[int, ...]],
                 on_peer_message: Callable[[Peer, object], None], on_lost: Callable[[Peer], None]):
        super().__init__(zmq.ROUTER, config, "link-head")
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        try:
            self.port = port if port else self.socket.bind_to_random_port(f"tcp://{host}")
            if port:
                self.socket.bind(f"tcp://{host}:{port}")
        except zmq.ZMQError as err:
            self.close()
            raise LinkError(f"cannot listen for nodes on {host}:{port}: {err}") from None
        self.on_join, self.on_peer_message, self.on_lost = on_join, on_peer_message, on_lost
        self.peers: dict[bytes, Peer] = {}
        self.refused = 0

    def on_message(self, identity: bytes | None, message: object) -> None:
        peer = self.peers.get(identity)
        if peer is not None:
            peer.last_seen = time.monotonic()
            if not isinstance(message, Heartbeat):
                self.on_peer_message(peer, message)
            return
        if not isinstance(message, Hello):
            log.warning("link: %s from a node that has not joined; ignored", type(message).__name__)
            return
        if not hmac.compare_digest(message.token.encode(), self.config.token.encode()):
            self.refused += 1
            log.warning("link: node %r refused: wrong token", message.node_name)
            self.send(Refused("wrong cluster token"), identity)
            return
        peer = Peer(identity, message.node_name)
        try:
            peer.worker_ids = self.on_join(peer, message)
        except LinkError as err:
            self.refused += 1
            log.warning("link: node %r refused: %s", message.node_name, err)
            self.send(Refused(str(err)), identity)
            return
        self.peers[identity] = peer
        self.send(Welcome(peer.worker_ids), identity)
        log.info("node %r joined with workers %s", peer.node_name, list(peer.worker_ids))

    def beat(self, now: float) -> None:
        for identity, peer in list(self.peers.items()):
            if now - peer.last_seen > self.config.heartbeat_timeout:
                del self.peers[identity]
                log.error("node %r sent nothing for %.1f s: its workers are lost", peer.node_name,
                          now - peer.last_seen)
                self.on_lost(peer)
            else:
                self.send(Heartbeat(time.time()), identity)

    def send_to(self, peer: Peer, message: object) -> None:
        self.send(message, peer.identity)


class JoinLink(_Endpoint):
    """A joining node's end: says Hello, waits to be welcomed, then carries its workers' messages."""

    def __init__(self, host: str, port: int, config: LinkConfig, on_head_message: Callable[[object], None],
                 on_lost: Callable[[], None]):
        super().__init__(zmq.DEALER, config, "link-join")
        self.address = f"{host}:{port}"
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
            raise LinkError(f"no answer from the head node at {self.address} within {timeout:g} s: is "
                            f"`aegaeon-launch start --head` running there, and is the port reachable?") from None
        if isinstance(answer, Refused):
            raise LinkError(f"the head node at {self.address} refused this node: {answer.reason}")
        self.accepted = True
        self.last_seen = time.monotonic()
        return answer.worker_ids

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
            log.error("the head node at %s sent nothing for %.1f s", self.address, now - self.last_seen)
            self.on_lost()
            return
        self.send(Heartbeat(time.time()))
