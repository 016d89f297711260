"""What a switch exposes when its first forward may start before the weight copy has landed (layer-wise
readiness, aegaeon.engine.layerwise): the cost model's rule, pure arithmetic.

A forward runs in stages (the embedding, each decoder layer, the head); stage k may start once the copy has
brought its bytes, which the copy does in layout order at a steady rate. So the forward ends at

    t_k = max(t_{k-1}, ready_k) + compute_k,   ready_k = copy_seconds * (bytes up to stage k) / (all bytes)

and the switch exposes t_last - forward_seconds: what the request waits beyond the forward itself. Without
layer-wise readiness the forward starts after the whole copy, which exposes all of copy_seconds. With
L equal layers and no embedding or head the rule is max(C / L, C - F (L - 1) / L): the gain is bounded by
one forward, so it pays where a forward is comparable to a copy (a long prompt's prefill), not where the
copy is many decode steps long.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StageShares:
    """A model's forward in stages: each stage's share of the weight bytes (copy order) and of the compute."""

    bytes: tuple[float, ...]
    compute: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.bytes) != len(self.compute) or not self.bytes:
            raise ValueError("stage shares: one byte share and one compute share per stage")
        for shares in (self.bytes, self.compute):
            if min(shares) < 0 or abs(sum(shares) - 1.0) > 1e-6:
                raise ValueError(f"stage shares must be non-negative and sum to 1, got {shares}")

    @classmethod
    def of_model(
        cls,
        num_layers: int,
        layer_bytes: float,
        embedding_bytes: float,
        head_bytes: float,
        tied_embeddings: bool = False,
    ) -> "StageShares":
        """Stages of a decoder: the embedding (copied first, a lookup: no compute to speak of), `num_layers`
        equal layers, the head (its matmul reads the embedding's rows when they are tied). Compute is
        in proportion to the weights each stage multiplies by, as in decode (reads) and prefill (flops)."""
        head_compute = embedding_bytes if tied_embeddings else head_bytes
        weights = [embedding_bytes] + [layer_bytes] * num_layers + [head_bytes]
        work = [0.0] + [layer_bytes] * num_layers + [head_compute]
        total_bytes, total_work = sum(weights), sum(work)
        return cls(tuple(b / total_bytes for b in weights), tuple(w / total_work for w in work))


def layered_finish(ready: Sequence[float], compute: Sequence[float]) -> float:
    """When a forward ends whose stage k takes `compute[k]` seconds and may start at `ready[k]`."""
    t = 0.0
    for at, seconds in zip(ready, compute, strict=True):
        t = max(t, at) + seconds
    return t


def layerwise_exposed(
    copy_seconds: float, forward_seconds: float, shares: StageShares, landed: float = 0.0
) -> float:
    """Switch seconds exposed by a layer-wise switch whose whole copy takes `copy_seconds`, of which the
    share `landed` (0..1, a prefetch's head start) is already there, and whose first forward takes
    `forward_seconds`."""
    if copy_seconds <= 0:
        return 0.0
    ready, done = [], 0.0
    for share in shares.bytes:
        done += share
        ready.append(max(0.0, done - landed) * copy_seconds)
    finish = layered_finish(ready, [share * forward_seconds for share in shares.compute])
    return max(0.0, finish - forward_seconds)


def switch_exposure(
    whole_copy: float, remaining: float, forward_seconds: float, shares: StageShares
) -> float:
    """A layer-wise switch's exposed seconds when `remaining` of its `whole_copy` seconds are left to copy
    at the switch (a prefetch copied the rest, in layout order) and its first forward takes
    `forward_seconds`; never more than `remaining`, what waiting for the whole copy exposes."""
    if remaining <= 0 or whole_copy <= 0:
        return 0.0
    landed = max(0.0, 1.0 - remaining / whole_copy)
    return min(remaining, layerwise_exposed(whole_copy, forward_seconds, shares, landed))
