"""Models added to and removed from a running node through the admin routes (and `aegaeon models`)."""

import threading
import time

import pytest

pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from aegaeon.config.serving import ApiConfig, EngineConfig  # noqa: E402
from aegaeon.engine.local import LocalEngine  # noqa: E402
from aegaeon.ipc.shm import SHM_DIR  # noqa: E402
from aegaeon.models.maker import config_for, make_model  # noqa: E402
from aegaeon.models.sampler import SamplingParams  # noqa: E402
from tests.models.reference import LARGE_SHAPE, SMALL_SHAPE  # noqa: E402
from tests.serve.api_server import free_port  # noqa: E402
from tests.serve.node_helpers import SLAB, make_node  # noqa: E402

KEY = "admin-key"
CLUSTER = "admintest"


@pytest.fixture(scope="module")
def admin(tmp_path_factory):
    """(url, node, {name: checkpoint dir}) of a node serving "small" with the admin routes on."""
    import uvicorn

    from aegaeon.serve.openai_api import create_app
    from aegaeon.serve.server import uvicorn_config

    root = tmp_path_factory.mktemp("admin")
    dirs = {
        "small": make_model(root / "small", SMALL_SHAPE, seed=1),
        "large": make_model(root / "large", LARGE_SHAPE, seed=2),
        "huge": make_model(
            root / "huge",
            config_for(
                "llama", layers=4, hidden=512, heads=8, kv_heads=8, intermediate=2048, vocab=4000
            ),
            seed=3,
        ),
    }
    node = make_node({"small": str(dirs["small"])}, CLUSTER, num_instances=3)
    proxy, config = node.start(), node.config
    port = free_port()
    api = ApiConfig(port=port, api_key=KEY)
    app = create_app(proxy, {"small": dirs["small"]}, api, config, node.changes)
    server = uvicorn.Server(uvicorn_config(app, api))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", node, dirs
    server.should_exit = True
    thread.join(timeout=10)
    node.stop()


def _http(url: str):
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)


def _models(client) -> list[str]:
    return sorted(m["id"] for m in client.get("/v1/models").json()["data"])


def _weight_segments() -> int:
    return len(list(SHM_DIR.glob(f"aegaeon-{CLUSTER}-weights.*")))


