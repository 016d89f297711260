"""Asynchronous KV block copies between the arena and host memory.

`BlockSwapper.copy` starts one gather/scatter of many blocks and returns a
`SwapTicket`. On a GPU the copy is one kernel launch on a side stream (after
the side stream waits for the work already queued on the compute stream), and
the ticket holds a CUDA event: `ticket.wait()` makes the *current* stream wait
on it, so the decode step that needs the blocks is ordered after the copy
without a device-wide synchronisation. On a CPU the copy runs on a worker
thread (the C++ loop releases the GIL), paced by the instance's link when it
is emulated (aegaeon.device_link), and `wait()` joins it. Both paths run
the same `aegaeon._C.copy_blocks`, which checks every offset first.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from aegaeon.device_link import DeviceLink
from aegaeon.native import _C


@dataclass
class SwapTicket:
    nbytes: int
    event: "torch.cuda.Event | None" = None
    future: Future | None = None
    started: "torch.cuda.Event | None" = (
        None  # GPU: timing event recorded just before the copy kernel
    )
    buffers: tuple = ()  # GPU: source and destination, kept alive until the kernel has run

    def wait(self) -> None:
        """Order the caller after the copy (GPU: stream wait; CPU: join)."""
        if self.event is not None:
            torch.cuda.current_stream().wait_event(self.event)
        elif self.future is not None:
            self.future.result()

    def done(self) -> bool:
        if self.event is not None:
            return self.event.query()
        return self.future is None or self.future.done()

    def seconds(self) -> float | None:
        """How long the copy itself took (device time on GPU, thread time on CPU); None until it is done."""
        if not self.done():
            return None
        if self.event is not None:
            return (
                self.started.elapsed_time(self.event) / 1000.0 if self.started is not None else None
            )
        return self.future.result() if self.future is not None else 0.0


class BlockSwapper:
    def __init__(self, device: torch.device | str, link: DeviceLink | None = None):
        self.device = torch.device(device)
        self.link = link or DeviceLink()
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._pool = (
            ThreadPoolExecutor(1, thread_name_prefix="kv-swap") if self._stream is None else None
        )

    def copy(
        self,
        src: torch.Tensor,
        src_offsets: list[int],
        dst: torch.Tensor,
        dst_offsets: list[int],
        block_bytes: int,
    ) -> SwapTicket:
        """Copy block i from src[src_offsets[i]:] to dst[dst_offsets[i]:] (1-D uint8 buffers)."""
        src_off = torch.tensor(src_offsets, dtype=torch.int64)
        dst_off = torch.tensor(dst_offsets, dtype=torch.int64)
        nbytes = len(src_offsets) * block_bytes
        if self._stream is None:
            future = self._pool.submit(
                self.link.transfer,
                nbytes,
                lambda: _C.copy_blocks(src, src_off, dst, dst_off, block_bytes),
            )
            return SwapTicket(nbytes, future=future)
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            started = torch.cuda.Event(enable_timing=True)
            started.record(self._stream)
            _C.copy_blocks(src, src_off.pin_memory(), dst, dst_off.pin_memory(), block_bytes)
            event = torch.cuda.Event(enable_timing=True)
            event.record(self._stream)
        return SwapTicket(nbytes, event=event, started=started, buffers=(src, dst))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
