"""Scheduling decisions per second of the policy code the proxy and workers run (pure Python)."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from aegaeon.sched.decode import DecodeCandidate, form_batches, plan_round
from aegaeon.sched.prefill import GroupedFCFS, PrefillDispatcher
from aegaeon.sched.request import RequestSpec
from aegaeon.sched.rounds import RoundConfig, WeightedRoundRobin


class _FlatCost:
    def prefill_time(self, model, input_lens) -> float:
        return 1e-4 * sum(input_lens)

    def decode_time(self, model, batch, context_tokens) -> float:
        return 0.01 + 1e-6 * context_tokens

    def switch_time(self, from_model, to_model) -> float:
        return 0.0 if from_model == to_model else 0.3

    def kv_bytes_per_token(self, model) -> int:
        return 1024

    def swap_time(self, nbytes) -> float:
        return 0.0

    def weight_bytes(self, model) -> int:
        return 1


@dataclass(frozen=True)
class SchedBench:
    prefill_decisions_per_s: float  # a request placed by grouped FCFS (and its group later popped)
    decode_rounds_per_s: float  # regroup + quotas for one decode instance
    dispatcher_decisions_per_s: (
        float  # the same placements through PrefillDispatcher (what proxy and sim run)
    )
    policy_rounds_per_s: float  # a round started and its turns handed out by WeightedRoundRobin
    requests_per_round: int
    models: int


def bench_sched(
    requests: int = 20000,
    models: int = 64,
    instances: int = 4,
    round_requests: int = 64,
    rounds: int = 2000,
) -> SchedBench:
    rng = random.Random(0)
    cost = _FlatCost()
    grouped = GroupedFCFS(instances)
    specs = [
        RequestSpec(i, f"m{rng.randrange(models)}", i * 0.01, rng.randrange(16, 2048), 128)
        for i in range(requests)
    ]
    busy, loaded = [0.0] * instances, [None] * instances
    start = time.perf_counter()
    for spec in specs:
        grouped.submit(spec, busy, loaded, spec.arrival, cost)
        if spec.request_id % 8 == 7:
            for i in range(instances):
                grouped.next_group(i)
    prefill_rate = requests / (time.perf_counter() - start)
    candidates = [
        DecodeCandidate(i, f"m{rng.randrange(8)}", rng.randrange(64, 4096))
        for i in range(round_requests)
    ]
    start = time.perf_counter()
    for _ in range(rounds):
        batches, _ = form_batches(candidates, cost, 1 << 40)
        plan_round(batches, "m0", cost, 0.1)
    decode_rate = rounds / (time.perf_counter() - start)
    dispatcher = PrefillDispatcher(instances, cost)
    start = time.perf_counter()
    for spec in specs:
        dispatcher.submit(spec, spec.arrival)
        if spec.request_id % 8 == 7:
            for i in range(instances):
                dispatcher.group_done(i, spec.arrival)
    dispatcher_rate = requests / (time.perf_counter() - start)
    policy = WeightedRoundRobin(cost, RoundConfig(0.1))
    start = time.perf_counter()
    for _ in range(rounds):
        while policy.turns:  # hand out the round's turns, then the next call plans a new round
            policy.next_turn(candidates)
        policy.next_turn(candidates)
    policy_rate = rounds / (time.perf_counter() - start)
    return SchedBench(
        prefill_rate, decode_rate, dispatcher_rate, policy_rate, round_requests, models
    )
