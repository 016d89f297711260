"""The HTTP API with real clients: the `openai` package and curl."""

import json
import shutil
import socket
import subprocess
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aegaeon.config.serving import ApiConfig, EngineConfig, NodeConfig
from aegaeon.models.maker import make_model
from aegaeon.serve.node import Node
from aegaeon.serve.server import uvicorn_config
from tests.models.reference import LARGE_SHAPE, SMALL_SHAPE

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

KEY = "test-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from aegaeon.serve.openai_api import create_app

    root = tmp_path_factory.mktemp("api")
    models = {
        "small": make_model(root / "small", SMALL_SHAPE, seed=1),
        "large": make_model(root / "large", LARGE_SHAPE, seed=2),
    }
    config = NodeConfig(
        {k: str(v) for k, v in models.items()},
        num_instances=3,
        cluster_id="apitest",
        engine=EngineConfig(slab_bytes=65536, kv_bytes=8 * 2**20),
        host_kv_bytes=4 * 2**20,
        kv_slab_bytes=65536,
        threads_per_worker=1,
    )
    node = Node(config)
    proxy = node.start()
    port = _free_port()
    api = ApiConfig(port=port, api_key=KEY, header_timeout=1.0)
    srv = uvicorn.Server(uvicorn_config(create_app(proxy, models, api, config), api))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", proxy, config
    srv.should_exit = True
    thread.join(timeout=10)
    node.stop()


def _client(server):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key=KEY, max_retries=0)


def test_completions_with_the_openai_package_streaming_and_not(server):
    client = _client(server)
    full = client.completions.create(
        model="small", prompt="the model serves", max_tokens=8, temperature=0
    )
    assert full.choices[0].finish_reason in ("length", "stop") and full.usage.completion_tokens <= 8
    pieces = [
        c.choices[0].text
        for c in client.completions.create(
            model="small", prompt="the model serves", max_tokens=8, temperature=0, stream=True
        )
    ]
    assert "".join(pieces) == full.choices[0].text


def test_chat_completions_with_the_openai_package(server):
    client = _client(server)
    reply = client.chat.completions.create(
        model="large", messages=[{"role": "user", "content": "hello"}], max_tokens=6, temperature=0
    )
    assert reply.choices[0].message.role == "assistant" and reply.usage.completion_tokens <= 6
    stream = client.chat.completions.create(
        model="large",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=6,
        temperature=0,
        stream=True,
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in stream)
        == reply.choices[0].message.content
    )


def test_models_health_and_metrics(server):
    assert {m.id for m in _client(server).models.list()} == {"small", "large"}
    health = httpx.get(f"{server[0]}/health").json()
    assert (
        health["status"] == "ok"
        and health["workers"]["prefill"] >= 1
        and health["workers"]["decode"] >= 1
    )
    _client(server).completions.create(model="small", prompt="count the switches", max_tokens=3)
    text = httpx.get(f"{server[0]}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    families = {
        f.name: f for f in text_string_to_metric_families(text)
    }  # the scrape parses as Prometheus text

    def value(family: str, sample: str, **labels) -> float:
        return next(
            s.value for s in families[family].samples if s.name == sample and s.labels == labels
        )

    assert value("aegaeon_requests", "aegaeon_requests_total", model_name="small") >= 1
    assert value("vllm:prompt_tokens", "vllm:prompt_tokens_total", model_name="small") >= 1
    assert value("vllm:generation_tokens", "vllm:generation_tokens_total", model_name="small") >= 1
    assert (
        value(
            "vllm:time_to_first_token_seconds",
            "vllm:time_to_first_token_seconds_count",
            model_name="small",
        )
        >= 1
    )
    assert (
        value(
            "vllm:e2e_request_latency_seconds",
            "vllm:e2e_request_latency_seconds_count",
            model_name="small",
        )
        >= 1
    )
    assert (
        sum(
            s.value
            for s in families["vllm:request_success"].samples
            if s.name == "vllm:request_success_total" and s.labels["model_name"] == "small"
        )
        >= 1
    )
    assert {
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "aegaeon_slo_attainment",
        "aegaeon_worker_restarts",
    } <= set(families)
    assert all(family.documentation for family in families.values())  # a HELP line on every series
    # per model: switches, the time they took, and KV bytes moved by the prefill -> decode handoff
    assert value("aegaeon_model_switches", "aegaeon_model_switches_total", model_name="small") >= 1
    assert (
        value(
            "aegaeon_model_switch_seconds", "aegaeon_model_switch_seconds_total", model_name="small"
        )
        > 0
    )
    assert (
        value(
            "aegaeon_kv_swap_bytes",
            "aegaeon_kv_swap_bytes_total",
            model_name="small",
            kind="export",
        )
        > 0
    )
    # the SLO /metrics scores against is the one the node plans decode quotas for
    assert value("aegaeon_slo_seconds", "aegaeon_slo_seconds", kind="tpot") == server[2].slo.tpot


