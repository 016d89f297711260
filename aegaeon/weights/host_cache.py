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
import struct
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
# Segment layout: a 4 KiB header (u32 magic, u32 version, u32 model count; at byte 64 one state
# byte per model: 0 loading, 1 ready, 2 failed), then each model's packed weights.
_HEADER_FORMAT = "<III"
_MAGIC, _VERSION = 0xAE6AE0B1, 1
_STATE_AT, _DATA_START = 64, 4096
_LOADING, _READY, _FAILED = 0, 1, 2
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
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[
            name
        ]
    except KeyError:
        raise ConfigError(
            f"dtype {name!r} is not supported: use float32, float16 or bfloat16"
        ) from None


class HostWeightCache:
    """Owner side: `HostWeightCache(namespace, checkpoints)` creates and fills the segment.
    Other processes of the node: `HostWeightCache.attach(cluster_id, checkpoints)` maps it read-mostly
    and waits on the per-model state bytes the owner sets."""

    def __init__(
        self, namespace: ShmNamespace, checkpoints: Iterable[Checkpoint], dtype: str | None = None
    ):
        """Lay out every model (in `dtype`, or each checkpoint's own when None) and create the segment."""
        self._lay_out(checkpoints, dtype)
        self.segment: SharedSegment = namespace.create_segment(SEGMENT_NAME, self.total_bytes)
        struct.pack_into(_HEADER_FORMAT, self.segment.buffer, 0, _MAGIC, _VERSION, len(self.models))
        self._start(owner=True)
        log.info(
            "host weight cache: %d models, %.1f MiB in /dev/shm",
            len(self.models),
            self.total_bytes / 2**20,
        )

    @classmethod
    def attach(
        cls, cluster_id: str, checkpoints: Iterable[Checkpoint], dtype: str | None = None
    ) -> "HostWeightCache":
        """Map the node's cache made by another process from the same checkpoints and dtype."""
        cache = cls.__new__(cls)
        cache._lay_out(checkpoints, dtype)
        cache.segment = ShmNamespace(cluster_id).attach_segment(SEGMENT_NAME)
        magic, version, count = struct.unpack_from(_HEADER_FORMAT, cache.segment.buffer, 0)
        if (magic, version, count) != (
            _MAGIC,
            _VERSION,
            len(cache.models),
        ) or cache.segment.size < cache.total_bytes:
            raise ConfigError(
                f"host weight cache of cluster {cluster_id} holds {count} models in {cache.segment.size} bytes, "
                f"not the {len(cache.models)} models in {cache.total_bytes} bytes asked for: attach with the same "
                f"checkpoints, order and dtype as the process that made it"
            )
        cache._start(owner=False)
        return cache

    def _lay_out(self, checkpoints: Iterable[Checkpoint], dtype: str | None) -> None:
        self.models: dict[str, CachedModel] = {}
        offset = _DATA_START
        for ckpt in checkpoints:
            if ckpt.name in self.models:
                raise ConfigError(
                    f"model {ckpt.name} is registered twice: give each model a distinct name"
                )
            layout = WeightLayout.for_config(ckpt.config, resolve_dtype(dtype or ckpt.config.dtype))
            self.models[ckpt.name] = CachedModel(ckpt, layout, offset)
            offset += -(-layout.total_bytes // ALIGN) * ALIGN
        if not self.models:
            raise ConfigError("no models to cache: register at least one checkpoint")
        if len(self.models) > _DATA_START - _STATE_AT:
            raise ConfigError(
                f"{len(self.models)} models exceed the {_DATA_START - _STATE_AT} a cache can index"
            )
        self.total_bytes = offset
        self._index = {name: i for i, name in enumerate(self.models)}

    def _start(self, owner: bool) -> None:
        self.owner = owner
        self._ready = {name: threading.Event() for name in self.models}
        self._errors: dict[str, Exception] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.load_stats: dict[str, LoadStats] = {}
        self._pinned_at: int | None = None

    def _state(self, model: str) -> int:
        return self.segment.buffer[_STATE_AT + self._index[model]]

    def _set_state(self, model: str, state: int) -> None:
        self.segment.buffer[_STATE_AT + self._index[model]] = state

    def region(self, model: str) -> torch.Tensor:
        """The model's packed weights as a uint8 tensor view of the segment."""
        entry = self._entry(model)
        return self.segment.as_tensor(torch.uint8, (entry.layout.total_bytes,), entry.offset)

    def _entry(self, model: str) -> CachedModel:
        try:
            return self.models[model]
        except KeyError:
            raise ConfigError(
                f"model {model} is not in the host weight cache: known {sorted(self.models)}"
            ) from None

    def start_prefetch(
        self, order: list[str] | None = None, progress: ProgressFn | None = None
    ) -> None:
        """Load every model in the background, in `order` first (the rest after, as registered)."""
        self._require_owner("prefetch")
        order = list(order or [])
        for name in order:
            self._entry(name)
        order += [name for name in self.models if name not in order]
        self._thread = threading.Thread(
            target=self._prefetch, args=(order, progress), name="weight-prefetch", daemon=True
        )
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
        self._require_owner("load")
        try:
            done = 0
            itemsize = torch.empty((), dtype=entry.layout.dtype).element_size()
            total = entry.layout.total_bytes
            start = time.perf_counter()
            self.segment.populate(entry.offset, total)
            populated = time.perf_counter()
            sources = sorted(
                entry.checkpoint.tensors.values(), key=lambda s: (str(s.file), s.offset)
            )
            for source in sources:
                if self._stop.is_set():
                    self._errors[model] = CheckpointError(
                        f"model {model}: the cache was closed while loading"
                    )
                    return
                slot = entry.layout.slots.get(source.name)
                if slot is None:
                    continue  # e.g. rotary caches some checkpoints carry
                self._copy_tensor(source, entry.offset + slot.offset, entry.layout.dtype)
                done += slot.nbytes(itemsize)
                if progress:
                    progress(model, done, total)
            self.load_stats[model] = LoadStats(populated - start, time.perf_counter() - populated)
            self._set_state(model, _READY)
        except (OSError, CheckpointError, RuntimeError) as err:
            self._errors[model] = CheckpointError(f"model {model}: loading weights failed: {err}")
            self._set_state(model, _FAILED)
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
        if not self.owner:
            self._wait_attached(model, timeout)
            return
        if not self._ready[model].is_set() and self._thread is None:
            self.load(model)
        if not self._ready[model].wait(timeout):
            raise TimeoutError(f"model {model}: weights not loaded within {timeout} s")
        if model in self._errors:
            raise self._errors[model]

    def _wait_attached(self, model: str, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._state(model) == _LOADING:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"model {model}: weights not loaded within {timeout} s")
            time.sleep(0.001)
        if self._state(model) == _FAILED:
            raise CheckpointError(
                f"model {model}: the process that owns the weight cache failed to load it"
            )

    def is_ready(self, model: str) -> bool:
        if not self.owner:
            return self._state(model) == _READY
        return self._ready[model].is_set() and model not in self._errors

    def _require_owner(self, what: str) -> None:
        if not self.owner:
            raise ConfigError(
                f"{what}: only the process that created the weight cache loads into it"
            )

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
        if not self.owner:
            self.segment.close()  # the owner's namespace unlinks the segment
