"""The TCP link between nodes: ZeroMQ over tcp:// with msgpack frames (`aegaeon.ipc.messages`).

The head node binds a ROUTER socket; every joining node connects a DEALER.
ZeroMQ does the framing, reconnection and high-water marks; this module adds:

- authentication and encryption before anything is read: ZeroMQ's CURVE
  handshake, with the head's key pair and the nodes' key pair both derived from
  the cluster token (`link_keys`), so the token itself never crosses the wire
  and a recorded session cannot be replayed (CURVE's keys are ephemeral); the
  head's ZAP handler admits only the nodes' public key. A joining node's first
  message is then `Hello` (what it brings); the head answers `Welcome` or
  `Refused`, and ignores every other message from a peer it has not accepted;
- bounded frames, before and after authentication: every ZeroMQ frame is a
  chunk of at most CHUNK_BYTES (ZMQ_MAXMSGSIZE cuts off a peer that sends a
  larger one, handshake included, before it is buffered), and a message is
  reassembled from its chunks up to `max_frame_bytes`; `send` refuses to build
  a larger one;
- heartbeats: both sides send `Heartbeat` every HEARTBEAT_PERIOD; a peer silent
  for `heartbeat_timeout` is reported lost.

ZeroMQ sockets are not thread-safe, so each endpoint's socket belongs to one
thread: other threads queue frames and wake it through a pipe.
"""

from aegaeon.ipc.tcp.endpoint import CHUNK_BYTES, LinkKeys, link_keys
from aegaeon.ipc.tcp.head import HeadLink, Peer
from aegaeon.ipc.tcp.join import JoinLink

__all__ = ["CHUNK_BYTES", "HeadLink", "JoinLink", "LinkKeys", "Peer", "link_keys"]
