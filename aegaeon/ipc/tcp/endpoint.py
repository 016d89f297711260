"""What both ends of the node link share: keys derived from the token, chunked frames, and the socket
thread (see the package docstring)."""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass

import zmq
from zmq.utils.monitor import recv_monitor_message

from aegaeon.config.link import HEARTBEAT_PERIOD, LinkConfig
from aegaeon.errors import LinkError
from aegaeon.ipc.messages import MessageError, decode, encode

log = logging.getLogger(__name__)

HIGH_WATER_MARK = 10_000  # frames queued per peer before ZeroMQ pushes back
CHUNK_BYTES = (
    8192  # payload of one ZeroMQ frame: what a peer can make the head buffer before it is cut off
)
# A frame on the wire: a chunk, its more-flag and CURVE's box (about 40 bytes); the handshake's commands
# (HELLO 200 bytes, INITIATE a few hundred) fit too.
WIRE_FRAME_BYTES = CHUNK_BYTES + 256
HANDSHAKE_TIMEOUT_MS = 5000  # a peer that has not finished CURVE's handshake by then is dropped
_MORE, _LAST = b"\x01", b"\x00"


@dataclass(frozen=True)
class LinkKeys:
    """CURVE key pairs (Z85) of the head and of the joining nodes of one cluster."""

    head_public: bytes
    head_secret: bytes
    node_public: bytes
    node_secret: bytes


def link_keys(token: str) -> LinkKeys:
    """Both key pairs, derived from the cluster token: whoever knows the token can join, and nobody learns it
    from the wire. Curve25519 takes any 32 bytes as a secret key (it clamps them)."""

    def pair(role: str) -> tuple[bytes, bytes]:
        secret = zmq.utils.z85.encode(
            hashlib.sha256(f"aegaeon-link/{role}/".encode() + token.encode()).digest()
        )
        return zmq.curve_public(secret), secret

    head_public, head_secret = pair("head")
    node_public, node_secret = pair("node")
    return LinkKeys(head_public, head_secret, node_public, node_secret)


def _chunks(frame: bytes) -> list[bytes]:
    pieces = [frame[i : i + CHUNK_BYTES] for i in range(0, len(frame), CHUNK_BYTES)] or [b""]
    return [_MORE + piece for piece in pieces[:-1]] + [_LAST + pieces[-1]]


class LinkEndpoint:
    """One ZeroMQ socket driven by its own thread."""

    def __init__(self, socket_type: int, config: LinkConfig, name: str):
        self.config = config
        self.context = zmq.Context()
        self.socket = self.context.socket(socket_type)
        self.keys = link_keys(config.token)
        self.socket.setsockopt(zmq.MAXMSGSIZE, WIRE_FRAME_BYTES)
        self.socket.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_TIMEOUT_MS)
        self.socket.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
        self.socket.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
        self.socket.setsockopt(zmq.LINGER, 0)
        # one entry per message: its peer and its chunks, so that concurrent senders never interleave chunks
        self._outgoing: queue.Queue[tuple[bytes | None, list[bytes]]] = queue.Queue()
        self._held: tuple[bytes | None, list[bytes]] | None = (
            None  # a message partly sent (high-water mark)
        )
        self._partial: dict[
            bytes | None, bytearray | None
        ] = {}  # per peer: chunks so far (None: discarding)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._running = False
        self._monitor: zmq.Socket | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._running = True
        self._thread.start()

    def send(self, message: object, peer: bytes | None = None) -> None:
        """Queue `message` for `peer` (ROUTER) or the head (DEALER); safe from any thread."""
        frame = encode(message)
        if len(frame) > self.config.max_frame_bytes:
            raise LinkError(
                f"a {type(message).__name__} of {len(frame)} bytes exceeds the link's frame limit of "
                f"{self.config.max_frame_bytes} bytes (--max-frame-mib)"
            )
        self._outgoing.put((peer, _chunks(frame)))
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
        if self._monitor is not None:
            self.socket.disable_monitor()
            self._monitor.close(linger=0)
        self.socket.close(linger=0)
        self.context.term()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- the socket's thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        if self._monitor is not None:
            poller.register(self._monitor, zmq.POLLIN)
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
            if self._monitor is not None and self._monitor in ready:
                self._read_monitor()
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
            peer, chunk = (parts[0], parts[-1]) if len(parts) > 1 else (None, parts[0])
            frame = self._reassemble(peer, chunk)
            if frame is None:
                continue
            try:
                message = decode(frame)
            except MessageError as err:
                log.warning("link: dropped a malformed frame: %s", err)
                continue
            try:
                self.on_message(peer, message)
            except Exception:  # one bad message must not stop the link
                log.exception("link: handling %s failed", type(message).__name__)

    def _reassemble(self, peer: bytes | None, chunk: bytes) -> bytes | None:
        """The whole message once `chunk` is its last; None before that, or for a message over the limit
        (dropped, with the rest of its chunks)."""
        flag, payload = chunk[:1], chunk[1:]
        if flag not in (_MORE, _LAST):
            log.warning("link: dropped a frame that is not a chunk of a message")
            return None
        if peer not in self._partial:
            self._partial[peer] = bytearray()
        buffer = self._partial[peer]
        if buffer is not None:
            if len(buffer) + len(payload) > self.config.max_frame_bytes:
                log.warning(
                    "link: dropped a message of more than %d bytes (--max-frame-mib)",
                    self.config.max_frame_bytes,
                )
                buffer = self._partial[peer] = None
            else:
                buffer += payload
        if flag == _MORE:
            return None
        del self._partial[peer]
        return bytes(buffer) if buffer is not None else None

    def _flush(self) -> None:
        while True:
            if self._held is None:
                try:
                    self._held = self._outgoing.get_nowait()
                except queue.Empty:
                    return
            peer, chunks = self._held
            try:
                while chunks:
                    if peer is None:
                        self.socket.send(chunks[0], zmq.NOBLOCK)
                    else:
                        self.socket.send_multipart([peer, chunks[0]], zmq.NOBLOCK)
                    chunks.pop(0)
            except zmq.Again:
                return  # the peer is behind: keep the rest and retry (back-pressure, not loss)
            except (
                zmq.ZMQError
            ) as err:  # EHOSTUNREACH: the peer is gone; its loss is reported by heartbeat
                log.info("link: message to a departed peer dropped (%s)", err)
            self._held = None

    def _monitor_handshakes(self) -> None:
        """Have the socket's thread call `on_handshake_failed` for each failed CURVE handshake."""
        self._monitor = self.socket.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH
        )

    def _read_monitor(self) -> None:
        while True:
            try:
                recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            self.on_handshake_failed()

    def on_handshake_failed(self) -> None:
        raise NotImplementedError

    def on_message(self, peer: bytes | None, message: object) -> None:
        raise NotImplementedError

    def beat(self, now: float) -> None:
        raise NotImplementedError
