"""The HTTP API with real clients: the `openai` package and curl. The sampling fields (penalties, n,
logprobs, echo, stop strings, top_k/min_p) are in test_openai_sampling.py; the `server` fixture is in
conftest.py."""

import json
import shutil
import socket
import subprocess
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serve.api_server import KEY, openai_client

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")  # the `server` fixture serves the API with it


def test_completions_with_the_openai_package_streaming_and_not(server):
    client = openai_client(server)
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
    client = openai_client(server)
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
    assert {m.id for m in openai_client(server).models.list()} == {"small", "large"}
    health = httpx.get(f"{server[0]}/health").json()
    assert (
        health["status"] == "ok"
        and health["workers"]["prefill"] >= 1
        and health["workers"]["decode"] >= 1
    )
    openai_client(server).completions.create(
        model="small", prompt="count the switches", max_tokens=3
    )
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
        openai_client(server).completions.create(model="nope", prompt="hi", max_tokens=2)
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
    after = openai_client(server).completions.create(
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


def test_stream_options_include_usage_adds_a_last_chunk_with_the_usage(server):
    client = openai_client(server)
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
