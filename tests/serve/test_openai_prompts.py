"""What completions do with prompts through the `openai` package: echo (with the prompt's logprobs) and
batches of text or token-id prompts. The `server` fixture is in conftest.py."""

import httpx
import pytest

from tests.serve.api_server import KEY, openai_client

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")


def test_echo_puts_the_prompt_before_the_completion(server):
    client = openai_client(server)
    prompt = "the model serves"
    plain = client.completions.create(model="small", prompt=prompt, max_tokens=4, temperature=0)
    echoed = client.completions.create(
        model="small", prompt=prompt, max_tokens=4, temperature=0, echo=True
    )
    assert echoed.choices[0].text == prompt + plain.choices[0].text
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="small", prompt=prompt, max_tokens=4, temperature=0, echo=True, stream=True
        )
    )
    assert streamed == echoed.choices[0].text


def test_echo_with_logprobs_scores_the_prompt_as_the_model_scored_its_own_tokens(server):
    """The greedy tokens of a request, put back as a prompt, get the logprobs they were drawn with."""
    client = openai_client(server)
    body = dict(model="small", max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    drawn = client.completions.create(prompt=[5, 6, 7], logprobs=0, **body)
    tokens = drawn.choices[0].logprobs.token_logprobs
    ids = [5, 6, 7] + [int(t) for t in _token_ids(server, [5, 6, 7])]
    scored = client.completions.create(
        prompt=ids, echo=True, logprobs=0, **{**body, "max_tokens": 1}
    )
    lp = scored.choices[0].logprobs
    assert (
        len(lp.tokens) == len(ids) + 1
        and lp.token_logprobs[0] is None
        and lp.top_logprobs[0] is None
    )
    assert lp.token_logprobs[3 : len(ids)] == pytest.approx(tokens, abs=1e-4)
    assert lp.text_offset[len(ids)] == len(scored.choices[0].text) - len(lp.tokens[-1])
    streamed = [
        v
        for c in client.completions.create(
            prompt=ids, echo=True, logprobs=0, stream=True, **{**body, "max_tokens": 1}
        )
        if c.choices[0].logprobs
        for v in c.choices[0].logprobs.token_logprobs
    ]
    assert streamed[0] is None and streamed[1:] == pytest.approx(lp.token_logprobs[1:], abs=1e-6)


def _token_ids(server, prompt_ids: list[int]) -> list[int]:
    """The greedy continuation's token ids, from the node itself (the API returns text)."""
    from aegaeon.client import Client

    client = Client(server[1])
    state = client.submit("small", prompt_ids, max_tokens=5, ignore_eos=True)
    return [token for token, _ in client.stream(state)]


def test_a_batch_of_prompts_text_or_token_ids_gives_each_its_choices(server):
    client = openai_client(server)
    prompts = ["the model serves", "one pool"]
    alone = [
        client.completions.create(model="small", prompt=p, max_tokens=4, temperature=0)
        .choices[0]
        .text
        for p in prompts
    ]
    batch = client.completions.create(
        model="small", prompt=prompts, max_tokens=4, temperature=0, n=2
    )
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert [c.text for c in batch.choices] == [alone[0], alone[0], alone[1], alone[1]]
    by_ids = client.completions.create(
        model="small", prompt=[[5, 6, 7], [8, 9]], max_tokens=3, temperature=0, echo=True
    )
    assert by_ids.usage.prompt_tokens == 5 and len(by_ids.choices) == 2
    single = client.completions.create(model="small", prompt=[5, 6, 7], max_tokens=3, temperature=0)
    assert by_ids.choices[0].text.endswith(single.choices[0].text)
    for bad in ([], [[]], [-1, 2], [10**7], ["a", 1], ["x"] * 17):
        response = httpx.post(
            f"{server[0]}/v1/completions",
            json={"model": "small", "prompt": bad, "max_tokens": 2},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert response.status_code == 400, (bad, response.text)
        assert response.json()["error"]["param"].startswith("prompt"), (bad, response.text)


def test_a_long_prompts_logprobs_cross_the_worker_ring_in_pieces(server):
    client = openai_client(server)
    # 300 tokens x 5 alternatives: about 24 KiB of logprobs, over the 16 KiB of a ring slot
    ids = [(7 * i) % 390 + 3 for i in range(300)]
    scored = client.completions.create(
        model="small", prompt=ids, max_tokens=2, temperature=0, echo=True, logprobs=5
    )
    lp = scored.choices[0].logprobs
    assert len(lp.tokens) == 302 and lp.token_logprobs[0] is None
    assert all(len(top) >= 1 for top in lp.top_logprobs[1:])
    streamed = [
        v
        for c in client.completions.create(
            model="small",
            prompt=ids,
            max_tokens=2,
            temperature=0,
            echo=True,
            logprobs=5,
            stream=True,
        )
        if c.choices[0].logprobs
        for v in c.choices[0].logprobs.token_logprobs
    ]
    assert streamed[0] is None and streamed[1:] == pytest.approx(lp.token_logprobs[1:], abs=1e-6)


def test_streamed_text_offsets_count_tokens_not_the_text_held_back_for_a_stop_string(server):
    client = openai_client(server)
    body = dict(model="small", prompt="the model serves", max_tokens=8, temperature=0, logprobs=0)
    plain = client.completions.create(**body, extra_body={"ignore_eos": True})
    text = plain.choices[0].text
    # a stop string that never completes, but whose first character holds text back when it shows up
    stop = text[len(text) // 2] + "\x00never"
    offsets = [
        o
        for c in client.completions.create(
            **body, stop=[stop], stream=True, extra_body={"ignore_eos": True}
        )
        if c.choices[0].logprobs
        for o in c.choices[0].logprobs.text_offset
    ]
    assert offsets == plain.choices[0].logprobs.text_offset


def test_min_tokens_holds_stop_strings_off_as_vllm_does(server):
    client = openai_client(server)
    body = dict(model="small", prompt="the model serves", max_tokens=10, temperature=0)
    text = client.completions.create(**body, extra_body={"ignore_eos": True}).choices[0].text
    stop = text[:2]  # at the very start of the output
    early = client.completions.create(**body, stop=[stop], extra_body={"ignore_eos": True})
    assert early.choices[0].text == "" and early.choices[0].finish_reason == "stop"
    held = client.completions.create(
        **body, stop=[stop], extra_body={"ignore_eos": True, "min_tokens": 6}
    )
    assert held.usage.completion_tokens >= 6 and held.choices[0].text.startswith(stop)
