"""The sampling fields of the HTTP API through the `openai` package: penalties, n, logprobs, echo,
stop strings, top_k/min_p (echo and prompt batches: test_openai_prompts.py), and random sampling parameters that must never stop the node. The `server`
fixture is in conftest.py."""

import time

import pytest

from tests.serve.api_server import openai_client

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")  # the `server` fixture serves the API with it


def test_random_sampling_parameters_and_token_ids_never_stop_the_node(server):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from aegaeon.client import Client
    from aegaeon.errors import RequestError

    url, proxy, _ = server
    client = Client(proxy)
    client.timeout = 60

    @settings(max_examples=25, deadline=None)
    @given(
        temperature=st.floats(0, 1e6, allow_nan=False)
        | st.sampled_from([1e-300, 1e-6, 5e-324, float("inf")]),
        top_p=st.floats(1e-300, 1.0) | st.sampled_from([1e-300, 1e-45, 1.0]),
        seed=st.none() | st.integers(-(2**63), 2**64 - 1),
        ids=st.lists(st.integers(-10, 10**6), min_size=1, max_size=8),
        max_tokens=st.integers(1, 3),
    )
    def throw(temperature, top_p, seed, ids, max_tokens):
        try:
            state = client.submit(
                "small", ids, max_tokens, temperature=temperature, top_p=top_p, seed=seed
            )
            list(client.stream(state))
        except RequestError:
            pass  # refused, or failed alone: either way the node must carry on

    restarts = proxy.restarts
    throw()
    time.sleep(0.5)
    assert proxy.health()[0], proxy.health()
    assert proxy.restarts == restarts, "a request killed a worker (the supervisor replaced it)"
    after = openai_client(server).completions.create(
        model="small", prompt="still serving", max_tokens=3, temperature=0
    )
    assert after.usage.completion_tokens <= 3


