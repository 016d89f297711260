"""The artifact-faithful baselines (sllm-ae, sllm+-ae) and the paper's scorer, on hand-made cases."""

import pytest

from aegaeon.config.sim import SimConfig
from aegaeon.profiles import cost_model_for_workload, load_device_profiles
from aegaeon.sched.artifact_cost import ArtifactLatency
from aegaeon.sched.request import RequestSpec, RequestState
from aegaeon.sched.slo import SLO, paper_attainment
from aegaeon.sched.unified import (
    EXECUTING,
    FAILED,
    ArtifactSllm,
    ArtifactSllmPlus,
    UnifiedRequest,
    UnifiedWorker,
    expire,
    form_batch,
    kv_budget_tokens,
    to_evict,
)
from aegaeon.sim.runner import simulate


def _request(rid: int, model: str, arrival: float = 0.0, inp: int = 100, out: int = 10):
    return UnifiedRequest(RequestState(RequestSpec(rid, model, arrival, inp, out)))


def _worker(model, queue=(), last_batch=0.0):
    return UnifiedWorker(model, list(queue), last_batch)


def test_the_paper_scorer_charges_a_late_first_token_once_and_forgives_later_stalls():
    slo = SLO(10.0, 0.1)
    assert paper_attainment(0.0, [1.0, 1.1, 1.2], 3, slo) == pytest.approx(1.0)
    # first token at 12 s: nothing banked, the clock restarts there, the rest is on time
    assert paper_attainment(0.0, [12.0, 12.1, 12.2], 3, slo) == pytest.approx(0.2 / 12.2)
    # on time, then a 5 s stall: the target has grown past it, so it is forgiven
    assert paper_attainment(0.0, [1.0, 6.0, 6.1], 3, slo) == pytest.approx(1.0)
    assert paper_attainment(0.0, [], 3, slo) == 0.0  # failed
    assert paper_attainment(0.0, [1.0], 3, slo) == 0.0  # unfinished


def test_sllm_ae_fills_a_same_model_tail_before_scaling_up():
    workers = [_worker("a", [_request(0, "a"), _request(1, "a")]), _worker("b")]
    new = _request(2, "a")
    assert ArtifactSllm().place(new, workers) == 0 and workers[0].queue[-1] is new


def test_sllm_ae_scales_up_on_a_never_used_worker_first_then_the_stale_lru_one():
    workers = [_worker("a", last_batch=5.0), _worker("b", last_batch=1.0), _worker(None)]
    policy = ArtifactSllm(queue_size=1)
    assert policy.place(_request(0, "d"), workers) == 2  # never used
    # handing w2 a load does not move its clock (0: it never ran an iteration), so it is now the least
    # recently used, and the next scale-ups of other models pile onto it (the artifact's bug, kept)
    assert policy.place(_request(1, "e"), workers) == 2
    assert policy.place(_request(2, "f"), workers) == 2
    assert [r.model for r in workers[2].queue] == ["d", "e", "f"]
    workers[2].last_batch = 9.0  # once it has run an iteration, w1 is the oldest
    assert policy.place(_request(3, "g"), workers) == 1


def _decoding(rid: int, model: str, done: int, out: int = 500) -> UnifiedRequest:
    request = _request(rid, model, inp=100, out=out)
    request.has_kv, request.status = True, EXECUTING
    request.state.token_times.extend([1.0] * done)
    return request


def test_sllm_plus_ae_joins_first_fit_and_opens_batches_on_the_worker_with_fewest():
    cost = cost_model_for_workload(["synth_model_00", "synth_model_06"])
    policy = ArtifactSllmPlus(cost, queue_size=2)
    workers = [_worker("synth_model_00", [_decoding(0, "synth_model_00", 10)]), _worker(None)]
    assert policy.place(_request(1, "synth_model_00"), workers) == 0  # the running batch had room
    assert policy.place(_request(2, "synth_model_06"), workers) == 1  # fewer batches there
    # worker 0's batch is full; both workers have one batch: the lowest id takes the new one
    assert policy.place(_request(3, "synth_model_00"), workers) == 0
    assert [r.state.spec.request_id for r in workers[0].queue] == [0, 1, 3]


def test_sllm_plus_ae_sorts_a_new_prefill_ahead_of_a_long_decode_which_it_preempts():
    cost = cost_model_for_workload(["synth_model_00", "synth_model_06", "synth_model_08"])
    policy = ArtifactSllmPlus(cost, queue_size=1)
    running = _decoding(0, "synth_model_00", 10)
    workers = [_worker("synth_model_00", [running]), _worker("synth_model_06")]
    workers[1].queue.append(_decoding(1, "synth_model_06", 5))
    new = _request(2, "synth_model_08")
    assert policy.place(new, workers) == 0
    assert workers[0].queue == [new, running]  # its loaded model is no longer at the head: it loads


