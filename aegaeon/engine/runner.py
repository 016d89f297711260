"""The model runner: one arena, one model bound at a time, switched in place.

Every registered model keeps its model object (aegaeon.models.registry), weight layout and KV
layout for the life of the runner (component reuse). Switching to a model
sizes the arena's weight region, moves or swaps out KV blocks in the way,
copies the model's packed weights from the host cache in one contiguous copy
and re-binds the parameter views. Nothing is re-initialised.

Prefetch (`enable_prefetch`): the runner keeps a second weight slot, a staging buffer sized for the largest
model, next to the arena's weight region. `prefetch(model)` copies a model into the slot the bound model is
not in, asynchronously (a copy stream with an event on a GPU, a copy thread on CPU, paced by the emulated
link when one is on), and a switch to it only waits for what is not yet copied and re-binds the views. The
slots alternate. The arena's slot takes a prefetch only when the model fits its weight region as it is, so
a prefetch never moves or swaps out KV (KV has priority). A model whose weights are still intact in the other
slot (it ran the turn before last) is resident: switching back to it only re-binds, and a prefetch of it
copies nothing; the next copy into that slot evicts it (the slot goes to the model of the next turn).

Residency (`enable_residency`, beyond the paper): instead of one weight region and a staging slot, each
model's weights are copied into a run of arena slabs the KV cache is not using (aegaeon.engine.resident) and
stay there after its turn, so switching back to any of them only re-binds. Prefetches copy into runs too.
A new run evicts the fewest resident models that make enough contiguous slabs; the weight region is used
only when no eviction can (KV blocks between the runs; then KV is moved or swapped out as without
residency), and it becomes a run again at the next switch. KV has priority: when a block cannot be
allocated, a resident model is evicted first (`KVCacheManager.reclaim`).

Layer-wise readiness (`enable_layerwise`, beyond the paper): every copy runs in stages (aegaeon.engine.layerwise)
and a switch binds the model before its copy has landed; the copy is then `landing`, its forwards wait layer by
layer, and the forward after which it has landed (or the next switch, which waits for it) completes the switch's
record.

Longer than 300 lines, on purpose: switching, prefetching, the two slots, the resident runs and the landing
copy read and write the same state (the bound model and where it lies, which slot or run holds which model,
the copies in flight), which one class keeps consistent.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from aegaeon.arena import Arena
from aegaeon.device_link import DeviceLink
from aegaeon.engine.layerwise import CopyProgress, copy_chunks, stage_ends
from aegaeon.engine.resident import ResidentWeights
from aegaeon.errors import IntegrityError
from aegaeon.kv.batch import SeqChunk, build_step
from aegaeon.kv.layout import KVLayout
from aegaeon.kv.manager import KVCacheManager
from aegaeon.models.registry import build_model
from aegaeon.sequence import Sequence
from aegaeon.weights.checkpoint import Checkpoint
from aegaeon.weights.host_cache import HostWeightCache
from aegaeon.weights.layout import WeightLayout

log = logging.getLogger(__name__)


@dataclass
class ModelEntry:
    name: str
    checkpoint: Checkpoint
    weights: WeightLayout
    kv: KVLayout
    model: Any  # the family's implementation (aegaeon.models.registry.build_model)
    kv_units: torch.Tensor  # the arena as units of this model's KV rows

    @property
    def max_position(self) -> int:
        return self.checkpoint.config.max_position


@dataclass
class SwitchRecord:
    model: str
    seconds: float
    bytes_copied: int
    kv_moved: int
    kv_swapped_out: int
    # Where the time went (seconds): waiting for the host cache to hold the weights (not part of `seconds`),
    # moving or swapping KV out of the weight region, the weight copy, re-binding the parameter views.
    # On a GPU the copy is asynchronous, so its stage is the time to queue it; it completes before the next
    # forward on the same stream.
    stages: dict[str, float] = field(default_factory=dict)
    # the whole weight copy's seconds when a prefetch made it (it overlapped the turn before; `seconds` is
    # what the switch still waited): what the round planner must count as the model's copy
    copy_seconds: float | None = None
    resident: bool = False  # the model was still in the other slot: nothing was copied
    # layer-wise readiness: the copy is still landing under the first forward, which waits before each layer
    # for its bytes; when it has landed, the wait joins `seconds` (stage "wait_layers") and this turns False
    landing: bool = False


@dataclass
class _Prefetch:
    """A weight copy under way into the slot the bound model is not in."""

    model: str
    region: torch.Tensor  # where the weights land
    slot: str  # "staging", "arena", or "run" (a resident run, with residency)
    done: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    event: Any = None  # a CUDA event on the copy stream
    copy_seconds: float = 0.0
    error: BaseException | None = None
    resident: bool = False  # its weights were already there (from its last turn): no copy
    progress: CopyProgress | None = None  # how much has landed, stage by stage
    started: Any = None  # a timing CUDA event before a staged copy's first chunk (GPU)


def _charged(record: SwitchRecord, queued: float) -> SwitchRecord:
    """`record` of a switch that first waited `queued` seconds for another model's copy on the link."""
    if queued > 0:
        record.stages["wait_other_copy"] = queued
        record.seconds += queued
    return record


