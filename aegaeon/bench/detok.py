"""Detokenising a stream: one full decode per chunk (what the API did) against IncrementalText.

Both run side by side on the same token ids, one token per chunk as a decode worker streams them, and
each is repeated so the spread shows (this machine's timings swing between minutes).
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass

from aegaeon.serve.detok import IncrementalText


@dataclass(frozen=True)
class DetokResult:
    tokens: int
    repeats: int
    full_decode_s: tuple[
        float, ...
    ]  # one run each: the whole output decoded again after every token
    incremental_s: tuple[float, ...]
    same_text: bool

    @property
    def speedup(self) -> float:
        return statistics.median(self.full_decode_s) / statistics.median(self.incremental_s)


def bench_detok(tokenizer, tokens: int = 1800, repeats: int = 5, seed: int = 0) -> DetokResult:
    rng = random.Random(seed)
    words = [tokenizer.id_to_token(i) for i in range(tokenizer.get_vocab_size())]
    text = " ".join(rng.choice(words) or "x" for _ in range(tokens * 2))
    ids = tokenizer.encode(text).ids[:tokens]
    full, incremental, same = [], [], True
    for _ in range(repeats):
        start = time.perf_counter()
        for end in range(1, len(ids) + 1):
            old = tokenizer.decode(ids[:end])
        full.append(time.perf_counter() - start)
        start = time.perf_counter()
        decoded = IncrementalText(tokenizer)
        for token_id in ids:
            decoded.add([token_id])
        new = decoded.finish()
        incremental.append(time.perf_counter() - start)
        same = same and new == old
    return DetokResult(len(ids), repeats, tuple(full), tuple(incremental), same)
