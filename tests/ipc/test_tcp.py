"""The TCP link on loopback, without workers: auth, order, bounded frames, heartbeats."""

import os
import socket
import threading
import time

import pytest
import zmq

from aegaeon.config.link import LinkConfig, parse_address
from aegaeon.errors import LinkError
from aegaeon.ipc.messages import Hello, Routed, encode
from aegaeon.ipc.tcp import CHUNK_BYTES, HeadLink, JoinLink, link_keys

TOKEN = "link-test-token"


class Recorder:
    def __init__(self):
        self.messages, self.lost = [], []
        self.event = threading.Event()

    def on_join(self, peer, hello):
        if hello.models != ("m",):
            raise LinkError("models differ")
        return (10, 11)

    def on_message(self, *args):
        self.messages.append(args[-1])
        self.event.set()

    def on_lost(self, *args):
        self.lost.append(args)


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def head():
    recorder = Recorder()
    link = HeadLink(
        "127.0.0.1",
        0,
        LinkConfig(TOKEN, max_frame_bytes=2**20, heartbeat_timeout=1.5),
        recorder.on_join,
        recorder.on_message,
        recorder.on_lost,
    )
    link.start()
    yield link, recorder
    link.close()


def join(head_link, token=TOKEN, models=("m",), timeout=10, **config):
    recorder = Recorder()
    link = JoinLink(
        "127.0.0.1",
        head_link.port,
        LinkConfig(token, heartbeat_timeout=1.5, **config),
        recorder.on_message,
        recorder.on_lost,
    )
    return (
        link,
        recorder,
        lambda: link.join(Hello("n", ("decode", "prefill"), models), timeout=timeout),
    )


def test_a_joined_node_exchanges_messages_in_order_both_ways(head):
    head_link, head_seen = head
    link, seen, say_hello = join(head_link)
    try:
        assert say_hello() == (10, 11)
        for i in range(500):
            link.send(Routed(10, encode(Hello(str(i), (), ()))))
        wait_for(lambda: len(head_seen.messages) == 500)
        assert [m.worker_id for m in head_seen.messages] == [10] * 500
        peer = next(iter(head_link.peers.values()))
        for i in range(500):
            head_link.send_to(peer, Routed(11, bytes([i % 256])))
        wait_for(lambda: len(seen.messages) == 500)
        assert [m.frame for m in seen.messages] == [bytes([i % 256]) for i in range(500)]
    finally:
        link.close()


def test_wrong_token_different_models_and_strangers_are_refused(head):
    head_link, head_seen = head
    link, _, say_hello = join(head_link, models=("z",))
    try:
        with pytest.raises(LinkError, match="refused this node: models differ"):
            say_hello()
    finally:
        link.close()
    # another cluster's token: CURVE's handshake fails, the head reads nothing, the node is told at once
    link, _, say_hello = join(head_link, token=TOKEN + "x", timeout=10)
    try:
        with pytest.raises(LinkError, match="refused this node: wrong cluster token"):
            say_hello()
    finally:
        link.close()
    wait_for(lambda: head_link.refused >= 2)  # (ZeroMQ retries, and each try is refused)
    before = head_link.refused
    context = zmq.Context()
    for curve in (
        False,
        True,
    ):  # a plain ZeroMQ peer, and one with the right head key but its own key pair
        stranger = context.socket(zmq.DEALER)
        if curve:
            stranger.curve_serverkey = link_keys(TOKEN).head_public
            stranger.curve_publickey, stranger.curve_secretkey = zmq.curve_keypair()
        stranger.connect(f"tcp://127.0.0.1:{head_link.port}")
        stranger.send(b"\x00" + encode(Routed(10, b"not joined")))
        stranger.send(b"\x00" + encode(Hello("intruder", ("decode",), ("m",))))
        time.sleep(0.5)
        stranger.close(linger=0)
    context.term()
    wait_for(lambda: head_link.refused >= before + 2)
    assert not head_link.peers and not head_seen.messages


def test_the_token_never_crosses_the_wire_and_a_recorded_join_cannot_be_replayed(head):
    head_link, head_seen = head
    relay, recorded = _recording_relay(head_link.port)
    link = JoinLink(
        "127.0.0.1",
        relay.getsockname()[1],
        LinkConfig(TOKEN, heartbeat_timeout=1.5),
        Recorder().on_message,
        Recorder().on_lost,
    )
    try:
        assert link.join(Hello("n", ("decode",), ("m",)), timeout=10) == (10, 11)
        link.send(Routed(10, b"payload"))
        wait_for(lambda: head_seen.messages)
    finally:
        link.close()
    wait_for(lambda: not head_link.peers)  # the node left (heartbeats)
    sent = b"".join(recorded)
    assert len(sent) > 64 and TOKEN.encode() not in sent and b"payload" not in sent
    with socket.create_connection(("127.0.0.1", head_link.port)) as replay:
        replay.sendall(sent)
        time.sleep(1.0)
    assert not head_link.peers and [m.frame for m in head_seen.messages] == [b"payload"]