def test_a_batch_stops_at_another_model_and_at_the_kv_budget_and_leaves_runners_to_evict():
    a0, a1, b0, a2 = (_request(i, m, inp=100) for i, m in enumerate("aaba"))
    a1.has_kv, a1.status = True, EXECUTING
    a2.has_kv, a2.status = True, EXECUTING
    worker = _worker("a", [a0, a1, b0, a2])
    prefill, decode = form_batch(worker, budget_tokens=10_000)
    assert prefill == [a0] and decode == [a1]
    assert to_evict(worker, prefill, decode) == [a2]  # stuck behind another model: recompute
    prefill, decode = form_batch(worker, budget_tokens=150)
    assert prefill == [a0] and decode == []
    assert to_evict(worker, prefill, decode) == [a1, a2]


def test_the_failure_rule_fails_requests_without_a_token_after_15_s():
    waiting, served = _request(0, "a", arrival=0.0), _request(1, "a", arrival=0.0)
    served.state.token_times.append(3.0)
    assert expire([waiting, served], now=15.0) == []  # strictly after 15 s
    assert expire([waiting, served], now=15.5) == [waiting] and waiting.status == FAILED


def test_the_kv_budget_is_the_artifacts():
    # qwen2.5-7b on an 80 GiB H100: (80 - 14) x 0.8 GiB over 4 x 28 x 3584 bytes per token
    assert kv_budget_tokens(80 * 2**30, 14.0, 4 * 28 * 3584) == 141_236


def test_the_artifact_latency_refit_from_the_profile_tables_is_the_artifacts_own():
    costs, _ = load_device_profiles("H100")
    qwen = costs["qwen2_5_7b"].artifact
    # the coefficients the artifact's simulator fits (sklearn, run on its own tables)
    assert qwen.prefill_coefficients == pytest.approx(
        (0.016105319238229505, 1.462442545886591e-05, -6.637200162506725e-10), rel=1e-9
    )
    assert qwen.decode_coefficients == pytest.approx(
        (0.00858222632393528, 2.589395963587745e-07, 7.614765070231733e-05), rel=1e-9
    )
    assert qwen.load_seconds == 0.875


def _run(policy, specs):
    cost = cost_model_for_workload({s.model for s in specs})
    return simulate(policy, specs, cost, SLO(), SimConfig(num_gpus=1), 60.0)


def test_sllm_plus_ae_preempts_a_long_decode_by_recompute():
    long = RequestSpec(0, "synth_model_00", 0.0, 200, 2000)
    short = RequestSpec(1, "synth_model_06", 2.0, 100, 5)
    states, extra = _run("sllm+-ae", [long, short])
    assert extra["kv_losses"] == 1 and extra["switches"] == 3  # load, preempting load, load back
    first, second = states
    assert second.finished and second.token_times[-1] < first.token_times[-1]
    gaps = [b - a for a, b in zip(first.token_times, first.token_times[1:])]
    # the preempted request stalls for two loads and the short request, then goes on
    cost = ArtifactLatency(cost_model_for_workload(["synth_model_00", "synth_model_06"]))
    assert max(gaps) > cost.switch_time(None, "synth_model_06") + cost.switch_time(
        None, "synth_model_00"
    )
    assert first.finished and len(first.token_times) == 2000


def test_sllm_ae_never_preempts_and_fails_requests_stuck_past_15_s():
    specs = [RequestSpec(0, "synth_model_00", 0.0, 200, 4000)]
    specs += [RequestSpec(1 + i, "synth_model_06", 1.0 + 0.1 * i, 100, 5) for i in range(3)]
    specs.append(RequestSpec(9, "synth_model_08", 30.0, 100, 5))  # its arrival applies the rule
    states, extra = _run("sllm-ae", specs)
    assert extra["kv_losses"] == 0
    assert states[0].finished and len(states[0].token_times) == 4000
    assert [s.failed is not None for s in states[1:4]] == [True] * 3
    assert states[4].finished  # no arrival after it: nothing fails it, it is served late


def test_the_artifact_resampling_draws_file_pairs_by_model_and_shrinks_long_ones():
    from aegaeon.workload import artifact_resample

    specs = [
        RequestSpec(0, "b", 0.0, 10, 20),
        RequestSpec(1, "a", 1.0, 30, 40),
        RequestSpec(2, "b", 2.0, 5000, 100),
    ]
    once = artifact_resample(specs, lambda model: 4096)
    assert once == artifact_resample(specs, lambda model: 4096)
    assert [r.arrival for r in once] == [0.0, 1.0, 2.0] and [r.model for r in once] == [
        "b",
        "a",
        "b",
    ]
    shrunk = (int(5000 * 4096 / 16384), max(1, int(100 * 4096 / 16384)))
    assert {(r.input_len, r.output_len) for r in once} <= {(10, 20), (30, 40), shrunk}
