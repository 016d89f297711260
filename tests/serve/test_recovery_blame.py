"""Which requests a lost worker's death is charged to: the ones it was computing, not every one it held."""

from aegaeon.config.serving import RecoveryConfig
from aegaeon.ipc.messages import Submit
from aegaeon.serve.recovery import Recovery, suspects
from aegaeon.serve.requests import LiveRequest, RequestTable


class _Router:
    prefill_alive = 1

    def __init__(self):
        self.dispatched = []

    def dispatch(self, request):
        self.dispatched.append(request.request_id)


def _request(request_id: int, model: str) -> LiveRequest:
    return LiveRequest(Submit(request_id, model, (1, 2, 3), 8), arrival=0.0)


def test_a_decode_worker_lost_during_a_turn_blames_only_that_turns_model():
    held = [_request(0, "a"), _request(1, "b"), _request(2, "a"), _request(3, "c")]
    assert suspects(held, "decode", "a") == {0, 2}
    assert suspects(held, "decode", None) == {0, 1, 2, 3}  # lost between turns, while admitting
    assert suspects(held, "prefill", None) == {0, 1, 2, 3}  # the group it was sent


def test_only_charged_losses_count_against_the_rerun_bound():
    table, router = RequestTable(), _Router()
    recovery = Recovery(RecoveryConfig(max_reruns=2), table, router, relay=None, clock=lambda: 0.0)
    bystander = table.admit({"model": "a", "prompt_ids": (1, 2), "max_tokens": 4}, 0.0)
    culprit = table.admit({"model": "b", "prompt_ids": (1, 2), "max_tokens": 4}, 0.0)
    for _ in range(
        5
    ):  # five workers die, each computing the culprit's turn while it also held the bystander
        recovery.rerun(bystander, "worker lost", charged=False)
        if not culprit.done:
            recovery.rerun(culprit, "worker lost", charged=True)
    assert not bystander.done and bystander.reruns == 5
    assert (
        culprit.done and culprit.suspected == 2 and router.dispatched.count(culprit.request_id) == 2
    )


def test_a_rerun_counts_the_tokens_already_streamed_as_output_for_penalties_and_min_tokens():
    from aegaeon.ipc.messages import Tokens
    from aegaeon.worker.prefill import sampling_of

    request = LiveRequest(
        Submit(7, "a", (1, 2, 3), 8, presence_penalty=0.5, min_tokens=4), arrival=0.0
    )
    request.listener = lambda message: None
    request.deliver(Tokens(7, (9, 9), (0.0, 0.0)))
    run = request.next_run()
    assert (run.prompt_ids, run.max_tokens, run.output_before) == ((1, 2, 3, 9, 9), 6, 2)
    sampling = sampling_of(run)
    sampling.validate()  # min_tokens 4 of a request 2 tokens in and 6 to go is valid
    assert (sampling.presence_penalty, sampling.min_tokens, sampling.output_before) == (0.5, 4, 2)
