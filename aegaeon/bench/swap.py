"""KV swap throughput vs a plain copy of the same bytes (with an emulated link, vs its rate), and how much a
decode step slows while swaps run."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from aegaeon.config.serving import EngineConfig
from aegaeon.engine.executor import StepExecutor
from aegaeon.models.sampler import SamplingParams
from aegaeon.profiler import sync, timed


@dataclass(frozen=True)
class SwapBench:
    device: str
    blocks: int
    block_bytes: int
    swap_out_s: float  # arena -> host, all blocks, one copy call
    swap_in_s: float  # host -> arena
    plain_copy_s: float  # one contiguous copy of the same bytes host -> device (pinned on a GPU)
    decode_step_s: float  # batch of 8, alone
    decode_step_with_swap_s: float  # the same while swaps run continuously
    link_gbps: float | None = None  # the emulated link, when there was one

    @property
    def achieved_gb_s(self) -> tuple[float, float]:
        """(out, in) bytes per second of the swaps, GB/s."""
        return self.nbytes / self.swap_out_s / 1e9, self.nbytes / self.swap_in_s / 1e9

    @property
    def nbytes(self) -> int:
        return self.blocks * self.block_bytes

    @property
    def ratio_to_plain_copy(self) -> float:
        return max(self.swap_out_s, self.swap_in_s) / self.plain_copy_s

    @property
    def decode_slowdown(self) -> float:
        return self.decode_step_with_swap_s / self.decode_step_s - 1


def bench_swap(
    model: Path,
    device: str = "cpu",
    blocks: int = 512,
    steps: int = 32,
    link_gbps: float | None = None,
) -> SwapBench:
    """KV swap throughput vs a plain copy, and the slowdown of decode steps while swaps run."""
    import threading

    with StepExecutor(
        {"m": model},
        EngineConfig(device=device, kv_bytes=256 * 2**20, steps_per_turn=1, link_gbps=link_gbps),
    ) as engine:
        engine.runner.switch_to("m")
        layout = engine.runner.entries["m"].kv
        handles = [engine.arena.allocate_block(layout.block_bytes) for _ in range(blocks)]
        nbytes = blocks * layout.block_bytes
        host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=device.startswith("cuda"))
        host_offsets = [i * layout.block_bytes for i in range(blocks)]
        swapper = engine.kv.swapper

        def swap(out: bool) -> None:
            if out:
                ticket = swapper.copy(
                    engine.arena.buffer, handles, host, host_offsets, layout.block_bytes
                )
            else:
                ticket = swapper.copy(
                    host, host_offsets, engine.arena.buffer, handles, layout.block_bytes
                )
            ticket.wait()
            if ticket.event is not None:
                ticket.event.synchronize()

        out_s = min(timed(device, lambda: swap(True)) for _ in range(5))
        in_s = min(timed(device, lambda: swap(False)) for _ in range(5))
        dst = torch.empty(nbytes, dtype=torch.uint8, device=device)
        plain_s = min(timed(device, lambda: dst.copy_(host, non_blocking=True)) for _ in range(5))

        seqs = list(range(8))
        for request_id in seqs:
            engine.add(
                request_id,
                "m",
                [3, 1, 4, 1, 5, 9, 2, 6],
                SamplingParams(max_tokens=2 * steps + 4, ignore_eos=True),
            )
        engine.step("m", seqs)  # prefill
        alone = _decode_steps(engine, seqs, steps, device)
        stop = threading.Event()
        background = threading.Thread(target=_swap_until, args=(stop, swap), name="bench-swap")
        background.start()
        busy = _decode_steps(engine, seqs, steps, device)
        stop.set()
        background.join()
        for handle in handles:
            engine.arena.free_block(handle)
    return SwapBench(
        device, blocks, layout.block_bytes, out_s, in_s, plain_s, alone, busy, link_gbps
    )


def _swap_until(stop, swap) -> None:
    out = True
    while not stop.is_set():
        swap(out)
        out = not out


def _decode_steps(engine: StepExecutor, seqs: list, steps: int, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        engine.step("m", seqs)
    sync(device)
    return (time.perf_counter() - start) / steps
