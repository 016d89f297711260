"""One generation request as the engine tracks it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from aegaeon.models.sampler import SamplingParams


class SeqStatus(enum.Enum):
    WAITING = "waiting"  # prompt not prefilled yet
    RUNNING = "running"  # KV in the arena
    SWAPPED = "swapped"  # KV in host memory
    FINISHED = "finished"
    FAILED = "failed"


@dataclass
class Sequence:
    seq_id: int
    model: str
    prompt: str
    prompt_ids: list[int]
    sampling: SamplingParams
    generator: torch.Generator | None = None
    output_ids: list[int] = field(default_factory=list)
    status: SeqStatus = SeqStatus.WAITING
    blocks: list[int] = field(default_factory=list)  # arena handles while RUNNING
    host_kv: torch.Tensor | None = None  # blocks * block_bytes uint8, in block order, while SWAPPED
    num_cached: int = 0  # tokens whose KV is in the cache
    finish_reason: str | None = None
    error: str | None = None

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def done(self) -> bool:
        return self.status in (SeqStatus.FINISHED, SeqStatus.FAILED)

    def pending_tokens(self) -> list[int]:
        """Tokens whose KV the next forward step must compute."""
        return self.token_ids[self.num_cached :]
