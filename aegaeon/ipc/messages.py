"""Every message that crosses a process boundary, in one place (past 300 lines on purpose: one table of
tags, one file to read the wire protocol in).

Messages are frozen dataclasses of plain fields. `encode` writes a msgpack
array `[type tag, field values...]`; `decode` checks the tag and the field
count and rebuilds the dataclass, so a malformed frame is an error that names
what is wrong, never a half-built message.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

import msgpack

from aegaeon.errors import AegaeonError
from aegaeon.ipc.events import EVENT_TYPES


class MessageError(AegaeonError, ValueError):
    """A frame that is not a well-formed aegaeon message."""


@dataclass(frozen=True)
class Submit:
    """Proxy -> worker: a new request (prompt tokens and sampling)."""

    request_id: int
    model: str
    prompt_ids: tuple[int, ...]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()
    output_before: int = (
        0  # a re-run: the prompt's last tokens that are the request's earlier output
    )
    logprobs: int | None = None  # None: none; k: each token's log-probability and the k most likely
    prompt_logprobs: int | None = None  # the same for the prompt's tokens (echo with logprobs)


@dataclass(frozen=True)
class Schedule:
    """Proxy -> prefill worker: prefill this group of `model`'s requests.

    `quantum` bounds the time the worker may spend on it; prefill groups run to the end (0). Decode workers
    get no Schedule: each plans its own weighted round-robin rounds (aegaeon.sched.decode) from the costs it
    measures, and a model switch is implied by the model a group or a turn names."""

    model: str
    request_ids: tuple[int, ...]
    quantum: float


@dataclass(frozen=True)
class _KvHandoff:
    request_id: int
    model: str
    host_handles: tuple[int, ...]  # blocks in the host KV cache
    num_tokens: int  # tokens whose KV the blocks hold
    generated: tuple[int, ...] = ()  # tokens the request has produced so far
    sampler_state: bytes = (
        b""  # the request's random generator, so seeded sampling continues exactly
    )
    block_bytes: int = 0  # size of each block (the model's KV block)
    # seconds, as of sending, until the request's first decode token is due by its SLO (None: unknown);
    # what SLO-aware rounds read (aegaeon.sched.rounds.RoundConfig.slo_aware)
    first_decode_slack: float | None = None


@dataclass(frozen=True)
class Prefetch:
    """Proxy -> prefill worker: copy `model`'s weights into the free weight slot while the running group
    computes (the model of its next group: aegaeon.sched.prefill.PrefillDispatcher.prefetch_target)."""

    model: str


@dataclass(frozen=True)
class SwapOut(_KvHandoff):
    """Worker -> proxy: a request's KV now lives in the host KV cache."""


@dataclass(frozen=True)
class SwapIn(_KvHandoff):
    """Proxy -> worker: bring a request's KV in from the host KV cache and continue after `generated`."""


@dataclass(frozen=True)
class Tokens:
    """Worker -> proxy: new tokens of a request, with their wall-clock times."""

    request_id: int
    token_ids: tuple[int, ...]
    times: tuple[float, ...]
    finish_reason: str | None = None
    error: str | None = None
    unavailable: bool = False  # the error is the cluster's (a worker or node lost, no worker left), not the request's
    # when the request asked for logprobs, one per token: (its log-probability, ((token, log-probability), ...)
    # of the most likely tokens)
    logprobs: tuple = ()
    prompt_logprobs: tuple = ()  # on a request's first message, when asked: per prompt token (first None)


@dataclass(frozen=True)
class StepDone:
    """Worker -> proxy: a quantum ended; measured timings feed the cost model."""

    model: str
    steps: int
    seconds: float
    switch_seconds: float = 0.0


@dataclass(frozen=True)
class TurnStarted:
    """Decode worker -> proxy: a turn of `model` begins (switch, then steps), ended by its StepDone. Should the
    worker die now, its batch is what may have killed it (see aegaeon.serve.recovery.suspects)."""

    model: str


@dataclass(frozen=True)
class KvRelease:
    """Decode worker -> proxy -> prefill worker: host KV blocks that were swapped in and may be reused."""

    request_id: int
    host_handles: tuple[int, ...]


@dataclass(frozen=True)
class WorkerReady:
    """Worker -> proxy: started, with the models it can serve and why the others cannot."""

    worker_id: int
    role: str
    unavailable: dict[str, str]


@dataclass(frozen=True)
class Cancel:
    """Proxy -> worker: the client went away; drop the request and free its KV."""

    request_id: int