def _complete(client, model: str, prompt: str, max_tokens: int = 8):
    return client.post(
        "/v1/completions",
        json={"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
    )


def _serve_large(client, dirs) -> None:
    if "large" not in _models(client):
        added = client.post("/v1/admin/models", json={"name": "large", "path": str(dirs["large"])})
        assert added.status_code == 200, added.text


def _long_request_in_flight(client, node, max_tokens: int) -> tuple[threading.Thread, dict]:
    """A request of `large` for `max_tokens` tokens on a thread, started and in flight on the node."""
    outcome: dict = {}

    def run() -> None:
        outcome["reply"] = _complete(
            client, "large", "hot and cold models share one pool", max_tokens
        )

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 30
    while not node.proxy.in_flight("large") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert node.proxy.in_flight("large") == 1
    return worker, outcome


def test_a_model_added_at_run_time_serves_the_same_greedy_tokens_as_alone(admin):
    url, node, dirs = admin
    with _http(url) as client:
        assert _models(client) == ["small"]
        added = client.post("/v1/admin/models", json={"name": "large", "path": str(dirs["large"])})
        assert added.status_code == 200, added.text
        assert added.json()["id"] == "large" and added.json()["weight_bytes"] > 0
        assert _models(client) == ["large", "small"]
        assert _weight_segments() == 2
        reply = _complete(client, "large", "one gpu many models", 10)
        assert reply.status_code == 200, reply.text
        again = client.post("/v1/admin/models", json={"name": "large", "path": str(dirs["large"])})
        assert again.status_code == 409 and again.json()["error"]["code"] == "model_exists"
    from aegaeon.client import Client

    with LocalEngine({"large": str(dirs["large"])}, EngineConfig(slab_bytes=SLAB)) as engine:
        alone = engine.generate([("large", "one gpu many models")], SamplingParams(max_tokens=10))[
            0
        ]
    result = Client(node.proxy).complete_many([("large", list(alone.prompt_ids))], max_tokens=10)[0]
    assert result.error is None and result.token_ids == alone.token_ids


def test_bad_additions_are_4xx_and_change_nothing(admin, tmp_path):
    url, node, dirs = admin
    with _http(url) as client:
        before, segments = _models(client), _weight_segments()
        missing = client.post(
            "/v1/admin/models", json={"name": "x", "path": str(tmp_path / "nope")}
        )
        assert missing.status_code == 400 and "nope" in missing.json()["error"]["message"]
        typo = client.post("/v1/admin/models", json={"name": "x", "paht": "/tmp"})
        assert typo.status_code == 400
        # weights larger than a worker's arena: every worker refuses, the host cache lets it go again
        huge = client.post("/v1/admin/models", json={"name": "huge", "path": str(dirs["huge"])})
        assert huge.status_code == 400, huge.text
        assert "arena" in huge.json()["error"]["message"]
        assert _models(client) == before and _weight_segments() == segments
        assert "huge" not in node.good_models
        no_key = httpx.post(
            f"{url}/v1/admin/models", json={"name": "x", "path": str(dirs["large"])}
        )
        assert no_key.status_code == 401
        assert _complete(client, "small", "still serving").status_code == 200


def test_removing_drains_in_flight_requests_then_the_model_is_gone(admin):
    url, node, dirs = admin
    with _http(url) as client:
        _serve_large(client, dirs)
        worker, outcome = _long_request_in_flight(client, node, 300)
        removed = client.delete("/v1/admin/models/large", params={"drain_timeout": 120})
        worker.join(timeout=120)
        assert removed.status_code == 200, removed.text
        assert removed.json()["drained"] == 1 and removed.json()["failed"] == 0
        reply = outcome["reply"]
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 300
        assert _models(client) == ["small"] and _weight_segments() == 1
        gone = _complete(client, "large", "hello")
        assert gone.status_code == 404
        assert client.delete("/v1/admin/models/large").status_code == 404
        last = client.delete("/v1/admin/models/small")
        assert last.status_code == 409 and last.json()["error"]["code"] == "last_model"
        # the same name again, from the same checkpoint: served again
        back = client.post("/v1/admin/models", json={"name": "large", "path": str(dirs["large"])})
        assert back.status_code == 200 and _complete(client, "large", "hello").status_code == 200


def test_removing_with_no_drain_time_fails_what_still_runs(admin):
    url, node, dirs = admin
    with _http(url) as client:
        _serve_large(client, dirs)
        worker, outcome = _long_request_in_flight(client, node, 1500)
        removed = client.delete("/v1/admin/models/large", params={"drain_timeout": 0})
        worker.join(timeout=60)
        assert removed.status_code == 200 and removed.json()["failed"] == 1
        assert outcome["reply"].status_code == 503
        assert "removed" in outcome["reply"].json()["error"]["message"]
        assert _complete(client, "small", "still serving").status_code == 200
        bad = client.delete("/v1/admin/models/small", params={"drain_timeout": -1})
        assert bad.status_code == 400


def test_the_models_command_lists_adds_and_removes(admin, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from aegaeon.cli import main

    url, node, dirs = admin
    runner = CliRunner()
    monkeypatch.chdir(dirs["large"].parent)  # a relative path is sent to the server made absolute
    monkeypatch.setenv("AEGAEON_API_KEY", KEY)
    with _http(url) as client:
        if "large" in _models(client):
            client.delete("/v1/admin/models/large")
    added = runner.invoke(main, ["models", "add", "big=large", "--url", url])
    assert added.exit_code == 0, added.output
    assert "added big" in added.output
    listed = runner.invoke(main, ["models", "list", "--url", url])
    assert listed.exit_code == 0 and "big\t" in listed.output and "small\t" in listed.output
    removed = runner.invoke(main, ["models", "remove", "big", "--url", url])
    assert removed.exit_code == 0 and "removed big: 0 requests drained" in removed.output
    refused = runner.invoke(main, ["models", "remove", "big", "--url", url])
    assert refused.exit_code == 1 and "HTTP 404" in refused.output
    wrong_key = runner.invoke(main, ["models", "list", "--url", url, "--api-key", "nope"])
    assert wrong_key.exit_code == 1 and "HTTP 401" in wrong_key.output
    nobody = runner.invoke(main, ["models", "list", "--url", f"http://127.0.0.1:{free_port()}"])
    assert nobody.exit_code == 1 and "no aegaeon server answers" in nobody.output


def test_a_worker_replaced_after_an_addition_serves_the_added_model(admin):
    url, node, dirs = admin
    with _http(url) as client:
        _serve_large(client, dirs)
        restarts = node.proxy.restarts
        for process in node.processes:  # every worker: the replacements know only their spawn spec
            process.kill()
        deadline = time.monotonic() + 60
        while node.proxy.restarts < restarts + len(node.processes) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert node.proxy.restarts == restarts + len(node.processes)
        reply = _complete(client, "large", "one gpu many models", 6)
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] == 6
