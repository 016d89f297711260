"""The node's host weight cache: every registered model's weights in one
POSIX shared-memory segment, packed by `WeightLayout`.

Weights are read from safetensors once, straight into the segment (no
intermediate buffer when the dtype is kept), in a background thread in a
configurable prefetch order. A worker switches model by copying a model's
region from here into its arena in one contiguous copy. Any process of the
node can attach the segment by name; only the owner (the launcher, or the
one-process engine) creates and unlinks it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from aegaeon.errors import CheckpointError, ConfigError
from aegaeon.ipc.shm import SharedSegment, ShmNamespace
from aegaeon.weights.checkpoint import Checkpoint, TensorSource
from aegaeon.weights.layout import ALIGN, WeightLayout

log = logging.getLogger(__name__)

SEGMENT_NAME = "weights"
ProgressFn = Callable[[str, int, int], None]  # model, bytes done, bytes of that model


@dataclass(frozen=True)
class LoadStats:
    populate_s: float  # faulting in the model's shm pages (first touch of tmpfs memory)
    copy_s: float  # reading the checkpoint into them


@dataclass(frozen=True)
class CachedModel:
    checkpoint: Checkpoint
    layout: WeightLayout
    offset: int  # of the model's region in the segment

    @property
    def name(self) -> str:
        return self.checkpoint.name


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]
    except KeyError:
        raise ConfigError(f"dtype {name!r} is not supported: use float32, float16 or bfloat16") from None


class HostWeightCache:
    def __init__(self, namespace: ShmNamespace, checkpoints: Iterable[Checkpoint], dtype: str | None = None):
        """Lay out every model (in `dtype`, or each checkpoint's own when None) and create the segment."""
        self.models: dict[str, CachedModel] = {}
        offset = 0
        for ckpt in checkpoints:
            if ckpt.name in self.models:
                raise ConfigError(f"model {ckpt.name} is registered twice: give each model a distinct name")
            layout = WeightLayout.for_config(ckpt.config, resolve_dtype(dtype or ckpt.config.dtype))
            self.models[ckpt.name] = CachedModel(ckpt, layout, offset)
            offset += -(-layout.total_bytes // ALIGN) * ALIGN
        if not self.models:
            raise ConfigError("no models to cache: register at least one checkpoint")
        self.total_bytes = offset
        self.segment: SharedSegment = namespace.create_segment(SEGMENT_NAME, offset)
        self._ready = {name: threading.Event() for name in self.models}
        self._errors: dict[str, Exception] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.load_stats: dict[str, LoadStats] = {}
        self._pinned_at: int | None = None
        log.info("host weight cache: %d models, %.1f MiB in /dev/shm", len(self.models), offset / 2**20)

    def region(self, model: str) -> torch.Tensor:
        """The model's packed weights as a uint8 tensor view of the segment."""
        entry = self._entry(model)
        return self.segment.as_tensor(torch.uint8, (entry.layout.total_bytes,), entry.offset)

    def _entry(self, model: str) -> CachedModel:
        try:
            return self.models[model]
        except KeyError:
            raise ConfigError(f"model {model} is not in the host weight cache: known {sorted(self.models)}") from None

    def start_prefetch(self, order: list[str] | None = None, progress: ProgressFn | None = None) -> None:
        """Load every model in the background, in `order` first (the rest after, as registered)."""
        order = list(order or [])
        for name in order:
            self._entry(name)
        order += [name for name in self.models if name not in order]
        self._thread = threading.Thread(target=self._prefetch, args=(order, progress), name="weight-prefetch",
                                        daemon=True)
        self._thread.start()

    def _prefetch(self, order: list[str], progress: ProgressFn | None) -> None:
        for name in order:
            if self._stop.is_set():
                return
            if not self._ready[name].is_set():
                self.load(name, progress)

    def load(self, model: str, progress: ProgressFn | None = None) -> None:
        """Load one model now (idempotent); failures are kept and raised by `wait`."""
        entry = self._entry(model)
        try:
            done = 0
            itemsize = torch.empty((), dtype=entry.layout.dtype).element_size()
            total = entry.layout.total_bytes
            start = time.perf_counter()
            self.segment.populate(entry.offset, total)
            populated = time.perf_counter()
            sources = sorted(entry.checkpoint.tensors.values(), key=lambda s: (str(s.file), s.offset))
            for source in sources:
                if self._stop.is_set():
                    self._errors[model] = CheckpointError(f"model {model}: the cache was closed while loading")
                    return
                slot = entry.layout.slots.get(source.name)
                if slot is None:
                    continue  # e.g. rotary caches some checkpoints carry
                self._copy_tensor(source, entry.offset + slot.offset, entry.layout.dtype)
                done += slot.nbytes(itemsize)
                if progress:
                    progress(model, done, total)
            self.load_stats[model] = LoadStats(populated - start, time.perf_counter() - populated)
        except (OSError, CheckpointError, RuntimeError) as err:
            self._errors[model] = CheckpointError(f"model {model}: loading weights failed: {err}")
            log.error("%s", self._errors[model])
        finally:
            self._ready[model].set()

    def _copy_tensor(self, source: TensorSource, offset: int, dtype: torch.dtype) -> None:
        src_dtype = resolve_dtype(source.dtype)
        with open(source.file, "rb") as f:
            f.seek(source.offset)
            if src_dtype == dtype:
                target = self.segment.as_numpy("uint8", (source.nbytes,), offset)
                read = f.readinto(memoryview(target))
                if read != source.nbytes:
                    raise CheckpointError(f"{source.file}: truncated in tensor {source.name}")
                return
            raw = f.read(source.nbytes)
        if len(raw) != source.nbytes:
            raise CheckpointError(f"{source.file}: truncated in tensor {source.name}")
        converted = torch.frombuffer(bytearray(raw), dtype=src_dtype).to(dtype)
        count = converted.numel()
        self.segment.as_tensor(dtype, (count,), offset).copy_(converted)

    def wait(self, model: str, timeout: float | None = None) -> None:
        """Block until the model is in the cache; raise its load error if it failed."""
        self._entry(model)
        if not self._ready[model].is_set() and self._thread is None:
            self.load(model)
        if not self._ready[model].wait(timeout):
            raise TimeoutError(f"model {model}: weights not loaded within {timeout} s")
        if model in self._errors:
            raise self._errors[model]

    def is_ready(self, model: str) -> bool:
        return self._ready[model].is_set() and model not in self._errors

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def pin(self) -> None:
        """Page-lock the whole segment for DMA (once per process; undone by `close`)."""
        if self._pinned_at is not None:
            return
        from aegaeon.native import _C

        address = self.segment.as_numpy("uint8", (self.total_bytes,)).ctypes.data
        _C.register_host_memory(address, self.total_bytes)
        self._pinned_at = address
        log.info("host weight cache page-locked (%.1f MiB)", self.total_bytes / 2**20)

    def close(self) -> None:
        """Stop prefetching and unpin; the segment itself goes with its namespace."""
        self._stop.set()
        self.join()
        if self._pinned_at is not None:
            from aegaeon.native import _C

            _C.unregister_host_memory(self._pinned_at)
            self._pinned_at = None
