"""The step executor: one device's arena, KV cache and model runner, behind a narrow interface.

Callers (the worker processes, the one-process engine, the profiler and the benchmarks) name requests by id
and models by name; the executor keeps its sequences to itself. It does what it is told (bind a model, run
one forward step for a batch, move a request's KV in or out) and never decides what runs next: that is
`aegaeon.sched`'s job.

A step never raises for one request's sake: a request whose KV cannot grow waits swapped out (or fails
when it alone fills the pool), and one whose logits or sampling go wrong fails with a message; the others
of the batch go on.

Longer than this project's 300 lines per module, on purpose: every method reads and writes the executor's
private table of sequences and their KV blocks, and splitting the class would make that table public.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from aegaeon.arena import Arena, ArenaUsage
from aegaeon.config.serving import EngineConfig
from aegaeon.device_link import make_link
from aegaeon.engine.runner import ModelEntry, ModelRunner, SwitchRecord
from aegaeon.errors import AegaeonError, ArenaTooSmallError, OutOfBlocksError, RequestError
from aegaeon.ipc.shm import ShmNamespace
from aegaeon.kv.manager import KVCacheManager, SwapRecord
from aegaeon.models.sampler import (
    SamplingParams,
    check_prompt_logprobs_size,
    new_generator,
    prompt_token_logprobs,
    sample_one,
    token_logprobs,
)
from aegaeon.parallel.shard import open_shard
from aegaeon.sched.cost import ModelSizes
from aegaeon.sequence import SeqStatus, Sequence
from aegaeon.weights.checkpoint import Checkpoint
from aegaeon.weights.host_cache import HostWeightCache, ProgressFn

log = logging.getLogger(__name__)
_executor_ids = itertools.count()


@dataclass(frozen=True)
class SeqUpdate:
    """What one step did to one request: the tokens it made, and how it ended if it did."""

    request_id: int
    new_tokens: tuple[int, ...]
    finish_reason: str | None = None
    error: str | None = None
    logprobs: tuple = ()  # per new token, when the request asked (aegaeon.ipc.messages.Tokens.logprobs)
    prompt_logprobs: tuple = ()  # per prompt token, on the prefill's update when asked (the first is None)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.error is not None


@dataclass(frozen=True)
class KvImport:
    """A request arriving with its prompt's KV in host memory (a prefill worker's handoff)."""

    request_id: int
    model: str
    prompt_ids: tuple[int, ...]
    sampling: SamplingParams
    generated: tuple[int, ...]
    num_tokens: int  # tokens whose KV the blocks hold
    sampler_state: bytes = b""


class StepExecutor:
    def __init__(
        self,
        models: dict[str, str | Path],
        config: EngineConfig = EngineConfig(),
        prefetch_order: list[str] | None = None,
        progress: ProgressFn | None = None,
        host_cache_of: str | None = None,
        weight_segments: dict[str, str] | None = None,
        tp_group=None,
    ):
        """Serve `models` (name -> checkpoint dir). With `host_cache_of` (a cluster id) the executor attaches
        the node's weight cache made by that cluster's launcher instead of making its own; `weight_segments`
        names each model's segment there (HostWeightCache.segment_names). With `tp_group`
        (aegaeon.parallel.group, of config.tp_size ranks) the executor is rank config.tp_rank's: it holds
        that rank's shard of every model and of every request's KV, and its forward steps are collective."""
        if (tp_group is None) != (config.tp_size == 1):
            raise AegaeonError(f"--tp {config.tp_size}: a tensor-parallel executor needs its group")
        self.config = config
        self.tp_group = tp_group
        self.unavailable: dict[str, str] = {}
        checkpoints = self._open_checkpoints(models)
        self.namespace = None
        if host_cache_of is None:
            self.namespace = ShmNamespace(
                config.cluster_id or f"engine{os.getpid()}.{next(_executor_ids)}"
            ).claim()
        try:
            if self.namespace is None:
                self.host_cache = HostWeightCache.attach(
                    host_cache_of, checkpoints, config.dtype, weight_segments
                )
            else:
                self.host_cache = HostWeightCache(self.namespace, checkpoints, config.dtype)
                self.host_cache.start_prefetch(
                    [m for m in prefetch_order or [] if m in self.host_cache.models], progress
                )
            if config.device.startswith("cuda"):
                self.host_cache.pin()
            self.largest_weights = self._largest_weights()
            self.arena = Arena(
                config.arena_bytes or self.largest_weights + config.kv_bytes,
                config.slab_bytes,
                config.device,
            )
            self.link = make_link(config.link_gbps)
            self.kv = KVCacheManager(self.arena, self.link)
            self.runner = ModelRunner(self.arena, self.host_cache, self.kv, self.link)
            for ckpt in checkpoints:
                self._register(ckpt)
            if config.layerwise:
                self.runner.enable_layerwise()
            if config.residency:
                self.runner.enable_residency()  # prefetches copy into resident runs
            elif config.prefetch:
                self.runner.enable_prefetch(self.largest_weights)
        except BaseException:
            if hasattr(self, "host_cache"):
                self.host_cache.close()
            if self.namespace is not None:
                self.namespace.close()
            raise
        self._seqs: dict[int, Sequence] = {}

    # ---- models -----------------------------------------------------------------------------------------

    def _open_checkpoints(self, models: dict[str, str | Path]) -> list[Checkpoint]:
        checkpoints = []
        for name, path in models.items():
            try:
                checkpoints.append(open_shard(path, name, self.config.tp_size, self.config.tp_rank))
            except AegaeonError as err:
                self._mark_unavailable(name, str(err))
        if not checkpoints:
            raise RequestError("no model could be loaded: " + "; ".join(self.unavailable.values()))
        return checkpoints

    def _register(self, ckpt: Checkpoint) -> None:
        try:
            self._admit(ckpt)
        except Exception as err:  # a bad model (any failure) never takes the executor down
            self._mark_unavailable(ckpt.name, str(err))

    def _admit(self, ckpt: Checkpoint) -> None:
        weight_bytes = self.host_cache.models[ckpt.name].layout.total_bytes
        if weight_bytes + self.config.slab_bytes > self.arena.total_bytes:
            raise ArenaTooSmallError(
                f"model {ckpt.name}: weights of {weight_bytes} bytes plus one KV slab do not fit the arena "
                f"of {self.arena.total_bytes} bytes: give the engine a larger arena"
            )
        self.runner.register(ckpt, self.config.block_size, self.tp_group)

    def _largest_weights(self) -> int:
        return max((m.layout.total_bytes for m in self.host_cache.models.values()), default=0)

    def add_model(self, name: str, path: str | Path, segment: str | None = None) -> None:
        """Serve one more model while running; AegaeonError (naming what is wrong) when it cannot be: its
        checkpoint does not open, its weights and one KV slab do not fit the arena, the name is taken. On an
        attached cache `segment` names the model's segment, which the owner has made."""
        if name in self.runner.entries:
            raise RequestError(f"model {name} is already served here")
        checkpoint = open_shard(path, name, self.config.tp_size, self.config.tp_rank)
        if self.host_cache.owner:
            self.host_cache.add(checkpoint)
        else:
            self.host_cache.attach_model(checkpoint, segment or "")
        try:
            self._admit(checkpoint)
        except BaseException:
            self._forget_cached(name)
            raise
        self.unavailable.pop(name, None)
        self.largest_weights = self._largest_weights()

    def remove_model(self, name: str) -> list[SeqUpdate]:
        """Stop serving `name`: its requests here fail (returned; a drained model has none), its model object
        and host cache mapping go. The weight region stays as it is until the next switch."""
        if name not in self.runner.entries and name not in self.unavailable:
            raise RequestError(f"model {name} is not served here: known {self.models}")
        updates = [
            self._fail(seq, f"model {name} was removed from the node")
            for seq in list(self._seqs.values())
            if seq.model == name
        ]
        self.runner.forget(name)
        if self.runner.active == name:
            self.runner.active = None
        self.runner.entries.pop(name, None)
        self.unavailable.pop(name, None)
        self._forget_cached(name)
        self.largest_weights = self._largest_weights()
        return updates

    def _forget_cached(self, name: str) -> None:
        if name not in self.host_cache.models:
            return
        if self.host_cache.owner:
            self.host_cache.remove(name)
        else:
            self.host_cache.detach_model(name)

    def _mark_unavailable(self, name: str, reason: str) -> None:
        self.unavailable[name] = reason
        log.error("model %s is unavailable: %s", name, reason)

    @property
    def models(self) -> list[str]:
        return list(self.runner.entries)

    @property
    def bound_model(self) -> str | None:
        return self.runner.active

    def entry(self, model: str) -> ModelEntry:
        if model in self.unavailable:
            raise RequestError(f"model {model} is unavailable: {self.unavailable[model]}")
        if model not in self.runner.entries:
            raise RequestError(f"model {model} is not served here: known {self.models}")
        return self.runner.entries[model]

    def model_sizes(self) -> dict[str, ModelSizes]:
        return {
            name: ModelSizes(e.weights.total_bytes, e.kv.block_bytes // e.kv.block_size)
            for name, e in self.runner.entries.items()
        }

    def kv_capacity_bytes(self) -> int:
        """The KV bytes decode planning may count on: the arena less the largest model's weights."""
        return max(0, self.arena.total_bytes - self.largest_weights)

    def check_request(
        self, model: str, prompt_ids: list[int] | tuple[int, ...], sampling: SamplingParams
    ) -> None:
        """Raise RequestError unless this executor can serve the request as asked."""
        entry = self.entry(model)
        sampling.validate()
        vocab = entry.checkpoint.config.vocab_size
        if not prompt_ids:
            raise RequestError(f"model {model}: the prompt is empty")
        if any(not isinstance(t, int) or not 0 <= t < vocab for t in prompt_ids):
            raise RequestError(f"model {model}: prompt token ids must be integers in [0, {vocab})")
        if len(prompt_ids) >= entry.max_position:
            raise RequestError(
                f"model {model}: the prompt has {len(prompt_ids)} tokens, the context holds {entry.max_position}"
            )

    def switch_to(self, model: str) -> SwitchRecord | None:
        """Bind `model` (None when it already is); raises AegaeonError when it cannot be bound."""
        self.entry(model)
        return self.runner.switch_to(model)

    def wait_landed(self) -> None:
        """Wait until the bound model's copy has landed (layer-wise readiness), completing its switch record
        (for a turn or group whose first forward never ran)."""
        self.runner.wait_landed()

    def take_weight_wait(self) -> float:
        """Seconds the steps since the last call blocked on weights still copying (layer-wise readiness):
        switch time that ran inside a step, which callers count as the switch's, not as compute."""
        return self.runner.take_weight_wait()

    def prefetch(self, model: str, wait: bool = False) -> bool:
        """Start copying `model`'s weights beside the bound model's (with EngineConfig.prefetch); False when
        it cannot be now (`wait`: unless only a copy in flight or the host cache is in the way, which it
        waits for). A later `switch_to(model)` then only waits for the rest of the copy."""
        if model in self.unavailable or model not in self.runner.entries:
            return False
        return self.runner.prefetch(model, wait)

    def set_upcoming(self, models: list[str]) -> None:
        """With residency: the models expected next, soonest first (eviction keeps them longest)."""
        self.runner.set_upcoming(models)

    def resident_models(self) -> list[str]:
        """Models whose weights are resident in the arena now (with residency), the bound one included."""
        return self.runner.resident.resident_models() if self.runner.resident is not None else []

    def fail_model(self, model: str, reason: str) -> list[SeqUpdate]:
        """`model` cannot be served any more: fail its requests; returns their updates."""
        self._mark_unavailable(model, reason)
        return [
            self._fail(seq, f"model {model} is unavailable: {reason}")
            for seq in list(self._seqs.values())
            if seq.model == model
        ]

    # ---- requests -----------------------------------------------------------------------------------------

    def add(
        self,
        request_id: int,
        model: str,
        prompt_ids: list[int] | tuple[int, ...],
        sampling: SamplingParams = SamplingParams(),
        prompt: str = "",
    ) -> None:
        """A new request whose prompt the next step of its model prefills (RequestError when it cannot be)."""
        self.check_request(model, prompt_ids, sampling)
        if request_id in self._seqs:
            raise RequestError(f"request {request_id} is already on this executor")
        self._seqs[request_id] = Sequence(
            request_id, model, prompt, list(prompt_ids), sampling, new_generator(sampling)
        )

    def import_kv(self, request: KvImport, host: torch.Tensor, host_offsets: list[int]) -> None:
        """Add a prefilled request, its KV copied from `host` (OutOfBlocksError, nothing kept, when short)."""
        self.check_request(request.model, request.prompt_ids, request.sampling)
        seq = Sequence(
            request.request_id,
            request.model,
            "",
            list(request.prompt_ids),
            request.sampling,
            new_generator(request.sampling),
        )
        layout = self.runner.entries[seq.model].kv
        self.kv.import_blocks(
            seq, layout, host, self._shard_offsets(host_offsets, layout), request.num_tokens
        )
        seq.output_ids = list(request.generated)
        if seq.generator is not None and request.sampler_state:
            seq.generator.set_state(
                torch.frombuffer(bytearray(request.sampler_state), dtype=torch.uint8)
            )
        seq.num_cached, seq.status = request.num_tokens, SeqStatus.RUNNING
        self._seqs[seq.seq_id] = seq

    def export_kv(self, request_id: int, host: torch.Tensor, host_offsets: list[int]) -> None:
        """Copy the request's KV blocks to `host` at `host_offsets`; returns once the bytes are there."""
        seq = self._seqs[request_id]
        layout = self.runner.entries[seq.model].kv
        self.kv.export_blocks(seq, layout, host, self._shard_offsets(host_offsets, layout))

    def _shard_offsets(self, host_offsets: list[int], layout) -> list[int]:
        """A host block of a tensor-parallel group holds every rank's shard of it, rank by rank."""
        shift = self.config.tp_rank * layout.block_bytes
        return [offset + shift for offset in host_offsets] if shift else list(host_offsets)

    def kv_blocks(self, request_id: int) -> tuple[int, int]:
        """(blocks, bytes per host block) of the request's KV: with tensor parallelism a host block holds
        every rank's shard, so a handoff moves the group's KV as one set of blocks."""
        seq = self._seqs[request_id]
        return len(seq.blocks), self.runner.entries[seq.model].kv.block_bytes * self.config.tp_size

    def handoff_state(self, request_id: int) -> tuple[int, tuple[int, ...], bytes]:
        """(tokens cached, tokens generated, random generator state): what a KV handoff carries."""
        seq = self._seqs[request_id]
        state = bytes(seq.generator.get_state().numpy()) if seq.generator is not None else b""
        return seq.num_cached, tuple(seq.output_ids), state

    def reserve_kv(self, request_id: int) -> None:
        """Give a request blocks for all its tokens now, as if they were cached (OutOfBlocksError when short)."""
        seq = self._seqs[request_id]
        self.kv.grow(seq, len(seq.token_ids), self.runner.entries[seq.model].kv)
        seq.num_cached = len(seq.token_ids)

    def swap_out(self, request_id: int) -> None:
        """Move the request's KV to host memory (it comes back before its next step)."""
        seq = self._seqs[request_id]
        self.kv.swap_out(seq, self.runner.entries[seq.model].kv)

    def swap_in(self, request_id: int) -> None:
        seq = self._seqs[request_id]
        self.kv.swap_in(seq, self.runner.entries[seq.model].kv)

    def remove(self, request_id: int) -> None:
        """Forget a request and free its KV (finished, cancelled or handed off)."""
        seq = self._seqs.pop(request_id, None)
        if seq is not None:
            self.kv.release(seq)

    def has(self, request_id: int) -> bool:
        return request_id in self._seqs

    def output_ids(self, request_id: int) -> list[int]:
        return list(self._seqs[request_id].output_ids)

    def context_len(self, request_id: int) -> int:
        return len(self._seqs[request_id].token_ids)

    # ---- steps --------------------------------------------------------------------------------------------

    def step(self, model: str, request_ids: list[int] | tuple[int, ...]) -> list[SeqUpdate]:
        """One forward step of the bound `model` for these requests (prefill or decode each, by what it has
        cached) and one sampled token each. Requests that end (finished or failed) are removed. Requests that
        cannot get KV blocks now are swapped out to wait and get no update."""
        entry = self.runner.entries[model]
        batch = self._make_resident([self._seqs[i] for i in request_ids if i in self._seqs])
        updates: list[SeqUpdate] = []
        for seq in list(batch):
            if not self._make_room(
                lambda: self.kv.grow(seq, len(seq.token_ids), entry.kv), keep=batch
            ):
                batch.remove(seq)
                update = self._preempt_or_fail(seq, entry)
                if update is not None:
                    updates.append(update)
        # a prompt's own logprobs need every position's logits: such a prefill runs alone, so the
        # [tokens, vocab] logits are its prompt's and no other's
        whole = [s for s in batch if s.sampling.prompt_logprobs is not None and s.num_cached == 0]
        rest = [s for s in batch if s not in whole]
        for seqs, every_position in ([(rest, False)] if rest else []) + [
            ([s], True) for s in whole
        ]:
            updates += self._forward_and_sample(model, entry, seqs, every_position)
        return updates

    def _forward_and_sample(
        self, model: str, entry: ModelEntry, batch: list[Sequence], every_position: bool
    ) -> list[SeqUpdate]:
        try:
            if every_position:
                check_prompt_logprobs_size(
                    len(batch[0].token_ids), entry.checkpoint.config.vocab_size
                )
            logits = self.runner.forward(model, batch, all_logits=every_position)
        except RequestError as err:
            if (
                not every_position
            ):  # only the size check of a lone prompt-logprobs prefill raises this
                raise
            return [self._fail(batch[0], f"request {batch[0].seq_id}: {err}")]
        except Exception as err:  # a forward that breaks fails its batch, never the process
            log.exception("forward of %s failed for requests %s", model, [s.seq_id for s in batch])
            return [
                self._fail(seq, f"model {model}: the forward step failed: {err}") for seq in batch
            ]
        updates = []
        for row, seq in enumerate(batch):
            seq.num_cached = len(seq.token_ids)
            seq.status = SeqStatus.RUNNING
            if not every_position:
                updates.append(self._sample(seq, logits[row], entry))
                continue
            prompt = seq.token_ids
            try:
                entries = prompt_token_logprobs(
                    logits[row, : len(prompt) - 1], prompt, seq.sampling.prompt_logprobs
                )
            except RequestError as err:
                updates.append(self._fail(seq, f"request {seq.seq_id}: {err}"))
                continue
            update = self._sample(seq, logits[row, len(prompt) - 1], entry)
            updates.append(replace(update, prompt_logprobs=entries))
        return updates

    def _sample(self, seq: Sequence, logits: torch.Tensor, entry: ModelEntry) -> SeqUpdate:
        try:
            params = seq.sampling
            made = params.output_before + len(
                seq.output_ids
            )  # output tokens so far, earlier runs included
            eos = entry.checkpoint.config.eos_token_ids
            banned = (eos + params.stop_token_ids) if made < params.min_tokens else ()
            context = seq.token_ids if params.penalised else None
            token = sample_one(logits, params, seq.generator, context, made, banned)
            logprobs = (
                () if params.logprobs is None else (token_logprobs(logits, token, params.logprobs),)
            )
        except RequestError as err:
            return self._fail(seq, f"request {seq.seq_id}: {err}")
        except Exception as err:  # a sampler bug fails this request, not its batch nor the worker
            log.exception("sampling request %d failed", seq.seq_id)
            return self._fail(seq, f"request {seq.seq_id}: sampling failed: {err}")
        seq.output_ids.append(token)
        reason = None
        if (token in eos and not params.ignore_eos) or token in params.stop_token_ids:
            reason = "stop"
        elif (
            len(seq.output_ids) >= seq.sampling.max_tokens
            or len(seq.token_ids) >= entry.max_position
        ):
            reason = "length"
        if reason is not None:
            self.remove(seq.seq_id)
        return SeqUpdate(seq.seq_id, (token,), reason, logprobs=logprobs)

    def _make_resident(self, seqs: list[Sequence]) -> list[Sequence]:
        """Swap in those of `seqs` whose KV is in host memory, while room can be made; returns the resident ones."""
        batch: list[Sequence] = []
        for seq in seqs:
            if seq.status == SeqStatus.SWAPPED:
                entry = self.runner.entries[seq.model]
                if not self._make_room(lambda: self.kv.swap_in(seq, entry.kv), keep=batch + [seq]):
                    continue
            batch.append(seq)
        return batch

    def _make_room(self, take, keep: list[Sequence]) -> bool:
        """Run `take` (an allocation), swapping out requests outside `keep` while the pool is short."""
        try:
            take()
            return True
        except OutOfBlocksError:
            pass
        kept = {s.seq_id for s in keep}
        for victim in [s for s in self._seqs.values() if s.blocks and s.seq_id not in kept]:
            self.kv.swap_out(victim, self.runner.entries[victim.model].kv)
            try:
                take()
                return True
            except OutOfBlocksError:
                continue
        return False

    def _preempt_or_fail(self, seq: Sequence, entry: ModelEntry) -> SeqUpdate | None:
        """A request that cannot grow waits swapped out, unless it alone fills the KV pool."""
        if any(s.blocks for s in self._seqs.values() if s is not seq):
            self.kv.swap_out(seq, entry.kv)
            return None
        return self._fail(
            seq,
            f"model {seq.model}: the KV cache cannot hold {len(seq.token_ids)} tokens "
            f"({entry.kv.block_bytes} bytes per {entry.kv.block_size}-token block): give the "
            f"engine more KV memory",
        )

    def _fail(self, seq: Sequence, reason: str) -> SeqUpdate:
        log.error("%s", reason)
        self.remove(seq.seq_id)
        return SeqUpdate(seq.seq_id, (), None, reason)

    # ---- measurements ---------------------------------------------------------------------------------------

    def usage(self) -> ArenaUsage:
        return self.arena.usage()

    def finished_swaps(self) -> list[SwapRecord]:
        return self.kv.finished_swaps()

    def close(self) -> None:
        self.runner.wait_landed()  # no copy may read the host cache once it is unmapped
        self.runner.cancel_prefetch()
        if self.arena.device.type == "cuda":
            torch.cuda.synchronize(self.arena.device)
        self.host_cache.close()
        self.kv.swapper.close()
        if self.namespace is not None:
            self.namespace.close()

    def __enter__(self) -> "StepExecutor":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
