"""The TCP link on loopback, without workers: auth, order, bounded frames, heartbeats."""

import threading
import time

import pytest
import zmq

from aegaeon.ipc.messages import Hello, Routed, encode
from aegaeon.ipc.tcp import HeadLink, JoinLink, LinkConfig, LinkError, parse_address

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
    link = HeadLink("127.0.0.1", 0, LinkConfig(TOKEN, max_frame_bytes=2**20, heartbeat_timeout=1.5),
                    recorder.on_join, recorder.on_message, recorder.on_lost)
    link.start()
    yield link, recorder
    link.close()


def join(head_link, token=TOKEN, models=("m",), **config):
    recorder = Recorder()
    link = JoinLink("127.0.0.1", head_link.port, LinkConfig(token, heartbeat_timeout=1.5, **config),
                    recorder.on_message, recorder.on_lost)
    return link, recorder, lambda: link.join(Hello(token, "n", ("decode", "prefill"), models), timeout=10)


def test_a_joined_node_exchanges_messages_in_order_both_ways(head):
    head_link, head_seen = head
    link, seen, say_hello = join(head_link)
    try:
        assert say_hello() == (10, 11)
        for i in range(500):
            link.send(Routed(10, encode(Hello("x", str(i), (), ()))))
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
    for token, models, reason in ((TOKEN + "x", ("m",), "wrong cluster token"), (TOKEN, ("z",), "models differ")):
        link, _, say_hello = join(head_link, token=token, models=models)
        try:
            with pytest.raises(LinkError, match=f"refused this node: {reason}"):
                say_hello()
        finally:
            link.close()
    context = zmq.Context()
    stranger = context.socket(zmq.DEALER)
    stranger.connect(f"tcp://127.0.0.1:{head_link.port}")
    stranger.send(encode(Routed(10, b"not joined")))  # no Hello first
    time.sleep(0.3)
    stranger.close(linger=0)
    context.term()
    assert head_link.refused == 2 and not head_link.peers and not head_seen.messages


def test_frames_are_bounded_on_both_sides(head):
    head_link, head_seen = head
    link, _, say_hello = join(head_link, max_frame_bytes=2**20)
    try:
        say_hello()
        with pytest.raises(LinkError, match="exceeds the link's frame limit"):
            link.send(Routed(10, b"\0" * (2**20 + 1)))
        context = zmq.Context()
        raw = context.socket(zmq.DEALER)  # a peer that ignores the limit is cut off by ZeroMQ, not read
        raw.connect(f"tcp://127.0.0.1:{head_link.port}")
        raw.send(b"\0" * (2**20 + 4096))
        time.sleep(0.3)
        raw.close(linger=0)
        context.term()
        link.send(Routed(10, b"small"))
        wait_for(lambda: head_seen.messages)
        assert [m.frame for m in head_seen.messages] == [b"small"]
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
