"""Chat templates from tokenizer_config.json: one that rejects the messages, one that fails at render
(a 400 from the API, run on a stand-in proxy) and one that does not parse (the default, with a warning)."""

import json

import pytest
from starlette.testclient import TestClient

from aegaeon.models.maker import make_model
from aegaeon.serve.openai_api import create_app
from aegaeon.serve.served_model import ServedModel, TemplateRejected
from tests.models.reference import SMALL_SHAPE
from tests.serve.fake_proxy import FakeProxy


def test_a_chat_template_that_rejects_the_messages_is_a_400(tmp_path):
    path = make_model(tmp_path / "templated", SMALL_SHAPE)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = (
        "{% if messages[0].role != 'user' %}{{ raise_exception('first message must come "
        "from the user') }}{% endif %}{{ bos_token }}{{ messages[0].content }}"
    )
    config["bos_token"] = "<s>"
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    model = ServedModel("templated", path)
    assert model.render_chat([{"role": "user", "content": "hi"}]) == "<s>hi"
    with pytest.raises(TemplateRejected, match="first message must come from the user"):
        model.render_chat([{"role": "system", "content": "x"}])


def _templated(tmp_path, template):
    path = make_model(tmp_path / "templated", SMALL_SHAPE)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize(
    "template",
    [
        "{% include 'other.jinja' %}",
        "{{ 1 / 0 }}",
        "{{ messages.__class__ }}x{{ ''.__class__.__mro__[1].__subclasses__() }}",
    ],
)
def test_a_template_that_fails_at_render_is_a_400(tmp_path, template):
    path = _templated(tmp_path, template)
    with pytest.raises(TemplateRejected):
        ServedModel("t", path).render_chat([{"role": "user", "content": "hi"}])
    client = TestClient(create_app(FakeProxy(), {"t": path}), raise_server_exceptions=False)
    reply = client.post(
        "/v1/chat/completions", json={"model": "t", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "messages"


def test_a_template_that_does_not_parse_falls_back_to_the_default_with_a_warning(tmp_path, caplog):
    path = _templated(tmp_path, "{% for m in messages %}{{ m.content }")
    with caplog.at_level("WARNING"):
        model = ServedModel("broken", path)
    assert "does not parse" in caplog.text
    assert "<|user|>" in model.render_chat([{"role": "user", "content": "hi"}])
