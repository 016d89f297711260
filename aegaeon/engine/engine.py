"""A one-process engine that serves several models on one device.

Requests of different models interleave at token granularity: the engine
turns from model to model (round-robin over models with work), and on each
turn runs up to `steps_per_turn` forward steps for a batch of that model's
requests, switching the bound model in between. Prompts are prefilled in the
first step of a request's turn; a request's KV stays in the arena across
other models' turns, or is swapped to host memory when space is short.

Errors in one model (bad checkpoint, arena too small) make that model
unavailable with a message; the other models keep serving.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aegaeon.arena import DEFAULT_SLAB_BYTES, Arena
from aegaeon.engine.runner import ModelEntry, ModelRunner
from aegaeon.engine.sequence import Sequence, SeqStatus
from aegaeon.errors import AegaeonError, ArenaTooSmallError, OutOfBlocksError, RequestError
from aegaeon.ipc.shm import ShmNamespace
from aegaeon.kv.layout import DEFAULT_BLOCK_SIZE
from aegaeon.kv.manager import KVCacheManager
from aegaeon.models.sampler import SamplingParams, new_generator, sample_one
from aegaeon.weights.checkpoint import Checkpoint, open_checkpoint
from aegaeon.weights.host_cache import HostWeightCache, ProgressFn

log = logging.getLogger(__name__)
_engine_ids = itertools.count()


@dataclass(frozen=True)
class EngineConfig:
    device: str = "cpu"
    kv_bytes: int = 64 * 1024 * 1024  # arena bytes beyond the largest model's weights
    arena_bytes: int | None = None  # whole arena; overrides kv_bytes
    slab_bytes: int = DEFAULT_SLAB_BYTES
    block_size: int = DEFAULT_BLOCK_SIZE
    max_batch_size: int = 8
    steps_per_turn: int = 4
    dtype: str | None = None  # None keeps each checkpoint's dtype
    cluster_id: str | None = None  # names the host cache segment; default per process


@dataclass(frozen=True)
class GenerationResult:
    model: str
    prompt: str
    token_ids: list[int]
    text: str
    finish_reason: str | None
    error: str | None = None


class Engine:
    def __init__(self, models: dict[str, str | Path], config: EngineConfig = EngineConfig(),
                 prefetch_order: list[str] | None = None, progress: ProgressFn | None = None,
                 host_cache_of: str | None = None):
        """Serve `models` (name -> checkpoint dir). With `host_cache_of` (a cluster id) the engine attaches
        the node's weight cache made by that cluster's launcher instead of making its own."""
        if config.steps_per_turn < 1 or config.max_batch_size < 1:
            raise RequestError("steps_per_turn and max_batch_size must be at least 1")
        self.config = config
        self.unavailable: dict[str, str] = {}
        checkpoints = self._open_checkpoints(models)
        self.namespace = None
        if host_cache_of is None:
            self.namespace = ShmNamespace(config.cluster_id or f"engine{os.getpid()}.{next(_engine_ids)}").claim()
        try:
            if self.namespace is None:
                self.host_cache = HostWeightCache.attach(host_cache_of, checkpoints, config.dtype)
            else:
                self.host_cache = HostWeightCache(self.namespace, checkpoints, config.dtype)
                self.host_cache.start_prefetch([m for m in prefetch_order or [] if m in self.host_cache.models],
                                               progress)
            if config.device.startswith("cuda"):
                self.host_cache.pin()
            largest = max(self.host_cache.models[c.name].layout.total_bytes for c in checkpoints)
            self.arena = Arena(config.arena_bytes or largest + config.kv_bytes, config.slab_bytes, config.device)
            self.kv = KVCacheManager(self.arena)
            self.runner = ModelRunner(self.arena, self.host_cache, self.kv)
            self.tokenizers = {}
            for ckpt in checkpoints:
                self._register(ckpt)
        except BaseException:
            if hasattr(self, "host_cache"):
                self.host_cache.close()
            if self.namespace is not None:
                self.namespace.close()
            raise
        self.sequences: list[Sequence] = []
        self._ids = itertools.count()
        self._last_model: str | None = None

    def _open_checkpoints(self, models: dict[str, str | Path]) -> list[Checkpoint]:
        checkpoints = []
        for name, path in models.items():
            try:
                checkpoints.append(open_checkpoint(path, name))
            except AegaeonError as err:
                self._mark_unavailable(name, str(err))
        if not checkpoints:
            raise RequestError("no model could be loaded: " + "; ".join(self.unavailable.values()))
        return checkpoints

    def _register(self, ckpt: Checkpoint) -> None:
        from tokenizers import Tokenizer

        try:
            weight_bytes = self.host_cache.models[ckpt.name].layout.total_bytes
            if weight_bytes + self.config.slab_bytes > self.arena.total_bytes:
                raise ArenaTooSmallError(
                    f"model {ckpt.name}: weights of {weight_bytes} bytes plus one KV slab do not fit the arena "
                    f"of {self.arena.total_bytes} bytes: give the engine a larger arena"
                )
            tokenizer_file = ckpt.path / "tokenizer.json"
            if not tokenizer_file.is_file():
                raise RequestError(f"model {ckpt.name}: no tokenizer.json in {ckpt.path}")
            self.tokenizers[ckpt.name] = Tokenizer.from_file(str(tokenizer_file))
            self.runner.register(ckpt, self.config.block_size)
        except Exception as err:  # a bad model (any failure) never takes the engine down
            self._mark_unavailable(ckpt.name, str(err))

    def _mark_unavailable(self, name: str, reason: str) -> None:
        self.unavailable[name] = reason
        log.error("model %s is unavailable: %s", name, reason)

    @property
    def models(self) -> list[str]:
        return list(self.runner.entries)

    # ---- requests -------------------------------------------------------------------------------------------

    def submit(self, model: str, prompt: str, sampling: SamplingParams = SamplingParams()) -> Sequence:
        """Queue a prompt; raises RequestError for an unknown or unavailable model or a prompt too long."""
        self.entry(model)
        return self.submit_ids(model, self.tokenizers[model].encode(prompt).ids, sampling, prompt)

    def submit_ids(self, model: str, prompt_ids: list[int], sampling: SamplingParams = SamplingParams(),
                   prompt: str = "") -> Sequence:
        """Queue a tokenised prompt (see `submit`)."""
        self.check_request(model, prompt_ids, sampling)
        seq = Sequence(next(self._ids), model, prompt, list(prompt_ids), sampling, new_generator(sampling))
        self.sequences.append(seq)
        return seq

    def check_request(self, model: str, prompt_ids: list[int], sampling: SamplingParams) -> None:
        """Raise RequestError unless this engine can serve the request as asked."""
        entry = self.entry(model)
        sampling.validate()
        vocab = entry.checkpoint.config.vocab_size
        if any(not 0 <= t < vocab for t in prompt_ids):
            raise RequestError(f"model {model}: prompt token ids must lie in [0, {vocab})")
        if not prompt_ids:
            raise RequestError(f"model {model}: the prompt is empty")
        if len(prompt_ids) >= entry.max_position:
            raise RequestError(
                f"model {model}: the prompt has {len(prompt_ids)} tokens, the context holds {entry.max_position}"
            )

    def entry(self, model: str) -> ModelEntry:
        if model in self.unavailable:
            raise RequestError(f"model {model} is unavailable: {self.unavailable[model]}")
        if model not in self.runner.entries:
            raise RequestError(f"model {model} is not served here: known {self.models}")
        return self.runner.entries[model]

    def generate(self, requests: Iterable[tuple[str, str]], sampling: SamplingParams = SamplingParams()
                 ) -> list[GenerationResult]:
        """Serve (model, prompt) pairs to completion; one result per pair, in order."""
        results: list[Sequence | GenerationResult] = []
        for model, prompt in requests:
            try:
                results.append(self.submit(model, prompt, sampling))
            except RequestError as err:
                results.append(GenerationResult(model, prompt, [], "", None, str(err)))
        self.run()
        return [r if isinstance(r, GenerationResult) else self.result(r) for r in results]

    def result(self, seq: Sequence) -> GenerationResult:
        text = self.tokenizers[seq.model].decode(seq.output_ids) if seq.output_ids else ""
        return GenerationResult(seq.model, seq.prompt, list(seq.output_ids), text, seq.finish_reason, seq.error)

    # ---- the step loop --------------------------------------------------------------------------------------

    def run(self) -> None:
        while self.run_turn():
            pass

    def run_turn(self) -> bool:
        """Serve one model's batch for up to `steps_per_turn` steps; False when no work is left."""
        model = self._next_model()
        if model is None:
            return False
        self._last_model = model
        try:
            self.runner.switch_to(model)
        except AegaeonError as err:
            self._fail_model(model, str(err))
            return True
        batch = self._admit(model)
        for _ in range(self.config.steps_per_turn):
            batch = [seq for seq in batch if not seq.done]
            if not batch:
                break
            self.step_batch(model, batch)
        self.sequences = [seq for seq in self.sequences if not seq.done]
        return True

    def _next_model(self) -> str | None:
        live = list(dict.fromkeys(seq.model for seq in self.sequences if not seq.done))
        if not live:
            return None
        if self._last_model in live:
            return live[(live.index(self._last_model) + 1) % len(live)]
        return live[0]

    def _admit(self, model: str) -> list[Sequence]:
        """The turn's batch: the model's oldest requests, with their KV resident."""
        return self.make_resident([s for s in self.sequences if s.model == model and not s.done]
                                  [: self.config.max_batch_size])

    def make_resident(self, seqs: list[Sequence]) -> list[Sequence]:
        """Swap in those of `seqs` whose KV is in host memory, while room can be made; returns the resident ones."""
        batch: list[Sequence] = []
        for seq in seqs:
            if seq.status == SeqStatus.SWAPPED:
                entry = self.runner.entries[seq.model]
                if not self._make_room(lambda: self.kv.swap_in(seq, entry.kv), keep=batch + [seq]):
                    continue
            batch.append(seq)
        return batch

    def step_batch(self, model: str, batch: list[Sequence]) -> None:
        """One forward step of the bound model for `batch` (prefill or decode per request); samples a token each.

        Requests that cannot get KV blocks are swapped out to wait (or failed when they alone fill the pool).
        """
        entry = self.runner.entries[model]
        for seq in list(batch):
            if not self._make_room(lambda: self.kv.grow(seq, len(seq.token_ids), entry.kv), keep=batch):
                batch.remove(seq)
                self._preempt_or_fail(seq, entry)
        if not batch:
            return
        logits = self.runner.forward(model, batch)
        for row, seq in enumerate(batch):
            seq.num_cached = len(seq.token_ids)
            seq.status = SeqStatus.RUNNING
            self._append(seq, sample_one(logits[row], seq.sampling, seq.generator), entry)

    def _make_room(self, take, keep: list[Sequence]) -> bool:
        """Run `take` (an allocation), swapping out requests outside `keep` while the pool is short."""
        try:
            take()
            return True
        except OutOfBlocksError:
            pass
        kept = {s.seq_id for s in keep}
        for victim in [s for s in self.sequences if s.blocks and s.seq_id not in kept]:
            self.kv.swap_out(victim, self.runner.entries[victim.model].kv)
            try:
                take()
                return True
            except OutOfBlocksError:
                continue
        return False

    def _preempt_or_fail(self, seq: Sequence, entry: ModelEntry) -> None:
        """A request that cannot grow waits swapped out, unless it alone fills the KV pool."""
        if any(s.blocks for s in self.sequences if s is not seq):
            self.kv.swap_out(seq, entry.kv)
            return
        self.kv.release(seq)
        seq.error = (f"model {seq.model}: the KV cache cannot hold {len(seq.token_ids)} tokens "
                     f"({entry.kv.block_bytes} bytes per {entry.kv.block_size}-token block): give the engine more KV memory")
        seq.status = SeqStatus.FAILED
        log.error("%s", seq.error)

    def _append(self, seq: Sequence, token: int, entry: ModelEntry) -> None:
        seq.output_ids.append(token)
        eos = entry.checkpoint.config.eos_token_id
        if eos is not None and token == eos and not seq.sampling.ignore_eos:
            self._finish(seq, "stop")
        elif len(seq.output_ids) >= seq.sampling.max_tokens or len(seq.token_ids) >= entry.max_position:
            self._finish(seq, "length")

    def _finish(self, seq: Sequence, reason: str) -> None:
        self.kv.release(seq)
        seq.finish_reason = reason
        seq.status = SeqStatus.FINISHED

    def _fail_model(self, model: str, reason: str) -> None:
        self._mark_unavailable(model, reason)
        for seq in self.sequences:
            if seq.model == model and not seq.done:
                self.kv.release(seq)
                seq.error = f"model {model} is unavailable: {reason}"
                seq.status = SeqStatus.FAILED

    def close(self) -> None:
        self.host_cache.close()
        self.kv.swapper.close()
        if self.namespace is not None:
            self.namespace.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
