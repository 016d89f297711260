"""The one-process engine: several models on one device, interleaved at token granularity.

`aegaeon generate`, the profiler and the engine benchmarks use it. Its turn order comes from
`aegaeon.sched.rounds.StepRoundRobin` (models with work in turn, `steps_per_turn` steps each); it steps them
on a `StepExecutor`, switching the bound model in between. Prompts are prefilled in the first step of their
request's turn; a request's KV stays in the arena across other models' turns, or is swapped to host memory
when space is short. A model that cannot be bound is failed with its requests; the others keep serving.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aegaeon.config.serving import EngineConfig
from aegaeon.engine.executor import SeqUpdate, StepExecutor
from aegaeon.errors import AegaeonError, RequestError
from aegaeon.models.sampler import SamplingParams
from aegaeon.sched.decode import DecodeCandidate
from aegaeon.sched.rounds import StepRoundRobin
from aegaeon.weights.host_cache import ProgressFn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationResult:
    model: str
    prompt: str
    token_ids: list[int]
    text: str
    finish_reason: str | None
    error: str | None = None
    prompt_ids: tuple[int, ...] = ()


@dataclass
class _Request:
    request_id: int
    model: str
    prompt: str
    prompt_ids: tuple[int, ...]
    tokens: list[int]
    finish_reason: str | None = None
    error: str | None = None


class LocalEngine:
    def __init__(
        self,
        models: dict[str, str | Path],
        config: EngineConfig = EngineConfig(),
        prefetch_order: list[str] | None = None,
        progress: ProgressFn | None = None,
    ):
        if config.steps_per_turn < 1 or config.max_batch_size < 1:
            raise RequestError("steps_per_turn and max_batch_size must be at least 1")
        self.executor = StepExecutor(models, config, prefetch_order, progress)
        self.policy = StepRoundRobin(config.steps_per_turn, config.max_batch_size)
        self.tokenizers = {}
        for name in self.executor.models:
            self._load_tokenizer(name)
        self._requests: dict[int, _Request] = {}
        self._ids = itertools.count()

    def _load_tokenizer(self, name: str) -> None:
        from tokenizers import Tokenizer

        path = self.executor.runner.entries[name].checkpoint.path / "tokenizer.json"
        if path.is_file():
            self.tokenizers[name] = Tokenizer.from_file(str(path))
        else:
            self.executor.fail_model(name, f"no tokenizer.json in {path.parent}")

    @property
    def unavailable(self) -> dict[str, str]:
        return self.executor.unavailable

    @property
    def models(self) -> list[str]:
        return [m for m in self.executor.models if m not in self.executor.unavailable]

    def submit(self, model: str, prompt: str, sampling: SamplingParams = SamplingParams()) -> int:
        """Queue a prompt; returns its request id. RequestError for an unknown or unavailable model, or a prompt
        that does not fit."""
        self.executor.entry(model)
        return self.submit_ids(model, self.tokenizers[model].encode(prompt).ids, sampling, prompt)

    def submit_ids(
        self,
        model: str,
        prompt_ids: list[int],
        sampling: SamplingParams = SamplingParams(),
        prompt: str = "",
    ) -> int:
        request_id = next(self._ids)
        self.executor.add(request_id, model, prompt_ids, sampling, prompt)
        self._requests[request_id] = _Request(request_id, model, prompt, tuple(prompt_ids), [])
        return request_id

    def generate(
        self, requests: Iterable[tuple[str, str]], sampling: SamplingParams = SamplingParams()
    ) -> list[GenerationResult]:
        """Serve (model, prompt) pairs to completion; one result per pair, in order."""
        queued: list[int | GenerationResult] = []
        for model, prompt in requests:
            try:
                queued.append(self.submit(model, prompt, sampling))
            except RequestError as err:
                queued.append(GenerationResult(model, prompt, [], "", None, str(err)))
        self.run()
        return [r if isinstance(r, GenerationResult) else self.result(r) for r in queued]

    def result(self, request_id: int) -> GenerationResult:
        r = self._requests[request_id]
        text = (
            self.tokenizers[r.model].decode(r.tokens)
            if r.tokens and r.model in self.tokenizers
            else ""
        )
        return GenerationResult(
            r.model, r.prompt, list(r.tokens), text, r.finish_reason, r.error, r.prompt_ids
        )

    def _live(self) -> list[DecodeCandidate]:
        return [
            DecodeCandidate(r.request_id, r.model, 0)
            for r in self._requests.values()
            if r.finish_reason is None and r.error is None
        ]

    def run(self) -> None:
        """Serve every queued request to completion."""
        while (turn := self.policy.next_turn(self._live())) is not None:
            try:
                self.executor.switch_to(turn.model)
            except AegaeonError as err:
                self._apply(self.executor.fail_model(turn.model, str(err)))
                continue
            for _ in range(turn.max_steps or 1):
                batch = self.policy.turn_batch(self._live())
                if not batch:
                    break
                self._apply(self.executor.step(turn.model, batch))

    def _apply(self, updates: list[SeqUpdate]) -> None:
        for update in updates:
            request = self._requests[update.request_id]
            request.tokens += update.new_tokens
            request.finish_reason = update.finish_reason or request.finish_reason
            request.error = update.error or request.error

    def close(self) -> None:
        self.executor.close()

    def __enter__(self) -> "LocalEngine":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