def test_stop_strings_end_the_text_before_them_streaming_and_not(server):
    client = openai_client(server)
    args = dict(
        model="small",
        prompt="the model serves",
        max_tokens=16,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    full = client.completions.create(**args).choices[0].text
    assert len(full) >= 4, full
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    expected = full[: full.find(stop)]
    cut = client.completions.create(**args, stop=[stop, "never appears \u2603"])
    assert cut.choices[0].text == expected and cut.choices[0].finish_reason == "stop"
    streamed = list(client.completions.create(**args, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == expected
    assert streamed[-1].choices[0].finish_reason == "stop"
    assert client.completions.create(**args, stop="never appears \u2603").choices[0].text == full
    with pytest.raises(openai.BadRequestError):
        client.completions.create(**args, stop=["a", "b", "c", "d", "e"])
    with pytest.raises(openai.BadRequestError):
        client.completions.create(**args, stop="")


def test_top_k_1_samples_what_greedy_decodes(server):
    client = openai_client(server)
    args = dict(
        model="small", prompt="the model serves", max_tokens=8, extra_body={"ignore_eos": True}
    )
    greedy = client.completions.create(**args, temperature=0).choices[0].text
    args["extra_body"] = {"ignore_eos": True, "top_k": 1, "min_p": 0.0}
    assert client.completions.create(**args, temperature=1.0, seed=3).choices[0].text == greedy


def test_penalties_and_vllm_stopping_fields_through_the_openai_package(server):
    client = openai_client(server)
    plain = client.completions.create(
        model="small",
        prompt="the model serves",
        max_tokens=10,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    tokens = plain.choices[0].text
    assert plain.usage.completion_tokens == 10 and tokens
    same = client.completions.create(
        model="small",
        prompt="the model serves",
        max_tokens=10,
        temperature=0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        extra_body={"ignore_eos": True, "repetition_penalty": 1.0},
    )
    assert same.choices[0].text == tokens  # every penalty at its "off" value changes nothing
    penalised = client.completions.create(
        model="small",
        prompt="the model serves",
        max_tokens=10,
        temperature=0,
        frequency_penalty=2.0,
        extra_body={"ignore_eos": True, "repetition_penalty": 50.0},
    )
    assert penalised.usage.completion_tokens == 10
    chat = client.chat.completions.create(
        model="large",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=6,
        temperature=0,
        presence_penalty=1.5,
        extra_body={"min_tokens": 6, "stop_token_ids": [0, 1, 2]},
    )
    assert (
        chat.usage.completion_tokens == 6
    )  # min_tokens = max_tokens: neither EOS nor a stop id ends it early
    for extra, param in [
        ({"min_tokens": 11}, "min_tokens"),
        ({"stop_token_ids": [10**6]}, "stop_token_ids"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ]:
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model="small", prompt="hi", max_tokens=10, extra_body=extra)
        assert err.value.body["param"].split(".")[0] == param, (extra, err.value.body)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="small", prompt="hi", max_tokens=4, presence_penalty=3.0)
    assert err.value.body["param"] == "presence_penalty"


def test_n_choices_are_independent_seeded_samples_streaming_and_not(server):
    client = openai_client(server)
    greedy = client.completions.create(
        model="small",
        prompt="one pool",
        max_tokens=6,
        temperature=0,
        n=3,
        extra_body={"ignore_eos": True},
    )
    assert [c.index for c in greedy.choices] == [0, 1, 2] and greedy.usage.completion_tokens == 18
    assert len({c.text for c in greedy.choices}) == 1  # greedy: three equal choices
    sampled = client.completions.create(
        model="small",
        prompt="one pool",
        max_tokens=6,
        temperature=1.0,
        seed=11,
        n=2,
        extra_body={"ignore_eos": True},
    )
    alone = [
        client.completions.create(
            model="small",
            prompt="one pool",
            max_tokens=6,
            temperature=1.0,
            seed=s,
            extra_body={"ignore_eos": True},
        )
        .choices[0]
        .text
        for s in (11, 12)
    ]
    assert [c.text for c in sampled.choices] == alone  # choice i is the request seeded seed + i
    texts = {0: "", 1: ""}
    for chunk in client.completions.create(
        model="small",
        prompt="one pool",
        max_tokens=6,
        temperature=1.0,
        seed=11,
        n=2,
        stream=True,
        extra_body={"ignore_eos": True},
    ):
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert [texts[0], texts[1]] == alone
    chat = client.chat.completions.create(
        model="large",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        temperature=0,
        n=2,
        stream=True,
    )
    roles = [c.choices[0].delta.role for c in chat if c.choices and c.choices[0].delta.role]
    assert roles == ["assistant", "assistant"]  # the first chunk of each choice carries the role


def test_logprobs_as_openai_shapes_them_for_each_endpoint(server):
    client = openai_client(server)
    body = dict(
        model="small",
        prompt="the model serves",
        max_tokens=6,
        temperature=0,
        logprobs=2,
        extra_body={"ignore_eos": True},
    )
    full = client.completions.create(**body)
    lp = full.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    assert "".join(lp.tokens) == full.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert chosen <= 0 and 1 <= len(top) <= 2
        assert (
            abs(chosen - max(top.values())) < 1e-5
        )  # greedy: the drawn token is the most likely one
    streamed = [
        t
        for chunk in client.completions.create(**body, stream=True)
        if chunk.choices[0].logprobs
        for t in chunk.choices[0].logprobs.tokens
    ]
    assert streamed == lp.tokens

    chat = client.chat.completions.create(
        model="large",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        extra_body={"ignore_eos": True},
    )
    content = chat.choices[0].logprobs.content
    assert (
        len(content) == 5 and "".join(c.token for c in content) == chat.choices[0].message.content
    )
    assert all(
        len(c.top_logprobs) == 3 and bytes(c.bytes) == c.token.encode("utf-8") for c in content
    )
    assert all(abs(c.logprob - c.top_logprobs[0].logprob) < 1e-5 for c in content)
    plain = client.chat.completions.create(
        model="large", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert plain.choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="large",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=2,
            top_logprobs=2,
        )
    assert err.value.body["param"] == "top_logprobs"
