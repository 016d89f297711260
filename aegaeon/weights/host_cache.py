"""The node's host weight cache: each registered model's weights in a POSIX shared-memory segment of its
own, packed by `WeightLayout`; for a tensor-parallel degree N, the N ranks' shards side by side in that
segment (each contiguous, sliced from the checkpoint while loading), so each rank's switch is one copy.

Weights are read from safetensors once, straight into the segment (no intermediate buffer when the dtype
is kept), in a background thread in a configurable prefetch order. A worker switches model by copying a
model's region from here into its arena in one contiguous copy. Any process of the node can attach a
model's segment by name; only the owner (the launcher, or the one-process engine) creates and unlinks
them. A segment per model is what lets a running node add a model (`add`, then `load`) and remove one
(`remove`) without touching the others: a worker that still maps a removed segment keeps valid memory
until it lets go.

Longer than 300 lines, on purpose: the owner's side (create, load, add, remove) and an attached process's
side (attach, wait, detach) read and write the same per-model segment headers and ready flags, and split
apart each would have to make that bookkeeping public.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

from aegaeon.errors import CheckpointError, ConfigError, SharedMemoryError
from aegaeon.ipc.shm import SharedSegment, ShmNamespace
from aegaeon.parallel.shard import rank_config, shard_tensor
from aegaeon.weights.checkpoint import Checkpoint, TensorSource
from aegaeon.weights.layout import ALIGN, WeightLayout

log = logging.getLogger(__name__)

# A segment: a 4 KiB header (u32 magic, u32 version, u64 weight bytes of one shard, u32 name length; at byte
# 24 the u32 tensor-parallel degree; at byte 64 the state byte: 0 loading, 1 ready, 2 failed; at byte 128 the
# model's name in UTF-8), then the packed weights of each shard, rank by rank.
# The name in the header lets a process that attaches check it maps the model it asked for.
_HEADER_FORMAT = "<IIQI"
_MAGIC, _VERSION = 0xAE6AE0B1, 3
_TP_AT, _STATE_AT, _NAME_AT, _DATA_START = 24, 64, 128, 4096
MAX_NAME_BYTES = _DATA_START - _NAME_AT
_LOADING, _READY, _FAILED = 0, 1, 2
ProgressFn = Callable[[str, int, int], None]  # model, bytes done, bytes of that model


def segment_name(sequence: int) -> str:
    """The shm name of the `sequence`-th model the owner registered (start-up models first, in order)."""
    return f"weights.{sequence}"


@dataclass(frozen=True)
class LoadStats:
    populate_s: float  # faulting in the model's shm pages (first touch of tmpfs memory)
    copy_s: float  # reading the checkpoint into them


@dataclass(frozen=True)
class CachedModel:
    checkpoint: Checkpoint
    layout: WeightLayout
    segment: SharedSegment
    segment_name: str

    @property
    def name(self) -> str:
        return self.checkpoint.name

    @property
    def shard_stride(self) -> int:
        return -(-self.layout.total_bytes // ALIGN) * ALIGN

    @property
    def offset(self) -> int:
        """Of this process's shard's weights in the segment (the whole model's at TP 1)."""
        return _DATA_START + self.checkpoint.config.tp_rank * self.shard_stride

    @property
    def segment_bytes(self) -> int:
        return _DATA_START + self.checkpoint.config.tp_size * self.shard_stride


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[
            name
        ]
    except KeyError:
        raise ConfigError(
            f"dtype {name!r} is not supported: use float32, float16 or bfloat16"
        ) from None


def cached_bytes(checkpoint: Checkpoint, dtype: str | None = None) -> int:
    """The shared memory a model takes in the cache (header, every shard and alignment included)."""
    layout = WeightLayout.for_config(
        checkpoint.config, resolve_dtype(dtype or checkpoint.config.dtype)
    )
    return _DATA_START + checkpoint.config.tp_size * (-(-layout.total_bytes // ALIGN) * ALIGN)


class HostWeightCache:
    """Owner side: `HostWeightCache(namespace, checkpoints)` creates a segment per model and fills them;
    `add` and `remove` change the set while it runs. Other processes of the node:
    `HostWeightCache.attach(cluster_id, checkpoints)` maps the models' segments and waits on their state
    bytes, which the owner sets; `attach_model` and `detach_model` follow the owner's changes."""

    def __init__(
        self, namespace: ShmNamespace, checkpoints: Iterable[Checkpoint], dtype: str | None = None
    ):
        """Lay out every model (in `dtype`, or each checkpoint's own when None) and create its segment."""
        self._start(owner=True, dtype=dtype)
        self.namespace = namespace
        self._next_sequence = 0
        try:
            for ckpt in checkpoints:
                self.add(ckpt)
        except BaseException:
            self._drop_all()
            raise
        if not self.models:
            raise ConfigError("no models to cache: register at least one checkpoint")
        log.info(
            "host weight cache: %d models, %.1f MiB in /dev/shm",
            len(self.models),
            self.total_bytes / 2**20,
        )

    @classmethod
    def attach(
        cls,
        cluster_id: str,
        checkpoints: Iterable[Checkpoint],
        dtype: str | None = None,
        segments: Mapping[str, str] | None = None,
    ) -> "HostWeightCache":
        """Map the node's cache made by another process from the same checkpoints and dtype. `segments`
        names each model's segment (the owner's `segment_names()`); without it the models are the owner's
        first ones, in the order it registered them."""
        cache = cls.__new__(cls)
        cache._start(owner=False, dtype=dtype)
        cache.cluster_id = cluster_id
        try:
            for i, ckpt in enumerate(checkpoints):
                name = segments[ckpt.name] if segments is not None else segment_name(i)
                cache.attach_model(ckpt, name)
        except BaseException:
            cache.close()
            raise
        return cache

    def _start(self, owner: bool, dtype: str | None) -> None:
        self.owner = owner
        self.dtype = dtype
        self.models: dict[str, CachedModel] = {}
        self._ready: dict[str, threading.Event] = {}
        self._errors: dict[str, Exception] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self.load_stats: dict[str, LoadStats] = {}
        self._pinned: dict[str, int] = {}  # model -> address registered for DMA
        self._pin_new = False
        self._prefetching: set[str] = set()

    def _layout(self, ckpt: Checkpoint) -> WeightLayout:
        if ckpt.name in self.models:
            raise ConfigError(
                f"model {ckpt.name} is registered twice: give each model a distinct name"
            )
        if len(ckpt.name.encode()) > MAX_NAME_BYTES:
            raise ConfigError(f"model name {ckpt.name[:40]!r}... is over {MAX_NAME_BYTES} bytes")
        return WeightLayout.for_config(ckpt.config, resolve_dtype(self.dtype or ckpt.config.dtype))

    @property
    def total_bytes(self) -> int:
        return sum(entry.segment_bytes for entry in self.models.values())

    def segment_names(self) -> dict[str, str]:
        return {name: entry.segment_name for name, entry in self.models.items()}

    # ---- the set of models ----------------------------------------------------------------------------

    def add(self, checkpoint: Checkpoint) -> CachedModel:
        """Owner: create the model's segment (not yet loaded: `load` or the prefetch thread fills it)."""
        self._require_owner("add")
        layout = self._layout(checkpoint)
        name = segment_name(self._next_sequence)
        self._next_sequence += 1
        size = cached_bytes(checkpoint, self.dtype)
        segment = self.namespace.create_segment(name, size)
        encoded = checkpoint.name.encode()
        struct.pack_into(
            _HEADER_FORMAT, segment.buffer, 0, _MAGIC, _VERSION, layout.total_bytes, len(encoded)
        )
        struct.pack_into("<I", segment.buffer, _TP_AT, checkpoint.config.tp_size)
        segment.buffer[_NAME_AT : _NAME_AT + len(encoded)] = encoded
        entry = CachedModel(checkpoint, layout, segment, name)
        self._install(entry)
        if self._pin_new:
            self._pin_entry(entry)
        return entry

    def attach_model(self, checkpoint: Checkpoint, name: str) -> CachedModel:
        """Not the owner: map the segment `name` the owner made for `checkpoint`."""
        if self.owner:
            raise ConfigError("attach_model: the owner adds models with add()")
        layout = self._layout(checkpoint)
        try:
            segment = ShmNamespace(self.cluster_id).attach_segment(name)
        except SharedMemoryError as err:
            raise ConfigError(
                f"model {checkpoint.name}: the node's weight cache has no segment {name} ({err}): "
                f"the model was removed, or this process belongs to another run"
            ) from None
        magic, version, nbytes, name_len = struct.unpack_from(_HEADER_FORMAT, segment.buffer, 0)
        held = bytes(segment.buffer[_NAME_AT : _NAME_AT + min(name_len, MAX_NAME_BYTES)])
        (tp_size,) = struct.unpack_from("<I", segment.buffer, _TP_AT)
        if (magic, version, nbytes, held, tp_size) != (
            _MAGIC,
            _VERSION,
            layout.total_bytes,
            checkpoint.name.encode(),
            checkpoint.config.tp_size,
        ):
            segment.close()
            raise ConfigError(
                f"the weight cache segment {name} of cluster {self.cluster_id} holds "
                f"{held.decode(errors='replace')!r} in {nbytes} bytes per shard at TP {tp_size}, not model "
                f"{checkpoint.name} in {layout.total_bytes} at TP {checkpoint.config.tp_size}: attach with "
                f"the same checkpoints, names, dtype and tensor-parallel degree as the owner"
            )
        entry = CachedModel(checkpoint, layout, segment, name)
        self._install(entry)
        if self._pin_new:
            self._pin_entry(entry)
        return entry

    def _install(self, entry: CachedModel) -> None:
        with self._lock:
            self.models[entry.name] = entry
            self._ready[entry.name] = threading.Event()

    def remove(self, model: str) -> None:
        """Owner: forget the model and unlink its segment (processes that map it keep their mapping)."""
        self._require_owner("remove")
        entry = self._entry(model)
        if not self._ready[model].is_set() and self._thread is not None:
            self._ready[model].wait()  # the prefetch thread is filling it: let it finish first
        self._drop(entry, unlink=True)

    def detach_model(self, model: str) -> None:
        """Not the owner: stop using the model's segment."""
        self._drop(self._entry(model), unlink=False)

    def _drop(self, entry: CachedModel, unlink: bool) -> None:
        self._unpin(entry.name)
        with self._lock:
            del self.models[entry.name]
            self._ready.pop(entry.name, None)
            self._errors.pop(entry.name, None)
            self.load_stats.pop(entry.name, None)
        if unlink:
            self.namespace.remove_segment(entry.segment)
        else:
            entry.segment.close()

    def _drop_all(self) -> None:
        for entry in list(self.models.values()):
            self._drop(entry, unlink=self.owner)

    # ---- state bytes -----------------------------------------------------------------------------------

    def _state(self, model: str) -> int:
        return self._entry(model).segment.buffer[_STATE_AT]

    def _set_state(self, model: str, state: int) -> None:
        self._entry(model).segment.buffer[_STATE_AT] = state

    def region(self, model: str) -> torch.Tensor:
        """The model's packed weights as a uint8 tensor view of its segment."""
        entry = self._entry(model)
        return entry.segment.as_tensor(torch.uint8, (entry.layout.total_bytes,), entry.offset)

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
        self._prefetching = set(order)
        self._thread = threading.Thread(
            target=self._prefetch, args=(order, progress), name="weight-prefetch", daemon=True
        )
        self._thread.start()

    def _prefetch(self, order: list[str], progress: ProgressFn | None) -> None:
        for name in order:
            if self._stop.is_set():
                return
            if name in self.models:  # not removed meanwhile
                self.load(name, progress)

    def load(self, model: str, progress: ProgressFn | None = None) -> None:
        """Load one model now (idempotent); failures are kept and raised by `wait`."""
        self._require_owner("load")
        with (
            self._load_lock
        ):  # the prefetch thread and a model added at run time never load one twice
            entry = self._entry(model)
            if not self._ready[model].is_set():
                self._load(entry, progress)

    def _load(self, entry: CachedModel, progress: ProgressFn | None) -> None:
        model = entry.name
        try:
            done = 0
            itemsize = torch.empty((), dtype=entry.layout.dtype).element_size()
            shards = entry.checkpoint.config.tp_size
            total = entry.layout.total_bytes * shards
            start = time.perf_counter()
            entry.segment.populate(_DATA_START, entry.segment_bytes - _DATA_START)
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
                if shards == 1:
                    self._copy_tensor(
                        entry.segment, source, entry.offset + slot.offset, entry.layout.dtype
                    )
                else:
                    self._copy_shards(entry, source, slot.offset)
                done += slot.nbytes(itemsize) * shards
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

    def _copy_tensor(
        self, segment: SharedSegment, source: TensorSource, offset: int, dtype: torch.dtype
    ) -> None:
        src_dtype = resolve_dtype(source.dtype)
        with open(source.file, "rb") as f:
            f.seek(source.offset)
            if src_dtype == dtype:
                target = segment.as_numpy("uint8", (source.nbytes,), offset)
                read = f.readinto(memoryview(target))
                if read != source.nbytes:
                    raise CheckpointError(f"{source.file}: truncated in tensor {source.name}")
                return
            raw = f.read(source.nbytes)
        if len(raw) != source.nbytes:
            raise CheckpointError(f"{source.file}: truncated in tensor {source.name}")
        converted = torch.frombuffer(bytearray(raw), dtype=src_dtype).to(dtype)
        count = converted.numel()
        segment.as_tensor(dtype, (count,), offset).copy_(converted)

    def _copy_shards(self, entry: CachedModel, source: TensorSource, slot_offset: int) -> None:
        """Every rank's slice of one tensor (read once), each into its shard's slot."""
        with open(source.file, "rb") as f:
            f.seek(source.offset)
            raw = f.read(source.nbytes)
        if len(raw) != source.nbytes:
            raise CheckpointError(f"{source.file}: truncated in tensor {source.name}")
        full = torch.frombuffer(bytearray(raw), dtype=resolve_dtype(source.dtype))
        full = full.view(source.shape)
        shard = entry.checkpoint.config
        for rank in range(shard.tp_size):
            part = shard_tensor(source.name, full, rank_config(shard, rank))
            offset = _DATA_START + rank * entry.shard_stride + slot_offset
            target = entry.segment.as_tensor(entry.layout.dtype, tuple(part.shape), offset)
            target.copy_(part)

    def wait(self, model: str, timeout: float | None = None) -> None:
        """Block until the model is in the cache; raise its load error if it failed."""
        self._entry(model)
        if not self.owner:
            self._wait_attached(model, timeout)
            return
        ready = self._ready[model]
        if not ready.is_set() and model not in self._prefetching:
            self.load(model)  # not the prefetch thread's to load (none runs, or it was added later)
        if not ready.wait(timeout):
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
        """Page-lock every model's segment for DMA, and those added later (undone by `close`)."""
        self._pin_new = True
        for entry in list(self.models.values()):
            self._pin_entry(entry)

    def _pin_entry(self, entry: CachedModel) -> None:
        if entry.name in self._pinned:
            return
        from aegaeon.native import _C

        address = entry.segment.as_numpy("uint8", (entry.segment.size,)).ctypes.data
        _C.register_host_memory(address, entry.segment.size)
        self._pinned[entry.name] = address
        log.info(
            "host weights of %s page-locked (%.1f MiB)", entry.name, entry.segment.size / 2**20
        )

    def _unpin(self, model: str) -> None:
        address = self._pinned.pop(model, None)
        if address is not None:
            from aegaeon.native import _C

            _C.unregister_host_memory(address)

    def close(self) -> None:
        """Stop prefetching, unpin, and unmap; the owner's segments go with its namespace."""
        self._stop.set()
        self.join()
        for model in list(self._pinned):
            self._unpin(model)
        if not self.owner:
            for entry in self.models.values():
                entry.segment.close()