def test_unknown_model_is_a_404_with_an_openai_error(server):
    with pytest.raises(openai.NotFoundError) as err:
        _client(server).completions.create(model="nope", prompt="hi", max_tokens=2)
    assert err.value.body["code"] == "model_not_found"


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "small", "prompt": "hi", "max_tokens": -1}, "max_tokens"),
        ({"model": "small", "prompt": "hi", "max_tokens": "many"}, "max_tokens"),
        ({"model": "small", "prompt": "hi", "n": 0}, "n"),
        ({"model": "small", "prompt": "hi", "frobnicate": True}, "frobnicate"),
        ({"prompt": "hi"}, "model"),
        ({"model": "small", "prompt": "hi " * 3000, "max_tokens": 10}, "max_tokens"),
    ],
)
def test_bad_bodies_are_400s_that_name_the_field(server, body, param):
    response = httpx.post(
        f"{server[0]}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_malformed_json_and_missing_key_are_client_errors(server):
    bad = httpx.post(
        f"{server[0]}/v1/completions",
        content=b"{not json",
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert bad.status_code == 400 and "error" in bad.json()
    assert httpx.get(f"{server[0]}/v1/models").status_code == 401


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_streams_server_sent_events(server):
    out = subprocess.run(
        [
            "curl",
            "-sN",
            f"{server[0]}/v1/completions",
            "-H",
            f"Authorization: Bearer {KEY}",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps({"model": "small", "prompt": "one pool", "max_tokens": 4, "stream": True}),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    events = [line[6:] for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and all("choices" in json.loads(e) for e in events[:-1])


def test_a_client_that_disconnects_mid_stream_cancels_its_request(server):
    url, proxy, _ = server
    cancelled_before = proxy.cancelled
    body = {"model": "small", "prompt": "the model serves", "max_tokens": 1900, "stream": True}
    with httpx.stream(
        "POST", f"{url}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
    ) as r:
        first = next(r.iter_lines())
        assert first.startswith("data: ")
    # 1900 tokens take several seconds to generate: an empty proxy this soon means the request was cancelled
    deadline = time.monotonic() + 3
    while proxy.requests and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not proxy.requests and not any(link.live for link in proxy.links.values())
    assert proxy.cancelled == cancelled_before + 1
    after = _client(server).completions.create(
        model="small", prompt="again", max_tokens=4, temperature=0
    )
    assert after.usage.completion_tokens <= 4


def test_a_non_streaming_client_that_gives_up_cancels_its_request(server):
    url, proxy, _ = server
    cancelled_before = proxy.cancelled
    body = {"model": "small", "prompt": "the model serves", "max_tokens": 1900, "ignore_eos": True}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(
            f"{url}/v1/completions",
            json=body,
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=0.5,
        )
    deadline = time.monotonic() + 3
    while proxy.requests and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not proxy.requests and proxy.cancelled == cancelled_before + 1


def test_a_client_that_never_finishes_its_request_is_disconnected(server):
    host, port = server[0].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
        )  # and then nothing
        began = time.monotonic()
        assert (
            sock.recv(1024) == b""
        )  # closed by the server (header_timeout=1 s), not by our 5 s timeout
        assert time.monotonic() - began < 4


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
            state = client.submit("small", ids, max_tokens, temperature, top_p, seed)
            list(client.stream(state))
        except RequestError:
            pass  # refused, or failed alone: either way the node must carry on

    restarts = proxy.restarts
    throw()
    time.sleep(0.5)
    assert proxy.health()[0], proxy.health()
    assert proxy.restarts == restarts, "a request killed a worker (the supervisor replaced it)"
    after = _client(server).completions.create(
        model="small", prompt="still serving", max_tokens=3, temperature=0
    )
    assert after.usage.completion_tokens <= 3


def test_a_chat_template_that_rejects_the_messages_is_a_400(tmp_path):
    import json as _json

    from aegaeon.serve.served_model import ServedModel, TemplateRejected

    path = make_model(tmp_path / "templated", SMALL_SHAPE)
    config = _json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = (
        "{% if messages[0].role != 'user' %}{{ raise_exception('first message must come "
        "from the user') }}{% endif %}{{ bos_token }}{{ messages[0].content }}"
    )
    config["bos_token"] = "<s>"
    (path / "tokenizer_config.json").write_text(_json.dumps(config))
    model = ServedModel("templated", path)
    assert model.render_chat([{"role": "user", "content": "hi"}]) == "<s>hi"
    with pytest.raises(TemplateRejected, match="first message must come from the user"):
        model.render_chat([{"role": "system", "content": "x"}])


def _wait_healthy(url: str, proc, timeout: float = 90, statuses: tuple[int, ...] = (200,)) -> None:
    """Until /health answers with one of `statuses` (a head without decode workers answers 503)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the launcher exited early"
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code in statuses:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the node did not come up")


def test_launcher_cleans_up_on_sigterm_and_recovers_after_a_crash(tmp_path):
    import signal
    import sys

    from aegaeon.ipc.shm import SHM_DIR

    model = make_model(tmp_path / "solo", SMALL_SHAPE)
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "aegaeon.launch",
        "start",
        "--models",
        str(model),
        "--num-instances",
        "2",
        "--cluster-id",
        "launchtest",
        "--port",
        str(port),
    ]
    crashed = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    _wait_healthy(f"http://127.0.0.1:{port}", crashed)
    crashed.kill()  # no cleanup: its shm objects stay behind
    crashed.wait()
    assert list(SHM_DIR.glob("*aegaeon-launchtest-*"))
    port = _free_port()
    cmd[-1] = str(port)
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    _wait_healthy(
        f"http://127.0.0.1:{port}", proc
    )  # the restart removed the crashed run's objects first
    reply = httpx.post(
        f"http://127.0.0.1:{port}/v1/completions",
        json={"model": "solo", "prompt": "hi", "max_tokens": 3},
        timeout=30,
    )
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] <= 3
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    time.sleep(0.5)
    assert not list(SHM_DIR.glob("*aegaeon-launchtest-*"))


def test_stop_strings_end_the_text_before_them_streaming_and_not(server):
    client = _client(server)
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


def test_stream_options_include_usage_adds_a_last_chunk_with_the_usage(server):
    client = _client(server)
    chunks = list(
        client.completions.create(
            model="small",
            prompt="the model serves",
            max_tokens=5,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])


def test_top_k_1_samples_what_greedy_decodes(server):
    client = _client(server)
    args = dict(
        model="small", prompt="the model serves", max_tokens=8, extra_body={"ignore_eos": True}
    )
    greedy = client.completions.create(**args, temperature=0).choices[0].text
    args["extra_body"] = {"ignore_eos": True, "top_k": 1, "min_p": 0.0}
    assert client.completions.create(**args, temperature=1.0, seed=3).choices[0].text == greedy


def test_penalties_and_vllm_stopping_fields_through_the_openai_package(server):
    client = _client(server)
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
    client = _client(server)
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
    client = _client(server)
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


def test_echo_puts_the_prompt_before_the_completion(server):
    client = _client(server)
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
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="small", prompt=prompt, max_tokens=4, echo=True, logprobs=1)
    assert err.value.body["param"] == "echo"
