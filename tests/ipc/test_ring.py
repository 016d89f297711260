"""The shared-memory message ring: order, wrap-around, back-pressure, crashes, concurrent writers."""

import multiprocessing as mp
import os
import signal
import time

import pytest

from aegaeon.ipc.ring import MessageTooLargeError, Ring, RingEmptyError, RingFullError
from aegaeon.ipc.shm import SHM_DIR, ShmNamespace

CTX = mp.get_context("spawn")


def _writer(cluster: str, name: str, writer_id: int, count: int) -> None:
    ring = Ring.attach(cluster, name)
    for i in range(count):
        ring.put(f"{writer_id}:{i}".encode())
    ring.close()


def _reader(cluster: str, name: str, count: int, out) -> None:
    ring = Ring.attach(cluster, name, reader=True)
    for _ in range(count):
        out.put(ring.get().decode())
    time.sleep(60)  # stopped here, with messages pending, until killed


def test_messages_come_out_in_order_across_many_wrap_arounds():
    with ShmNamespace("ring1") as ns:
        ring = Ring.create(ns, "order", slot_count=4, slot_bytes=64)
        received, sent = [], 0
        for burst in range(40):
            for _ in range(1 + burst % 4):
                ring.put(f"m{sent}".encode())
                sent += 1
            while ring.pending():
                received.append(ring.get().decode())
        assert received == [f"m{i}" for i in range(sent)] and sent > 4 * 20


def test_a_full_ring_blocks_the_writer_instead_of_dropping():
    with ShmNamespace("ring2") as ns:
        ring = Ring.create(ns, "full", slot_count=3, slot_bytes=32)
        for i in range(3):
            ring.put(bytes([i]))
        with pytest.raises(RingFullError, match="no free slot within 0.05 s"):
            ring.put(b"x", timeout=0.05)
        assert ring.get() == b"\x00"
        ring.put(b"\x03", timeout=0.05)
        assert [ring.get() for _ in range(3)] == [b"\x01", b"\x02", b"\x03"]
        with pytest.raises(RingEmptyError):
            ring.get(timeout=0.05)


def test_an_oversized_message_is_refused_with_the_sizes_and_the_ring_is_unchanged():
    with ShmNamespace("ring3") as ns:
        ring = Ring.create(ns, "big", slot_count=2, slot_bytes=16)
        with pytest.raises(
            MessageTooLargeError, match="message of 13 bytes exceeds the slot payload of 12 bytes"
        ):
            ring.put(b"x" * 13)
        ring.put(b"y" * 12)
        assert ring.get() == b"y" * 12 and ring.pending() == 0


def test_concurrent_writer_processes_lose_nothing_and_keep_their_own_order():
    with ShmNamespace("ring4") as ns:
        ring = Ring.create(ns, "many", slot_count=8, slot_bytes=32)
        writers = [CTX.Process(target=_writer, args=("ring4", "many", w, 300)) for w in range(3)]
        for p in writers:
            p.start()
        got = [ring.get(timeout=30).decode() for _ in range(900)]
        for p in writers:
            p.join(timeout=30)
            assert p.exitcode == 0
        by_writer = {
            w: [int(m.split(":")[1]) for m in got if m.startswith(f"{w}:")] for w in range(3)
        }
        assert all(seq == list(range(300)) for seq in by_writer.values())


def test_a_killed_reader_is_replaced_and_the_new_one_continues_where_it_stopped():
    with ShmNamespace("ring5") as ns:
        ring = Ring.create(ns, "crash", slot_count=64, slot_bytes=32)
        for i in range(30):
            ring.put(f"{i}".encode())
        out = CTX.Queue()
        reader = CTX.Process(target=_reader, args=("ring5", "crash", 10, out))
        reader.start()
        first = [out.get(timeout=30) for _ in range(10)]
        os.kill(reader.pid, signal.SIGKILL)
        reader.join()
        for i in range(30, 40):
            ring.put(f"{i}".encode())
        again = Ring.attach("ring5", "crash", reader=True)
        rest = []
        while again.pending():
            rest.append(again.get(timeout=5).decode())
        assert first == [str(i) for i in range(10)]
        assert rest == [str(i) for i in range(10, 40)]


def test_a_reader_that_died_holding_a_count_does_not_strand_the_message():
    with ShmNamespace("ring6") as ns:
        ring = Ring.create(ns, "strand", slot_count=4, slot_bytes=32)
        ring.put(b"hello")
        ring._sem["used"].acquire(0)  # what a reader killed inside get() leaves behind
        with pytest.raises(RingEmptyError):
            ring.get(timeout=0.05)
        restarted = Ring.attach("ring6", "strand", reader=True)
        assert restarted.get(timeout=1) == b"hello"


def test_the_creator_removes_the_segment_and_semaphores():
    with ShmNamespace("ring7") as ns:
        Ring.create(ns, "gone", slot_count=2, slot_bytes=16)
        assert (SHM_DIR / "aegaeon-ring7-ring.gone").exists()
        assert (SHM_DIR / "sem.aegaeon-ring7-ring.gone.used").exists()
    assert not list(SHM_DIR.glob("*aegaeon-ring7-*"))
