"""Request-level scaling (sched/serverless.py): placement by hand-made states."""

from aegaeon.sched.request import RequestSpec
from aegaeon.sched.serverless import ServerlessScheduler
from tests.sched.fixed_cost import FixedCost


def _req(i, model, arrival=0.0, input_len=100, output_len=50):
    return RequestSpec(i, model, arrival, input_len, output_len)


def test_sllm_plus_sees_a_gpu_decoding_a_long_run_as_busy():
    sched = ServerlessScheduler(2, FixedCost(), queue_size=4, plus=True)
    assert sched.submit(_req(0, "a"), 0.0) == 0
    sched.next_run(0)
    # GPU 0 decodes its run for 50 more steps: it is busy until t = 10, although each slice starts now
    sched.progress(0, 0.5, 10.0)
    assert (
        sched.submit(_req(1, "b", 0.5), 0.5) == 1
    )  # to the idle GPU, not the "idle-looking" busy one


def test_sllm_plus_queues_on_the_gpu_with_the_least_predicted_work():
    sched = ServerlessScheduler(2, FixedCost(), queue_size=1, plus=True)
    sched.submit(_req(0, "a"), 0.0)
    sched.next_run(0)
    sched.progress(0, 0.1, 3.0)
    sched.submit(_req(1, "b"), 0.1)
    sched.next_run(1)
    sched.progress(1, 0.1, 1.0)
    sched.submit(_req(2, "c"), 0.2)  # GPU 1 ends first: its queue takes the new run
    assert [len(g.queue) for g in sched.gpus] == [0, 1]


def test_sllm_scales_up_on_an_idle_gpu_then_on_the_least_recently_used():
    sched = ServerlessScheduler(2, FixedCost(), queue_size=1)
    assert sched.submit(_req(0, "a"), 0.0) == 0
    sched.next_run(0)
    sched.progress(0, 0.0, 5.0)
    assert sched.submit(_req(1, "b"), 0.1) == 1
    sched.next_run(1)
    sched.progress(1, 0.2, 5.0)
    assert sched.submit(_req(2, "c"), 0.3) is None  # both busy: queued on GPU 0, used longest ago
    assert [len(g.queue) for g in sched.gpus] == [1, 0]