def _recording_relay(port):
    """A TCP relay in front of the head that records what the joining node sends."""
    listener = socket.create_server(("127.0.0.1", 0))
    recorded = []

    def pump(source, sink, record):
        while data := source.recv(65536):
            if record:
                recorded.append(data)
            sink.sendall(data)

    def serve():
        client, _ = listener.accept()
        upstream = socket.create_connection(("127.0.0.1", port))
        threading.Thread(target=pump, args=(upstream, client, False), daemon=True).start()
        try:
            pump(client, upstream, True)
        except OSError:
            pass

    threading.Thread(target=serve, daemon=True).start()
    return listener, recorded


def test_garbage_and_an_oversized_frame_before_authentication_are_cut_off_unread(head):
    head_link, _ = head
    with socket.create_connection(("127.0.0.1", head_link.port)) as garbage:
        garbage.sendall(os.urandom(4096))
        garbage.settimeout(5)
        assert _closed_by_peer(garbage)
    before = _rss()
    with socket.create_connection(("127.0.0.1", head_link.port)) as big:
        # a ZMTP 3.0 greeting for CURVE, then a command frame that says it is 1 GiB long
        big.sendall(
            b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"CURVE".ljust(20, b"\0") + bytes(32)
        )
        big.sendall(b"\x06" + (2**30).to_bytes(8, "big"))
        big.settimeout(5)
        sent = 0
        with pytest.raises(OSError):
            while sent < 256 * 2**20:
                big.sendall(bytes(2**20))
                sent += 2**20
        assert sent < 64 * 2**20
    assert _rss() - before < 32 * 2**20
    link, _, say_hello = join(head_link)  # and the head still serves
    try:
        assert say_hello() == (10, 11)
    finally:
        link.close()


def _closed_by_peer(sock):
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_frames_are_bounded_on_both_sides(head):
    head_link, head_seen = head
    link, _, say_hello = join(head_link, max_frame_bytes=2**20)
    try:
        say_hello()
        with pytest.raises(LinkError, match="exceeds the link's frame limit"):
            link.send(Routed(10, b"\0" * (2**20 + 1)))
        context = zmq.Context()
        raw = context.socket(
            zmq.DEALER
        )  # a peer that ignores the limit is cut off by ZeroMQ, not read
        keys = link_keys(TOKEN)
        raw.curve_serverkey, raw.curve_publickey, raw.curve_secretkey = (
            keys.head_public,
            keys.node_public,
            keys.node_secret,
        )
        raw.connect(f"tcp://127.0.0.1:{head_link.port}")
        raw.send(b"\0" * (2**20 + 4096))
        time.sleep(0.3)
        raw.close(linger=0)
        context.term()
        link.send(Routed(10, b"small"))
        wait_for(lambda: head_seen.messages)
        assert [m.frame for m in head_seen.messages] == [b"small"]
        big = os.urandom(
            100 * CHUNK_BYTES + 5
        )  # crosses in chunks, whole and in order with the rest
        link.send(Routed(10, big))
        link.send(Routed(10, b"after"))
        wait_for(lambda: len(head_seen.messages) == 3)
        assert [m.frame for m in head_seen.messages[1:]] == [big, b"after"]
    finally:
        link.close()


def test_heartbeats_report_a_silent_node_and_a_silent_head(head):
    head_link, head_seen = head
    link, _, say_hello = join(head_link)
    say_hello()
    link.close()  # gone without a word
    wait_for(lambda: head_seen.lost, timeout=10)
    assert not head_link.peers
    link, seen, say_hello = join(head_link)
    try:
        say_hello()
        head_link.close()
        wait_for(lambda: seen.lost, timeout=10)
    finally:
        link.close()


def test_addresses_and_configs_are_checked():
    assert parse_address("10.0.0.1:7070", "--join") == ("10.0.0.1", 7070)
    assert parse_address("0.0.0.0:0", "--head", listen=True) == ("0.0.0.0", 0)
    for bad in ("7070", "host:", "host:x", "host:0", "host:70000"):
        with pytest.raises(LinkError, match="is not HOST:PORT"):
            parse_address(bad, "--join")
    with pytest.raises(LinkError, match="at least 8 characters"):
        LinkConfig("short")
