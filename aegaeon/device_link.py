"""The host<->device link of one instance, and its emulation on CPU.

On a GPU, weights and KV blocks cross PCIe; a CPU instance's "device" is host memory, so its copies run at
memory speed, a switch costs a tenth of a decode step and no live run on CPU is in the regime where
token-level scaling matters. `EmulatedLink(gbps)` paces every transfer of a CPU instance to `gbps`
gigabytes per second: a transfer of n bytes takes n / G seconds (or longer, if the copy itself is slower).
The link is one FIFO channel, as a DMA engine is: a transfer starts when the one before it has ended.
Pacing sleeps on the thread that issued the copy (the KV swap thread, or the switching thread), so it holds
no CPU: other instances compute meanwhile, and work not waiting on the transfer may run.

A test and benchmark instrument for machines without an accelerator; never on unless asked for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from aegaeon.errors import ConfigError


class DeviceLink:
    """A real link: transfers take what the copy takes."""

    gbps: float | None = None

    def transfer(self, nbytes: int, copy: Callable[[], None]) -> float:
        """Run `copy` (moving `nbytes`); returns the seconds the transfer took."""
        began = time.perf_counter()
        copy()
        return time.perf_counter() - began

    def transfer_chunks(
        self, chunks: list[tuple[int, Callable[[], None]]], landed: Callable[[int], None]
    ) -> float:
        """Run the chunks' copies in order as one transfer, calling `landed(bytes so far)` after each has
        arrived; returns the seconds the whole transfer took."""
        began, done = time.perf_counter(), 0
        for nbytes, copy in chunks:
            copy()
            done += nbytes
            landed(done)
        return time.perf_counter() - began

    def describe(self) -> str:
        return "native"


class EmulatedLink(DeviceLink):
    def __init__(self, gbps: float):
        if not gbps > 0:
            raise ConfigError(
                f"--link-gbps {gbps}: the emulated link's bandwidth must be positive (GB/s)"
            )
        self.gbps = float(gbps)
        self._lock = threading.Lock()
        self._free_at = 0.0  # when the channel has finished the transfers queued on it

    def transfer(self, nbytes: int, copy: Callable[[], None]) -> float:
        began = time.perf_counter()
        with self._lock:
            start = max(began, self._free_at)
            self._free_at = start + nbytes / (self.gbps * 1e9)
            done_at = self._free_at
        copy()
        left = done_at - time.perf_counter()
        if left > 0:
            time.sleep(left)
        return time.perf_counter() - began

    def transfer_chunks(
        self, chunks: list[tuple[int, Callable[[], None]]], landed: Callable[[int], None]
    ) -> float:
        # the channel is booked for the whole transfer at once, as a DMA engine queues all of a copy's
        # chunks: a transfer issued meanwhile waits behind the last chunk, not between two
        began = time.perf_counter()
        with self._lock:
            at = max(began, self._free_at)
            arrivals = []
            for nbytes, _ in chunks:
                at += nbytes / (self.gbps * 1e9)
                arrivals.append(at)
            self._free_at = at
        done = 0
        for (nbytes, copy), arrival in zip(chunks, arrivals):
            copy()
            left = arrival - time.perf_counter()
            if left > 0:
                time.sleep(left)
            done += nbytes
            landed(done)
        return time.perf_counter() - began

    def describe(self) -> str:
        return f"emulated at {self.gbps:g} GB/s"


def make_link(gbps: float | None) -> DeviceLink:
    return EmulatedLink(gbps) if gbps else DeviceLink()