@dataclass(frozen=True)
class Hello:
    """Joining node -> head, first message on the TCP link (after CURVE's handshake proved the token):
    what the node brings."""

    node_name: str
    roles: tuple[str, ...]  # one per worker, in the node's local order
    models: tuple[str, ...]  # models its workers can serve
    tp: int = 1  # its instances' tensor-parallel degree: a KV handoff needs the same on both sides


@dataclass(frozen=True)
class Welcome:
    """Head -> joining node: accepted; its workers' cluster-wide ids, in local order."""

    worker_ids: tuple[int, ...]


@dataclass(frozen=True)
class Refused:
    """Head -> joining node: not accepted (wrong token, models that differ), and why."""

    reason: str


@dataclass(frozen=True)
class Heartbeat:
    sent: float  # the sender's wall clock


@dataclass(frozen=True)
class Routed:
    """A worker message crossing the TCP link: `frame` is its encoding, `worker_id` the cluster-wide id of
    the worker it goes to or comes from."""

    worker_id: int
    frame: bytes


@dataclass(frozen=True)
class KvPayload(_KvHandoff):
    """A request's KV blocks themselves, crossing the TCP link (`data` holds len(host_handles) blocks of
    `block_bytes`; the handles are the sender's and only count them)."""

    worker_id: int = -1  # the prefill worker it came from, or the decode worker it goes to
    data: bytes = b""


@dataclass(frozen=True)
class WorkerGone:
    """Joining node -> head: one of its workers exited."""

    worker_id: int
    exitcode: int | None


@dataclass(frozen=True)
class Shutdown:
    reason: str = ""


@dataclass(frozen=True)
class AddModel:
    """Proxy -> worker: serve one more model, whose weights the node has loaded into its host cache
    segment `segment` (aegaeon.weights.host_cache)."""

    name: str
    path: str
    segment: str


@dataclass(frozen=True)
class RemoveModel:
    """Proxy -> worker: stop serving a model (the node has drained its requests)."""

    name: str


@dataclass(frozen=True)
class ModelChanged:
    """Worker -> proxy: an AddModel or RemoveModel is done; `error` says why it could not be."""

    worker_id: int
    name: str
    added: bool
    error: str = ""


@dataclass(frozen=True)
class RetiredTrace:
    """Tag 10 was `Trace` (one message for every telemetry kind), replaced by aegaeon.ipc.events; it is never
    sent, and keeps the tags of the messages after it where they were."""

    retired: bool = True


MESSAGE_TYPES: tuple[type, ...] = (
    Submit,
    Schedule,
    SwapOut,
    SwapIn,
    Tokens,
    StepDone,
    KvRelease,
    WorkerReady,
    Cancel,
    Shutdown,
    RetiredTrace,  # tag 10 stays taken: a node of another version fails to decode it, it never misreads
    Hello,
    Welcome,
    Refused,
    Heartbeat,
    Routed,
    KvPayload,
    WorkerGone,
    TurnStarted,
    *EVENT_TYPES,  # telemetry (aegaeon.ipc.events)
    AddModel,
    RemoveModel,
    ModelChanged,
    Prefetch,
)  # append only: the index is the tag
_TAG = {cls: i for i, cls in enumerate(MESSAGE_TYPES)}


def encode(message: object) -> bytes:
    tag = _TAG.get(type(message))
    if tag is None:
        raise MessageError(f"{type(message).__name__} is not an aegaeon message type")
    return msgpack.packb([tag, *astuple(message)], use_bin_type=True)


def decode(frame: bytes) -> object:
    try:
        items = msgpack.unpackb(
            frame, raw=False, use_list=False
        )  # arrays as tuples, nested ones too, at C speed
    except (msgpack.UnpackException, ValueError) as bad:
        raise MessageError(f"frame of {len(frame)} bytes is not msgpack ({bad})") from None
    if (
        not isinstance(items, tuple)
        or not items
        or not isinstance(items[0], int)
        or not 0 <= items[0] < len(MESSAGE_TYPES)
    ):
        raise MessageError(f"frame does not start with a known message tag: {str(items)[:80]}")
    cls = MESSAGE_TYPES[items[0]]
    names = [f.name for f in fields(cls)]
    if len(items) - 1 != len(names):
        raise MessageError(
            f"{cls.__name__} frame has {len(items) - 1} fields, expected {len(names)}"
        )
    return cls(**dict(zip(names, items[1:])))
