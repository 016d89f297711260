"""OpenAI-compatible HTTP API on a node's proxy (FastAPI).

Endpoints: POST /v1/completions and /v1/chat/completions (with `stream: true`
as server-sent events), GET /v1/models, GET /health, GET /metrics (Prometheus
text). Request bodies are validated strictly (unknown fields, wrong types and
out-of-range values are 400s that name the field); an unknown model is a 404;
errors use OpenAI's body `{"error": {"message", "type", "param", "code"}}`.
Tokenisation happens here (the `tokenizers` library, no tensors); the proxy
and workers see token ids only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from aegaeon.client import Client
from aegaeon.errors import RequestError
from aegaeon.models.config import load_arch_config
from aegaeon.serve.metrics import Metrics
from aegaeon.serve.proxy import Proxy, RequestState

log = logging.getLogger(__name__)

DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}<|assistant|>\n"
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Generation(_Strict):
    """Fields both endpoints share."""

    model: str
    max_tokens: int = Field(16, ge=1, le=1_000_000)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: Literal[1] = 1
    stream: bool = False
    seed: int | None = None
    user: str | None = None


class CompletionBody(_Generation):
    prompt: str | list[str]


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatBody(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _error_body(message: str, param: str | None, code: str | None, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ServedModel:
    def __init__(self, name: str, path: Path):
        from tokenizers import Tokenizer

        self.name = name
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.max_position = load_arch_config(path).max_position
        tokenizer_config = path / "tokenizer_config.json"
        extra = json.loads(tokenizer_config.read_text()) if tokenizer_config.is_file() else {}
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment()
        env.globals["raise_exception"] = _raise_template_error  # what Hugging Face chat templates call
        self.special_tokens = {k: v for k, v in extra.items() if k in ("bos_token", "eos_token") and isinstance(v, str)}
        self.chat_template = env.from_string(extra.get("chat_template") or DEFAULT_CHAT_TEMPLATE)

    def render_chat(self, messages: list[dict]) -> str:
        from jinja2 import TemplateError

        try:
            return self.chat_template.render(messages=messages, add_generation_prompt=True, **self.special_tokens)
        except TemplateError as err:
            raise ApiError(400, f"the chat template of {self.name} rejected the messages: {err}", "messages") from None

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


def create_app(proxy: Proxy, models: dict[str, Path], api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="aegaeon", docs_url=None, redoc_url=None)
    served = {name: ServedModel(name, Path(path)) for name, path in models.items()}
    client = Client(proxy)
    metrics = Metrics()
    app.state.metrics = metrics

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(_error_body(err.message, err.param, err.code), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(loc) or None
        message = f"{param or 'body'}: {first.get('msg', 'invalid')}"
        return JSONResponse(_error_body(message, param, first.get("type")), status_code=400)

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1/"):
            if request.headers.get("authorization") != f"Bearer {api_key}":
                return JSONResponse(_error_body("invalid or missing API key", None, "invalid_api_key",
                                                "authentication_error"), status_code=401)
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict:
        alive = [link for link in list(proxy.links.values()) if not link.dead]
        return {"status": "ok", "models": len(served),
                "workers": {role: sum(link.role == role for link in alive) for role in ("prefill", "decode")},
                "remote_workers": sum(link.remote for link in alive)}

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "aegaeon"}
                                           for n in served]}

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(proxy), media_type="text/plain; version=0.0.4")

    def _model(name: str) -> ServedModel:
        if name not in served:
            raise ApiError(404, f"The model `{name}` does not exist: see GET /v1/models", "model", "model_not_found")
        return served[name]

    def _start(model: ServedModel, prompt_ids: list[int], body) -> RequestState:
        if not prompt_ids:
            raise ApiError(400, "the prompt is empty", "prompt")
        if len(prompt_ids) + body.max_tokens > model.max_position:
            raise ApiError(400, f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({body.max_tokens}) "
                                f"exceeds the context of {model.max_position} tokens", "max_tokens",
                           "context_length_exceeded")
        try:
            return client.submit(model.name, prompt_ids, body.max_tokens, body.temperature, body.top_p, body.seed)
        except RequestError as err:
            raise ApiError(400, str(err)) from None

    @app.post("/v1/completions")
    async def completions(body: CompletionBody):
        model = _model(body.model)
        prompt = body.prompt if isinstance(body.prompt, str) else "".join(body.prompt)
        if isinstance(body.prompt, list) and len(body.prompt) != 1:
            raise ApiError(400, "give one prompt per request (a list of exactly one string)", "prompt")
        state = _start(model, model.encode(prompt), body)
        return await _respond(state, model, body.stream, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody):
        model = _model(body.model)
        text = model.render_chat([m.model_dump() for m in body.messages])
        state = _start(model, model.encode(text), body)
        return await _respond(state, model, body.stream, chat=True)

    async def _respond(state: RequestState, model: ServedModel, stream: bool, chat: bool):
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{state.submit.request_id}"
        metrics.started(model.name)
        if stream:
            return StreamingResponse(_sse(state, model, rid, chat), media_type="text/event-stream")
        tokens, reason, arrival = [], None, time.time()
        times: list[float] = []
        async for token_ids, stamps, finish in _tokens(state):
            tokens += token_ids
            times += stamps
            reason = finish or reason
        metrics.finished(model.name, arrival, times)
        text = model.decode(tokens)
        usage = {"prompt_tokens": len(state.submit.prompt_ids), "completion_tokens": len(tokens),
                 "total_tokens": len(state.submit.prompt_ids) + len(tokens)}
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason} if chat
                  else {"index": 0, "text": text, "logprobs": None, "finish_reason": reason})
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": model.name, "choices": [choice], "usage": usage}

    async def _tokens(state: RequestState) -> AsyncIterator[tuple[list[int], list[float], str | None]]:
        """Token batches from the proxy, awaited on the event loop (no thread per stream); ApiError on failure."""
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()
        proxy.listen(state, lambda message: loop.call_soon_threadsafe(inbox.put_nowait, message))
        while True:
            try:
                message = await asyncio.wait_for(inbox.get(), timeout=client.timeout)
            except asyncio.TimeoutError:
                raise ApiError(504, f"request {state.submit.request_id} produced no token in time", None,
                               "timeout") from None
            if message.error is not None:
                raise ApiError(503 if message.unavailable else 400, message.error, None, "request_failed")
            yield list(message.token_ids), list(message.times), message.finish_reason
            if message.finish_reason is not None:
                return

    async def _sse(state: RequestState, model: ServedModel, rid: str, chat: bool) -> AsyncIterator[bytes]:
        sent, arrival, times, finished = [], time.time(), [], False
        try:
            async for token_ids, stamps, finish in _tokens(state):
                finished = finish is not None
                times += stamps
                before = model.decode(sent)
                sent += token_ids
                delta = model.decode(sent)[len(before):]
                obj = "chat.completion.chunk" if chat else "text_completion"
                choice = ({"index": 0, "delta": {"content": delta}, "finish_reason": finish} if chat
                          else {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish})
                chunk = {"id": rid, "object": obj, "created": int(time.time()), "model": model.name,
                         "choices": [choice]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
        except ApiError as err:
            finished = True
            yield f"data: {json.dumps(_error_body(err.message, err.param, err.code))}\n\n".encode()
        finally:
            if not finished:  # the client disconnected mid-stream: free the request's KV
                proxy.cancel(state.submit.request_id)
        metrics.finished(model.name, arrival, times)
        yield b"data: [DONE]\n\n"

    return app


def _raise_template_error(message: str) -> None:
    from jinja2 import TemplateError

    raise TemplateError(message)
