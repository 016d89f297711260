from dataclasses import fields

import msgpack
import pytest

from aegaeon.ipc.events import (
    DecodeEvent,
    MemoryEvent,
    PrefillEvent,
    QuantumEvent,
    SwapEvent,
    SwitchEvent,
)
from aegaeon.ipc.messages import (
    MESSAGE_TYPES,
    AddModel,
    Cancel,
    Heartbeat,
    Hello,
    KvPayload,
    KvRelease,
    MessageError,
    ModelChanged,
    Prefetch,
    Refused,
    RemoveModel,
    RetiredTrace,
    Routed,
    Schedule,
    Shutdown,
    StepDone,
    Submit,
    SwapIn,
    SwapOut,
    Tokens,
    TurnStarted,
    Welcome,
    WorkerGone,
    WorkerReady,
    decode,
    encode,
)

EXAMPLES = [
    Submit(7, "m", (1, 2, 3), 16, 0.7, 0.9, 42, True),
    Schedule("m", (1, 2), 0.25),
    Prefetch("m"),
    Submit(
        8,
        "m",
        (1,),
        4,
        presence_penalty=0.5,
        repetition_penalty=1.2,
        min_tokens=2,
        stop_token_ids=(3, 4),
        output_before=1,
        logprobs=2,
    ),
    Tokens(8, (5,), (1.5,), logprobs=((-0.25, ((5, -0.25), (6, -1.5))),)),
    SwapOut(7, "m", (4096, 8192), 33, (9,), b"\x01\x02"),
    SwapIn(7, "m", (4096,), 16, (9, 10)),
    Tokens(7, (5, 6), (1.5, 1.6), "length"),
    StepDone("m", 4, 0.1, 0.02),
    KvRelease(7, (4096,)),
    WorkerReady(2, "decode", {"x": "bad"}),
    Cancel(7),
    Hello("n1", ("prefill", "decode"), ("a", "b")),
    Welcome((4, 5)),
    Refused("wrong cluster token"),
    Heartbeat(1700000000.25),
    Routed(4, b"\x93\x01"),
    KvPayload(7, "m", (0, 4096), 20, (9,), b"", 4096, 5, b"\0" * 8192),
    WorkerGone(5, -9),
    TurnStarted("m"),
    Shutdown("bye"),
    SwitchEvent(3, "m", 1700000000.5, 0.01, 4096, {"copy_weights": 0.008}),
    SwapEvent(3, "m", 1.0, 0.002, 512, 7, "export"),
    PrefillEvent(2, "m", 1.0, 7, 0.01, 0.9, 0.05),
    DecodeEvent(3, "m", 2.0, 7, 1.2, 0.4, 0.1),
    QuantumEvent(3, "m", 2.0, 0.2, 4, 2.5, 100.0, 0.25),
    MemoryEvent(3, "", 2.0, 1000, 400, 380, 100, 500, 3, 0),
    RetiredTrace(),
    AddModel("m2", "/models/m2", "weights.3"),
    RemoveModel("m2"),
    ModelChanged(1, "m2", True, "worker 1: too large"),
]


def test_every_message_type_round_trips():
    assert {type(m) for m in EXAMPLES} == set(MESSAGE_TYPES)  # nested tuples come back as tuples
    for message in EXAMPLES:
        assert decode(encode(message)) == message


@pytest.mark.parametrize(
    "frame, words",
    [
        (b"\xc1", "not msgpack"),
        (msgpack.packb([99, 1]), "known message tag"),
        (msgpack.packb({"a": 1}), "known message tag"),
        (msgpack.packb([0, 1, "m"]), f"Submit frame has 2 fields, expected {len(fields(Submit))}"),
    ],
)
def test_malformed_frames_are_errors_that_say_why(frame, words):
    with pytest.raises(MessageError, match=words):
        decode(frame)


def test_encoding_a_foreign_object_is_refused():
    with pytest.raises(MessageError, match="dict is not an aegaeon message type"):
        encode({"x": 1})