class ModelRunner:
    def __init__(
        self,
        arena: Arena,
        host_cache: HostWeightCache,
        kv: KVCacheManager,
        link: DeviceLink | None = None,
    ):
        self.arena = arena
        self.link = link or DeviceLink()
        self.host_cache = host_cache
        self.kv = kv
        self.entries: dict[str, ModelEntry] = {}
        self.active: str | None = None
        self.switches: list[SwitchRecord] = []
        self.ragged_decode = (
            True  # False: decode steps padded to the longest context (`bench attention` compares)
        )
        self.staging: torch.Tensor | None = None  # the second weight slot, with prefetch
        self.active_slot = "arena"  # where the bound model's weights are
        self.pending: _Prefetch | None = None
        self.copy_stream = None
        self.slot_model: dict[str, str | None] = {"arena": None, "staging": None}  # intact weights
        self.resident: ResidentWeights | None = None  # with residency
        self.layerwise = False  # a forward may start before the bound model's copy has landed
        # with layer-wise readiness: the copy into the bound model's weights that its forwards still wait on
        self.landing: tuple[_Prefetch, SwitchRecord, ModelEntry] | None = None
        self._weight_wait = (
            0.0  # seconds forwards blocked on weights still copying, since the last take
        )
        self._stage_ends: dict[str, list[int]] = {}

    # ---- layer-wise readiness ----------------------------------------------------------------------------

    def enable_layerwise(self) -> None:
        """Copy weights stage by stage (aegaeon.engine.layerwise) and bind a model before its copy has landed:
        its first forward waits before each layer only for that layer's bytes."""
        self.layerwise = True
        if self.arena.device.type == "cuda" and self.copy_stream is None:
            self.copy_stream = torch.cuda.Stream(device=self.arena.device)

    def take_weight_wait(self) -> float:
        """Seconds forwards blocked on weights still copying since the last call (part of switches, not of
        compute: the decode loop and the prefill worker count them as the switch's)."""
        waited, self._weight_wait = self._weight_wait, 0.0
        return waited

    def _chunk_ends(self, name: str) -> list[int]:
        entry = self.entries[name]
        if not self.layerwise or not hasattr(entry.model, "weights_ready"):
            return [entry.weights.total_bytes]
        if name not in self._stage_ends:
            self._stage_ends[name] = stage_ends(entry.weights, entry.checkpoint.config.num_layers)
        return self._stage_ends[name]

    def wait_landed(self) -> None:
        """Wait until the bound model's weights have all landed (layer-wise readiness; else a no-op)."""
        self._finish_landing(block=True)

    def _stage_waiter(self, progress: CopyProgress):
        def wait(stage: int) -> None:
            before = progress.waited
            progress.wait_stage(stage)
            self._weight_wait += progress.waited - before

        return wait

    def _finish_landing(self, block: bool) -> None:
        """The bound model's copy has landed (`block`: wait for it): complete its switch record."""
        if self.landing is None:
            return
        job, record, entry = self.landing
        if not block and not job.progress.awaited() and job.error is None:
            return  # still copying: a later forward, or the next switch, finishes it
        began = time.perf_counter()
        if job.thread is not None:
            job.thread.join()  # at most the copy's tail (it has landed when not blocking)
        if job.event is not None:
            torch.cuda.current_stream(self.arena.device).wait_event(job.event)
            if block:  # the host may free or reuse what the copy reads: it must have ended
                job.event.synchronize()
            if job.started is not None:
                job.event.synchronize()
                job.copy_seconds = job.started.elapsed_time(job.event) / 1000
        self.landing = None
        entry.model.weights_ready = None
        # what nothing ran under (a blocking finish) was waited for too
        waited = job.progress.waited + (time.perf_counter() - began if block else 0.0)
        record.stages["wait_layers"] = waited
        record.seconds += waited
        record.copy_seconds = job.copy_seconds or record.copy_seconds
        record.landing = False
        if job.error is not None:
            # the bound weights are incomplete: nothing may run on them, and a switch back copies again
            log.error(
                "the weight copy of %s failed while its forwards ran: %s", entry.name, job.error
            )
            if self.active == entry.name:
                self.active = None
            for slot, model in self.slot_model.items():
                if model == entry.name:
                    self.slot_model[slot] = None
            if self.resident is not None:
                self.resident.drop(entry.name)

    # ---- residency ---------------------------------------------------------------------------------------

    def enable_residency(self) -> None:
        """Keep models' weights in free arena slabs after their turns (prefetches copy there too)."""
        self.resident = ResidentWeights(self.arena)
        self.kv.reclaim = self._reclaim_for_kv
        if self.arena.device.type == "cuda" and self.copy_stream is None:
            self.copy_stream = torch.cuda.Stream(device=self.arena.device)

    def set_upcoming(self, models: list[str]) -> None:
        """The models the instance expects to run next, soonest first: what eviction keeps longest."""
        if self.resident is not None:
            self.resident.set_upcoming(models)

    def _protected(self) -> set[str]:
        """Resident models that cannot give up their run now: the bound one and the one being copied."""
        kept = {self.pending.model} if self.pending is not None else set()
        if self.active is not None and self.active_slot == "run":
            kept.add(self.active)
        return kept

    def _reclaim_for_kv(self) -> bool:
        """A KV block found no free slab: give it a resident model's slabs (False: none can go)."""
        if self.resident.evict_one(self._protected()):
            return True
        job = self.pending
        if job is not None and job.slot == "run":  # last: the copy for the next turn
            self._land_pending()
            self.pending = None
            self.resident.drop(job.model)
            return True
        return False

    def _retire_pending(self) -> None:
        """Let the copy in flight land and forget it; a copy into a run leaves its model resident."""
        job = self.pending
        if job is None:
            return
        self._land_pending()
        self.pending = None
        if job.slot == "run" and self.resident is not None:
            if job.error is None:
                self.resident.mark_intact(job.model)
            else:
                self.resident.drop(job.model)

    def _region_to_run(self) -> None:
        """The bound model is in the weight region (placed there when no run could be made): turn the region
        into a resident run of the same slabs, so it stays resident and the region's slabs serve KV too."""
        if self.active is None or self.active_slot != "arena" or self.arena.weight_bytes == 0:
            return
        nbytes = self.entries[self.active].weights.total_bytes
        self.arena.place_weights(0)
        self.slot_model["arena"] = None
        first = self.arena.claim_run(nbytes)  # the lowest free run: the slabs just released
        if first != 0:
            # the region's slabs [0, k) were reserved a moment ago, so first-fit must return them
            self.arena.release_run(first, nbytes)
            raise IntegrityError(
                f"the weight region of {self.active} did not become a run at slab 0 (got {first})"
            )
        self.resident.adopt(self.active, first, nbytes)
        self.active_slot = "run"

    def _prefetch_into_run(self, name: str, wait: bool) -> bool:
        if self.pending is not None and self.pending.model == name:
            return True
        if self.pending is not None and not self.pending.done.is_set() and not wait:
            return False
        if not wait and not self.host_cache.is_ready(name):
            return False
        self._retire_pending()
        nbytes = self.entries[name].weights.total_bytes
        if name in self.resident:
            job = _Prefetch(name, self.resident.view(name), "run", resident=True)
            job.done.set()
            self.pending = job
            return True
        if wait:
            self.host_cache.wait(name)
        region = self.resident.claim(name, nbytes, self._protected())
        if region is None:
            return False  # KV leaves no room: the switch will copy
        self._start_copy(_Prefetch(name, region, "run"))
        return True

    def _switch_resident(self, entry: ModelEntry) -> SwitchRecord | None:
        """Switch with residency: re-bind a resident model, else copy into a new run; None when no run can
        be made (the caller places the weights in the weight region)."""
        name, nbytes = entry.name, entry.weights.total_bytes
        start = time.perf_counter()
        if name in self.resident:
            self._region_to_run()  # the model bound in the region stays resident and the region frees
            view = self.resident.view(name)
            bound_at = time.perf_counter()
            entry.model.bind(entry.weights.views(view))
            self.active, self.active_slot = name, "run"
            self.resident.touch(name)
            bound = time.perf_counter()
            record = SwitchRecord(
                name,
                bound - start,
                0,
                0,
                0,
                {"resident": bound_at - start, "bind": bound - bound_at},
                resident=True,
            )
            self.switches.append(record)
            return record
        self.host_cache.wait(name)
        waited = time.perf_counter()
        self._region_to_run()
        protected = {self.pending.model} if self.pending is not None else set()
        region = self.resident.claim(name, nbytes, protected)
        if region is None:
            return None
        claimed = time.perf_counter()
        if self.layerwise:
            before = SwitchRecord(
                name, 0.0, 0, 0, 0, {"wait_weights": waited - start, "evict_kv": claimed - waited}
            )
            self.active = None  # the claim may have taken the bound model's slabs
            job = self._start_copy(_Prefetch(name, region, "run"), pending=False)
            return self._switch_to_prefetched(entry, ahead=False, job=job, before=before)
        self.active = None  # the model object's views are re-pointed below
        source = self.host_cache.region(name)
        self.link.transfer(
            nbytes, lambda: region.copy_(source, non_blocking=self.arena.device.type == "cuda")
        )
        copied = time.perf_counter()
        entry.model.bind(entry.weights.views(region))
        self.active, self.active_slot = name, "run"
        self.resident.mark_intact(name)
        bound = time.perf_counter()
        record = SwitchRecord(
            name,
            bound - waited,
            nbytes,
            0,
            0,
            {
                "wait_weights": waited - start,
                "evict_kv": claimed - waited,  # resident models given up for this one
                "copy_weights": copied - claimed,
                "bind": bound - copied,
            },
        )
        self.switches.append(record)
        return record

    # ---- prefetch ----------------------------------------------------------------------------------------

    def enable_prefetch(self, max_weight_bytes: int) -> None:
        """Allocate the staging slot (device memory beside the arena) for models up to `max_weight_bytes`."""
        self.staging = torch.empty(
            int(max_weight_bytes), dtype=torch.uint8, device=self.arena.device
        )
        if self.arena.device.type == "cuda":
            self.copy_stream = torch.cuda.Stream(device=self.arena.device)

    def prefetch(self, name: str, wait: bool = False) -> bool:
        """Start copying `name`'s weights into the free slot; False when it cannot now (no staging slot, not
        in the host cache yet, too large for the free slot, or already bound). With `wait` (a follower rank
        doing what rank 0 decided) a copy in flight and the host cache's load are waited for instead."""
        if name == self.active or name not in self.entries:
            return False
        if self.resident is not None:
            return self._prefetch_into_run(name, wait)
        if self.staging is None:
            return False
        if self.pending is not None and self.pending.model == name:
            return True
        if self.pending is not None and not self.pending.done.is_set() and not wait:
            return False  # one copy at a time, and the decode loop never waits for one it dropped
        if not wait and not self.host_cache.is_ready(name):
            return False
        nbytes = self.entries[name].weights.total_bytes
        resident = self.slot_model[self._free_slot()] == name  # still there from its last turn
        if not resident and self.active_slot == "arena" and nbytes > self.staging.numel():
            return False
        if (
            not resident
            and self.active_slot != "arena"
            and nbytes > self.arena.allocator.reserved_boundary * self.arena.slab_bytes
        ):
            return False  # growing the region would move KV: not for a prefetch
        # every check is made before the copy in flight is dropped: a refusal changes nothing (ranks of a
        # tensor-parallel instance stay alike when rank 0 refuses and the others are not asked)
        if self.pending is not None:
            self._land_pending()
            self.pending = None
        if wait:
            self.host_cache.wait(name)
        if resident:  # no copy
            self.pending = self._resident_job(name, nbytes)
            return True
        if self.active_slot == "arena":
            slot, region = "staging", self.staging[:nbytes]
        else:
            if nbytes > self.arena.weight_bytes:
                # the region was last placed for a smaller model: widen it within the slabs it holds
                # (no KV moves; the slot's old contents are overwritten from now on anyway)
                self.arena.place_weights(nbytes)
            slot, region = "arena", self.arena.weight_view(0, torch.uint8, (nbytes,))
        self.slot_model[slot] = None  # overwritten from now on
        self._start_copy(_Prefetch(name, region, slot))
        return True

    def _start_copy(self, job: _Prefetch, pending: bool = True) -> _Prefetch:
        """Start `job`'s copy from the host cache (a copy stream on a GPU, a thread on CPU), in stages with
        layer-wise readiness; it is the pending prefetch unless `pending` is False (a switch's own copy)."""
        source = self.host_cache.region(job.model)
        region = job.region
        job.progress = CopyProgress(self._chunk_ends(job.model), self.arena.device)
        if self.copy_stream is not None:
            # the copy must not overwrite weights that kernels queued on the compute stream still read
            self.copy_stream.wait_stream(torch.cuda.current_stream(self.arena.device))
            staged = len(job.progress.ends) > 1
            with torch.cuda.stream(self.copy_stream):
                if staged:  # its switch record learns the copy's time from the events
                    job.started = torch.cuda.Event(enable_timing=True)
                    job.started.record(self.copy_stream)
                for start, end in copy_chunks(job.progress.ends):
                    region[start:end].copy_(source[start:end], non_blocking=True)
                    event = torch.cuda.Event(enable_timing=staged)
                    event.record(self.copy_stream)
                    job.progress.events.append((end, event))
            job.event = job.progress.events[-1][1]
            job.progress.landed(
                job.progress.total
            )  # queued: the events say when each stage is there
            job.done.set()
        else:
            job.thread = threading.Thread(
                target=self._copy, args=(job, source), name="weight-copy", daemon=True
            )
            job.thread.start()
        if pending:
            self.pending = job
        return job

    def _free_slot(self) -> str:
        return "staging" if self.active_slot == "arena" else "arena"

    def _resident_job(self, name: str, nbytes: int) -> _Prefetch:
        slot = self._free_slot()
        region = (
            self.staging[:nbytes]
            if slot == "staging"
            else self.arena.weight_view(0, torch.uint8, (nbytes,))
        )
        job = _Prefetch(name, region, slot, resident=True)
        job.done.set()
        return job

    def forget(self, name: str) -> None:
        """`name` is no longer served: drop its copy in flight and its resident weights."""
        if self.landing is not None and self.landing[2].name == name:
            self._finish_landing(block=True)
        self.cancel_prefetch(name)
        self._stage_ends.pop(name, None)
        if self.arena.device.type == "cuda":
            # the host cache frees the model's pinned memory next: no copy may still be reading it
            torch.cuda.synchronize(self.arena.device)
        for slot, model in self.slot_model.items():
            if model == name:
                self.slot_model[slot] = None
        if self.resident is not None:
            self.resident.drop(name)
            if name == self.active and self.active_slot == "arena":
                # bound in the weight region: give its slabs back to KV (nothing else uses the region)
                self.arena.place_weights(0)
                self.slot_model["arena"] = None

    def cancel_prefetch(self, name: str | None = None) -> None:
        """Let the copy in flight land and forget it (only if it is `name`'s, when given)."""
        if self.pending is not None and name in (None, self.pending.model):
            self._retire_pending()

    def _copy(self, job: _Prefetch, source: torch.Tensor) -> None:
        chunks = [
            (
                end - start,
                lambda start=start, end=end: job.region[start:end].copy_(source[start:end]),
            )
            for start, end in copy_chunks(job.progress.ends)
        ]
        try:
            job.copy_seconds = self.link.transfer_chunks(chunks, job.progress.landed)
        except BaseException as err:  # reported when the switch or a forward needs it
            job.error = err
            job.progress.failed(err)
        finally:
            job.done.set()

    def _land_pending(self) -> None:
        """Wait for the copy in flight (on a GPU: order the compute stream behind it)."""
        job = self.pending
        if job is None:
            return
        if job.thread is not None:
            job.thread.join()
        if job.event is not None:
            torch.cuda.current_stream(self.arena.device).wait_event(job.event)

    def _switch_to_prefetched(
        self,
        entry: ModelEntry,
        ahead: bool = True,
        job: _Prefetch | None = None,
        before: SwitchRecord | None = None,
    ) -> SwitchRecord:
        """Bind the model `job` (default: the pending prefetch) holds: copied ahead (a prefetch), copied now
        (`ahead` False), or resident (nothing copied). With layer-wise readiness the copy need not have
        landed: the model's forwards wait for each layer's bytes. `before` carries what the switch did before
        the copy (its stages, the KV it moved or swapped out)."""
        if job is None:
            job, self.pending = self.pending, None
        start = time.perf_counter()
        lazy = self.layerwise and not job.resident and hasattr(entry.model, "weights_ready")
        if not lazy or job.done.is_set():
            if job.thread is not None:
                job.thread.join()
            if job.event is not None and not lazy:
                torch.cuda.current_stream(self.arena.device).wait_event(job.event)
        if job.error is not None:
            raise IntegrityError(
                f"copying {entry.name}'s weights failed: {job.error}"
            ) from job.error
        landed = time.perf_counter()
        if job.slot == "run":
            self._region_to_run()  # before `active` changes: the region's model stays resident
        entry.model.bind(entry.weights.views(job.region))
        self.active, self.active_slot = entry.name, job.slot
        if job.slot == "run":
            self.resident.mark_intact(entry.name)
        else:
            self.slot_model[job.slot] = entry.name
        bound = time.perf_counter()
        stages = dict(before.stages) if before is not None else {}
        stages["resident" if job.resident else "wait_prefetch" if ahead else "copy_weights"] = (
            landed - start
        )
        stages["bind"] = bound - landed
        record = SwitchRecord(
            entry.name,
            sum(stages.values()) - stages.get("wait_weights", 0.0),
            0 if job.resident else entry.weights.total_bytes,
            before.kv_moved if before is not None else 0,
            before.kv_swapped_out if before is not None else 0,
            stages,
            copy_seconds=job.copy_seconds or None,
            resident=job.resident,
        )
        if lazy:
            record.landing = True
            entry.model.weights_ready = self._stage_waiter(job.progress)
            self.landing = (job, record, entry)
            self._finish_landing(block=False)  # it may have landed already, or failed
            if job.error is not None:
                raise IntegrityError(
                    f"copying {entry.name}'s weights failed: {job.error}"
                ) from job.error
        self.switches.append(record)
        return record

    def register(self, checkpoint: Checkpoint, block_size: int, tp_group: Any = None) -> ModelEntry:
        """Lay out `checkpoint`'s KV and build its model object (a shard's, over `tp_group`, when sharded)."""
        cached = self.host_cache.models[checkpoint.name]
        cfg = checkpoint.config
        kv = KVLayout(
            cfg.num_layers, block_size, cfg.kv_size, cached.layout.dtype, self.arena.slab_bytes
        )
        kv.check_fits(checkpoint.name)
        entry = ModelEntry(
            checkpoint.name,
            checkpoint,
            cached.layout,
            kv,
            build_model(cfg, tp_group),
            kv.units_view(self.arena.buffer),
        )
        self.entries[checkpoint.name] = entry
        # a model re-added under a name has stages of its own
        self._stage_ends.pop(checkpoint.name, None)
        return entry

    def switch_to(self, name: str) -> SwitchRecord | None:
        """Make `name` the bound model (no-op when it already is)."""
        if self.active == name:
            return None
        self._finish_landing(
            block=True
        )  # the bound model's weights are whole before anything moves them
        entry = self.entries[name]
        if self.pending is not None and self.pending.model == name:
            return self._switch_to_prefetched(entry)
        if self.resident is not None:
            record = self._switch_resident(entry)
            if record is not None:
                return record
            # no run even with every other resident model evicted: the weight region, as without residency
            self._retire_pending()
            self.resident.drop_all()
            self.active_slot = "arena"
        queued_at = time.perf_counter()
        self._land_pending()  # a copy of another model may be writing the region this one takes
        queued = (
            time.perf_counter() - queued_at
        )  # the link carried that copy first: this switch waited
        self.pending = None
        free = self._free_slot()
        if self.staging is not None and self.active is not None:
            # resident in the other slot, or copied into the staging slot now: either way the bound model's
            # weights stay intact for a switch back (the arena's slot takes a copy only as a prefetch)
            self.host_cache.wait(name)
            if (self.slot_model[free] == name or free == "staging") and self.prefetch(name):
                return _charged(self._switch_to_prefetched(entry, ahead=False), queued)
        waited = time.perf_counter()
        self.host_cache.wait(name)
        start = time.perf_counter()
        self.active = None  # the old model's views are about to be overwritten
        placement = self.arena.place_weights(entry.weights.total_bytes)
        self.kv.apply_moves(placement.moved)
        swapped = 0
        if not placement.ready:
            for seq in self.kv.owners_of(placement.needs_swap):
                self.kv.swap_out(seq, self.entries[seq.model].kv)
                swapped += 1
            placement = self.arena.place_weights(entry.weights.total_bytes)
            if not placement.ready:
                raise IntegrityError(
                    f"switch to {name}: KV blocks remain in the weight region after swap-out"
                )
        evicted = time.perf_counter()
        region = self.arena.weight_view(0, torch.uint8, (entry.weights.total_bytes,))
        if self.layerwise:
            before = SwitchRecord(
                name,
                0.0,
                0,
                len(placement.moved),
                swapped,
                {"wait_weights": start - waited, "evict_kv": evicted - start},
            )
            self.slot_model["arena"] = None  # overwritten from now on
            job = self._start_copy(_Prefetch(name, region, "arena"), pending=False)
            return _charged(
                self._switch_to_prefetched(entry, ahead=False, job=job, before=before), queued
            )
        # From the page-locked host cache this is one DMA on the compute stream: the
        # forward kernels queued after it are ordered behind it without a device sync.
        source = self.host_cache.region(name)
        self.link.transfer(
            entry.weights.total_bytes,
            lambda: region.copy_(source, non_blocking=self.arena.device.type == "cuda"),
        )
        copied = time.perf_counter()
        entry.model.bind(entry.weights.views(region))
        self.active, self.active_slot = name, "arena"
        self.slot_model["arena"] = name
        bound = time.perf_counter()
        stages = {
            "wait_weights": start - waited,
            "evict_kv": evicted - start,
            "copy_weights": copied - evicted,
            "bind": bound - copied,
        }
        record = _charged(
            SwitchRecord(
                name,
                bound - start,
                entry.weights.total_bytes,
                len(placement.moved),
                swapped,
                stages,
            ),
            queued,
        )
        self.switches.append(record)
        log.debug(
            "switched to %s in %.4f s (%d bytes, %d blocks moved, %d seqs swapped out)",
            name,
            record.seconds,
            record.bytes_copied,
            record.kv_moved,
            swapped,
        )
        return record

    def forward(self, name: str, seqs: list[Sequence], all_logits: bool = False) -> torch.Tensor:
        """Run one step for `seqs` (their pending tokens) and return last-token logits [B, V], or with
        `all_logits` every pending token's [B, Q, V]."""
        if self.active != name:
            raise IntegrityError(f"forward for {name} while {self.active} is bound: switch first")
        entry = self.entries[name]
        chunks = [
            SeqChunk(
                seq.pending_tokens(), seq.num_cached, [entry.kv.block_unit(h) for h in seq.blocks]
            )
            for seq in seqs
        ]
        step = build_step(
            chunks,
            entry.kv.block_size,
            entry.kv.units_per_row,
            self.arena.device,
            self.ragged_decode,
        )
        try:
            return entry.model.forward(step, entry.kv_units, entry.kv, all_logits=all_logits)
        finally:
            self._finish_landing(block=False)  # the copy under this forward may have landed
