"""A fixed-slot message ring in POSIX shared memory, for one direction of
proxy <-> worker traffic on a node.

Byte layout of the segment `aegaeon-<cluster>-ring.<name>` (little endian):

    offset 0   u32 magic 0xAE6AE0A1, u32 version 1
    offset 8   u32 slot_count, u32 slot_bytes
    offset 16  u64 head   next slot a writer fills (monotonic; slot = head % slot_count)
    offset 24  u64 tail   next slot the reader takes (monotonic)
    offset 64  slot_count slots of slot_bytes: u32 payload length, then the payload

Three semaphores (`sem.aegaeon-<cluster>-ring.<name>.{free,used,lock}`):
`free` counts empty slots (starts at slot_count), `used` counts filled ones
(starts at 0), `lock` (starts at 1) serialises writers. A writer waits on
`free` (a full ring blocks the writer, it never drops a message), takes `lock`,
fills slot head, advances head, releases `lock` and posts `used`. The single
reader waits on `used`, copies slot tail out, advances tail and posts `free`.

head and tail live in the segment, so a reader that dies and is restarted
continues where the last one stopped: on attach it re-posts `used` for
messages the semaphore no longer counts. A message whose copy was under way
when its reader died is delivered again (at-least-once across a reader crash).
The creator of the ring unlinks the segment and the semaphores.
"""

from __future__ import annotations

import struct
import time

import posix_ipc

from aegaeon.errors import SharedMemoryError
from aegaeon.ipc.shm import SharedSegment, ShmNamespace

MAGIC = 0xAE6AE0A1
VERSION = 1
HEADER_BYTES = 64
_HEADER = struct.Struct("<IIII")
_COUNTER = struct.Struct("<Q")
_LENGTH = struct.Struct("<I")
HEAD_AT, TAIL_AT = 16, 24


class RingFullError(SharedMemoryError):
    """A write waited longer than its timeout for a free slot."""


class RingEmptyError(SharedMemoryError):
    """A read waited longer than its timeout for a message."""


class MessageTooLargeError(SharedMemoryError, ValueError):
    """A message does not fit one slot of the ring."""


class Ring:
    def __init__(
        self, segment: SharedSegment, semaphores: dict[str, posix_ipc.Semaphore], name: str
    ):
        self.name = name
        self._segment = segment
        self._buf = segment.buffer
        self._sem = semaphores
        magic, version, self.slot_count, self.slot_bytes = _HEADER.unpack_from(self._buf, 0)
        if magic != MAGIC or version != VERSION:
            raise SharedMemoryError(
                f"ring {name}: segment is not an aegaeon ring (magic {magic:#x}, version {version})"
            )

    # ---- creation and attachment -----------------------------------------------------------------------------

    @classmethod
    def create(
        cls, namespace: ShmNamespace, name: str, slot_count: int = 256, slot_bytes: int = 4096
    ) -> "Ring":
        if slot_count < 1 or slot_bytes < _LENGTH.size + 1:
            raise SharedMemoryError(
                f"ring {name}: slot_count={slot_count} and slot_bytes={slot_bytes} must be "
                f"at least 1 and {_LENGTH.size + 1}"
            )
        segment = namespace.create_segment(f"ring.{name}", HEADER_BYTES + slot_count * slot_bytes)
        _HEADER.pack_into(segment.buffer, 0, MAGIC, VERSION, slot_count, slot_bytes)
        semaphores = {
            "free": namespace.create_semaphore(f"ring.{name}.free", slot_count),
            "used": namespace.create_semaphore(f"ring.{name}.used", 0),
            "lock": namespace.create_semaphore(f"ring.{name}.lock", 1),
        }
        return cls(segment, semaphores, name)

    @classmethod
    def attach(cls, cluster_id: str, name: str, reader: bool = False) -> "Ring":
        """Open an existing ring; a (re)starting reader reconciles `used` with head - tail."""
        namespace = ShmNamespace(cluster_id)
        segment = namespace.attach_segment(f"ring.{name}")
        semaphores = {
            kind: namespace.open_semaphore(f"ring.{name}.{kind}")
            for kind in ("free", "used", "lock")
        }
        ring = cls(segment, semaphores, name)
        if reader:
            for _ in range(ring.pending() - ring._sem["used"].value):
                ring._sem["used"].release()
        return ring

    # ---- traffic -------------------------------------------------------------------------------------------

    @property
    def max_message_bytes(self) -> int:
        return self.slot_bytes - _LENGTH.size

    def put(self, payload: bytes, timeout: float | None = None) -> None:
        """Append one message; blocks while the ring is full (RingFullError after `timeout` seconds)."""
        if len(payload) > self.max_message_bytes:
            raise MessageTooLargeError(
                f"ring {self.name}: message of {len(payload)} bytes exceeds the slot payload of "
                f"{self.max_message_bytes} bytes: send less per message or make the ring's slots larger"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        if not _acquire(self._sem["free"], timeout):
            raise RingFullError(
                f"ring {self.name}: no free slot within {timeout} s (the reader is behind)"
            )
        if not _acquire(self._sem["lock"], _remaining(deadline)):
            self._sem["free"].release()
            raise RingFullError(f"ring {self.name}: writer lock not free within {timeout} s")
        try:
            head = self._counter(HEAD_AT)
            at = self._slot(head)
            _LENGTH.pack_into(self._buf, at, len(payload))
            self._buf[at + _LENGTH.size : at + _LENGTH.size + len(payload)] = payload
            _COUNTER.pack_into(self._buf, HEAD_AT, head + 1)
        finally:
            self._sem["lock"].release()
        self._sem["used"].release()

    def get(self, timeout: float | None = None) -> bytes:
        """Take the oldest message; blocks while empty (RingEmptyError after `timeout` seconds). One reader only."""
        if not _acquire(self._sem["used"], timeout):
            raise RingEmptyError(f"ring {self.name}: no message within {timeout} s")
        tail = self._counter(TAIL_AT)
        at = self._slot(tail)
        (length,) = _LENGTH.unpack_from(self._buf, at)
        if length > self.max_message_bytes:
            raise SharedMemoryError(
                f"ring {self.name}: slot {tail % self.slot_count} holds a corrupt length {length}"
            )
        payload = bytes(self._buf[at + _LENGTH.size : at + _LENGTH.size + length])
        _COUNTER.pack_into(self._buf, TAIL_AT, tail + 1)
        self._sem["free"].release()
        return payload

    def pending(self) -> int:
        return self._counter(HEAD_AT) - self._counter(TAIL_AT)

    def close(self) -> None:
        for sem in self._sem.values():
            sem.close()
        self._segment.close()

    def _counter(self, at: int) -> int:
        return _COUNTER.unpack_from(self._buf, at)[0]

    def _slot(self, index: int) -> int:
        return HEADER_BYTES + (index % self.slot_count) * self.slot_bytes


def _acquire(sem: posix_ipc.Semaphore, timeout: float | None) -> bool:
    try:
        sem.acquire(timeout)
        return True
    except posix_ipc.BusyError:
        return False


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
