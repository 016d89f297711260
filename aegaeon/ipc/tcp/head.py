"""The head node's end of the node link."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq
from zmq.auth.thread import ThreadAuthenticator

from aegaeon.config.link import LinkConfig
from aegaeon.errors import LinkError
from aegaeon.ipc.messages import Heartbeat, Hello, Refused, Welcome
from aegaeon.ipc.tcp.endpoint import LinkEndpoint

log = logging.getLogger(__name__)


@dataclass
class Peer:
    identity: bytes
    node_name: str
    worker_ids: tuple[int, ...] = ()
    last_seen: float = field(default_factory=time.monotonic)
    longest_silence: float = (
        0.0  # the longest gap between two of its messages, as this head received them
    )


class HeadLink(LinkEndpoint):
    """The head node's end: accepts joining nodes and carries their workers' messages.

    `on_join(peer, hello)` returns the worker ids given to the node, or raises LinkError to refuse it;
    `on_peer_message(peer, message)` gets every later message of an accepted node; `on_lost(peer)` is
    called once when an accepted node stops answering.
    """

    def __init__(
        self,
        host: str,
        port: int,
        config: LinkConfig,
        on_join: Callable[[Peer, Hello], tuple[int, ...]],
        on_peer_message: Callable[[Peer, object], None],
        on_lost: Callable[[Peer], None],
    ):
        super().__init__(zmq.ROUTER, config, "link-head")
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.refused = 0
        self._authenticator = ThreadAuthenticator(
            self.context, log=logging.getLogger(f"{__name__}.zap")
        )
        self._authenticator.start()
        self._authenticator.configure_curve_callback("*", _NodeKeyCheck(self))
        self.socket.curve_server = True
        self.socket.curve_publickey = self.keys.head_public
        self.socket.curve_secretkey = self.keys.head_secret
        # a peer with another token fails CURVE's handshake before ZAP is asked: the monitor tells of it
        self._monitor_handshakes()
        try:
            self.port = port if port else self.socket.bind_to_random_port(f"tcp://{host}")
            if port:
                self.socket.bind(f"tcp://{host}:{port}")
        except zmq.ZMQError as err:
            self.close()
            raise LinkError(f"cannot listen for nodes on {host}:{port}: {err}") from None
        self.on_join, self.on_peer_message, self.on_lost = on_join, on_peer_message, on_lost
        self.peers: dict[bytes, Peer] = {}

    def close(self) -> None:
        if not self.socket.closed:
            self._authenticator.stop()
        super().close()

    def on_handshake_failed(self) -> None:
        self.refused += 1
        log.warning(
            "link: a peer failed the encrypted handshake (another cluster's --token, or not "
            "an aegaeon node); nothing it sent was read"
        )

    def on_message(self, identity: bytes | None, message: object) -> None:
        peer = self.peers.get(identity)
        if peer is not None:
            now = time.monotonic()
            peer.longest_silence = max(peer.longest_silence, now - peer.last_seen)
            peer.last_seen = now
            if isinstance(message, Hello):
                log.warning("link: node %r said Hello again; ignored", peer.node_name)
            elif not isinstance(message, Heartbeat):
                self.on_peer_message(peer, message)
            return
        if not isinstance(message, Hello):
            log.warning("link: %s from a node that has not joined; ignored", type(message).__name__)
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
                log.error(
                    "node %r sent nothing for %.1f s: its workers are lost",
                    peer.node_name,
                    now - peer.last_seen,
                )
                self.on_lost(peer)
            else:
                self.send(Heartbeat(time.time()), identity)

    def take_longest_silence(self) -> float:
        """The longest gap between two messages of any joined node since the last call (seconds): how close
        the link came to its heartbeat timeout."""
        longest = 0.0
        for peer in list(self.peers.values()):
            longest, peer.longest_silence = max(longest, peer.longest_silence), 0.0
        return longest

    def send_to(self, peer: Peer, message: object) -> None:
        self.send(message, peer.identity)


class _NodeKeyCheck:
    """The head's ZAP rule: a peer may finish CURVE's handshake only with the cluster's node key (the failed
    handshake is counted from the socket's monitor)."""

    def __init__(self, head: HeadLink):
        self.head = head

    def callback(self, domain: str, key: bytes | str) -> bool:
        key = key.encode() if isinstance(key, str) else key
        if hmac.compare_digest(key, self.head.keys.node_public):
            return True
        log.warning("link: a peer with another cluster's key was refused (wrong --token?)")
        return False
