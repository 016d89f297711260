"""Which resident model gives up its device memory (beyond the paper: resident models).

An instance keeps the weights of models it ran recently in device memory the KV cache is not using, so a
turn that comes back to one of them pays no copy. When the room is needed (by KV, which always has
priority, or by the weights of a model about to run) one resident model is evicted: the one the instance
will need last. The executor says which models come next (the decode round's turns in order, then the
models with requests waiting); a resident model that is not among them goes first, the least recently
used of those first; otherwise the one whose next use is furthest away.

Pure: no clock and no torch. Recency is a counter the executor bumps at each use.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence


def choose_eviction(
    last_used: Mapping[str, int],
    upcoming: Sequence[str],
    protected: Collection[str] = (),
) -> str | None:
    """The resident model to evict, or None when every resident model is protected (bound, or being
    copied into).

    `last_used` maps each resident model to when it was last used (larger is later); `upcoming` lists the
    models the instance expects to run, soonest first (repeats allowed)."""
    candidates = [model for model in last_used if model not in protected]
    if not candidates:
        return None
    first_use: dict[str, int] = {}
    for position, model in enumerate(upcoming):
        first_use.setdefault(model, position)
    unneeded = [model for model in candidates if model not in first_use]
    if unneeded:
        return min(unneeded, key=lambda model: (last_used[model], model))
    return max(candidates, key=lambda model: (first_use[model], model))


def upcoming_models(turn_models: Sequence[str], waiting_models: Sequence[str]) -> list[str]:
    """The models an instance will run, soonest first, without repeats: the turns still to come this round,
    then the models of the requests waiting (FCFS), which the next round takes."""
    return list(dict.fromkeys([*turn_models, *waiting_models]))
