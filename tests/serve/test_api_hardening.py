"""Bad input is a 4xx with a JSON body, never a 5xx: strict types, seeds, Unicode, keys, body size,
overload and health (chat templates: test_chat_templates.py). These run the real app (its middleware and
routes) on a stand-in proxy."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from aegaeon.config.serving import ApiConfig
from aegaeon.models.maker import make_model
from aegaeon.serve.openai_api import create_app
from aegaeon.serve.proxy import UnavailableError
from aegaeon.serve.requests import OverloadedError
from tests.models.reference import SMALL_SHAPE
from tests.serve.fake_proxy import FakeProxy

KEY = "k-123456"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("hard") / "tiny", SMALL_SHAPE)


def _client(model_dir, proxy=None, **api):
    proxy = proxy or FakeProxy()
    app = create_app(proxy, {"tiny": model_dir}, ApiConfig(api_key=KEY, **api))
    return TestClient(app, raise_server_exceptions=False), proxy


def _post(client, body, path="/v1/completions"):
    # json.dumps escapes non-ASCII, so a lone surrogate travels as its \\u escape, as any client would send it
    return client.post(
        path,
        content=json.dumps(body).encode(),
        headers={**AUTH, "Content-Type": "application/json"},
    )


def test_a_good_request_passes_and_reaches_the_proxy(model_dir):
    client, proxy = _client(model_dir)
    reply = _post(client, {"model": "tiny", "prompt": "hi", "max_tokens": 3, "seed": -1})
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == 3 and proxy.submitted[0].seed == -1


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_tokens", "16"),
        ("max_tokens", True),
        ("max_tokens", 2.5),
        ("temperature", "0.5"),
        ("temperature", True),
        ("stream", "yes"),
        ("stream", 1),
        ("top_p", "1"),
        ("seed", "7"),
        ("seed", 2**64),
        ("seed", -(2**63) - 1),
        ("top_p", 0),
        ("temperature", 2.5),
        ("model", 3),
        ("prompt", 7),
    ],
)
def test_values_are_never_coerced_and_ranges_hold(model_dir, field, value):
    client, proxy = _client(model_dir)
    reply = _post(client, {"model": "tiny", "prompt": "hi", "max_tokens": 2, field: value})
    assert reply.status_code == 400, (field, value, reply.text)
    assert reply.json()["error"]["param"].split(".")[0] == field and not proxy.submitted


def test_top_k_and_min_p_reach_the_worker_and_are_strict(model_dir):
    client, proxy = _client(model_dir)
    reply = _post(
        client, {"model": "tiny", "prompt": "hi", "max_tokens": 2, "top_k": 5, "min_p": 0.1}
    )
    assert reply.status_code == 200, reply.text
    assert (proxy.submitted[-1].top_k, proxy.submitted[-1].min_p) == (5, 0.1)
    for bad in ({"top_k": "5"}, {"top_k": -2}, {"top_k": 1.5}, {"min_p": 2.0}, {"min_p": "0.1"}):
        reply = _post(client, {"model": "tiny", "prompt": "hi", "max_tokens": 2, **bad})
        assert reply.status_code == 400 and "error" in reply.json(), (bad, reply.text)


def test_a_lone_surrogate_is_a_400_in_completions_and_chat(model_dir):
    client, _ = _client(model_dir)
    raw = b'{"model": "tiny", "prompt": "a\\ud800b", "max_tokens": 2}'
    reply = client.post(
        "/v1/completions", content=raw, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert reply.status_code == 400 and "surrogate" in reply.json()["error"]["message"]
    raw = (
        b'{"model": "tiny", "messages": [{"role": "user", "content": "\\udfff"}], "max_tokens": 2}'
    )
    reply = client.post(
        "/v1/chat/completions", content=raw, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert reply.status_code == 400
    raw = (
        b'{"model": "\\ud800", "prompt": "hi", "max_tokens": 2}'  # quoted back in the 404's message
    )
    reply = client.post(
        "/v1/completions", content=raw, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert reply.status_code == 404 and "does not exist" in reply.json()["error"]["message"]


def test_the_api_key_guards_every_route_but_health_in_constant_time(model_dir):
    client, _ = _client(model_dir)
    for path in ("/v1/models", "/metrics", "/openapi.json", "/docs", "/nope"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"Authorization": f"Bearer {KEY}x"}).status_code == 401, (
            path
        )
    assert client.get("/health").status_code == 200
    assert client.get("/v1/models", headers=AUTH).status_code == 200
    public, _ = _client(model_dir, public_metrics=True)
    assert public.get("/metrics").status_code == 200 and public.get("/v1/models").status_code == 401


def test_an_oversized_body_is_a_413_declared_or_not(model_dir):
    client, proxy = _client(model_dir, max_body_bytes=4096)
    body = {"model": "tiny", "prompt": "x" * 5000, "max_tokens": 2}
    reply = _post(client, body)
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "body_too_large"

    def chunks():  # no Content-Length: counted as it arrives
        data = json.dumps(body).encode()
        for i in range(0, len(data), 1000):
            yield data[i : i + 1000]

    reply = client.post(
        "/v1/completions", content=chunks(), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert reply.status_code == 413, reply.text
    assert not proxy.submitted


def test_overload_is_a_429_with_retry_after_and_a_lost_cluster_a_503(model_dir):
    client, _ = _client(
        model_dir, FakeProxy(refuse=OverloadedError("the node holds 4 requests", 2.0))
    )
    reply = _post(client, {"model": "tiny", "prompt": "hi"})
    assert reply.status_code == 429 and reply.headers["retry-after"] == "2"
    assert reply.json()["error"]["type"] == "rate_limit_error"
    client, _ = _client(model_dir, FakeProxy(refuse=UnavailableError("no prefill worker is alive")))
    reply = _post(client, {"model": "tiny", "prompt": "hi"})
    assert reply.status_code == 503 and reply.json()["error"]["type"] == "service_unavailable_error"


def test_health_is_503_with_the_reason_when_the_node_cannot_serve(model_dir):
    client, _ = _client(model_dir, FakeProxy(serving=(False, "no decode worker is alive")))
    reply = client.get("/health")
    assert reply.status_code == 503 and reply.json()["reason"] == "no decode worker is alive"


def test_a_tiny_temperature_is_greedy_not_nan(model_dir):
    client, proxy = _client(model_dir)
    assert (
        _post(client, {"model": "tiny", "prompt": "hi", "temperature": 1e-300}).status_code == 200
    )
    assert proxy.submitted[-1].temperature == 0.0


def test_chat_accepts_content_parts_and_the_newer_roles(model_dir):
    client, proxy = _client(model_dir)
    reply = _post(
        client,
        {
            "model": "tiny",
            "max_completion_tokens": 2,
            "messages": [
                {"role": "developer", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}],
                },
            ],
        },
        "/v1/chat/completions",
    )
    assert reply.status_code == 200, reply.text
    assert proxy.submitted[-1].max_tokens == 2


_floats = st.floats(
    allow_nan=False, allow_infinity=False
)  # JSON has no NaN: a client cannot send one
# lone surrogates too: an error that quotes one back once made the response unencodable (a 500)
_text = st.text(max_size=20) | st.text(
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3
)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | _floats | _text,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_fields = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["tiny", "nope"]) | _json_values,
        "prompt": st.text(max_size=40) | _json_values,
        "max_tokens": st.integers(-5, 5000) | _json_values,
        "temperature": _floats | _json_values,
        "top_p": _floats | _json_values,
        "seed": st.integers() | _json_values,
        "stream": _json_values,
        "n": _json_values,
        "messages": st.lists(
            st.fixed_dictionaries(
                {
                    "role": st.sampled_from(["user", "system", "robot"]),
                    "content": st.text(max_size=20) | _json_values,
                }
            ),
            max_size=3,
        )
        | _json_values,
        "extra": _json_values,
    },
)


@pytest.fixture(scope="module")
def fuzz_client(model_dir):
    return _client(model_dir)[0]


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=_fields, chat=st.booleans())
def test_fuzzed_bodies_never_make_a_5xx(fuzz_client, body, chat):
    client = fuzz_client
    reply = _post(client, body, "/v1/chat/completions" if chat else "/v1/completions")
    assert reply.status_code < 500, (body, reply.text)
    assert "error" in reply.json() or reply.status_code == 200


def test_metrics_parse_with_prometheus_client_even_for_a_model_named_with_quotes(model_dir):
    from prometheus_client.parser import text_string_to_metric_families

    name = 'we"ird\\name\nwith a newline'
    app = create_app(FakeProxy(), {name: model_dir}, ApiConfig(api_key=KEY))
    client = TestClient(app, raise_server_exceptions=False)
    assert _post(client, {"model": name, "prompt": "hi", "max_tokens": 3}).status_code == 200
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    generated = [
        s
        for s in families["vllm:generation_tokens"].samples
        if s.name == "vllm:generation_tokens_total"
    ]
    assert [(s.labels["model_name"], s.value) for s in generated] == [(name, 3.0)]
    reasons = [
        s.labels
        for s in families["vllm:request_success"].samples
        if s.name == "vllm:request_success_total"
    ]
    assert reasons == [{"model_name": name, "finished_reason": "length"}]
