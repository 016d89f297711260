"""OpenAI-compatible HTTP API on a node's proxy (FastAPI).

Endpoints: POST /v1/completions and /v1/chat/completions (with `stream: true` as server-sent events),
GET /v1/models, GET /health, GET /metrics (Prometheus text), and the admin routes of aegaeon.serve.admin_api. Bodies are validated strictly
(aegaeon.serve.api_schema); errors use OpenAI's body `{"error": {"message", "type", "param", "code"}}`:
400 for a bad request, 401 without the key, 404 for an unknown model, 413 for an oversized body, 429 with
`Retry-After` beyond the admission limits, 503 when the cluster cannot serve. Tokenisation and chat
templates run on a thread pool, never on the event loop; the proxy and workers see token ids only. A client
that disconnects, streaming or not, cancels its request.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from aegaeon.config.serving import ApiConfig, NodeConfig
from aegaeon.serve.admin_api import add_admin_routes
from aegaeon.serve.api_errors import ApiError
from aegaeon.serve.api_guard import BodyTooLarge, Guard, JSONResponse, error_body
from aegaeon.serve.api_schema import ChatBody, CompletionBody
from aegaeon.serve.generation import Generation
from aegaeon.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from aegaeon.serve.metrics import Metrics
from aegaeon.serve.model_admin import ModelChanges
from aegaeon.serve.proxy import Proxy
from aegaeon.serve.responses import Responder
from aegaeon.serve.served_model import ServedModel, TemplateRejected
from aegaeon.serve.submission import submit_choices

log = logging.getLogger(__name__)

MAX_CHOICES = 64  # prompts x n of one request: each is a request on the node


def create_app(
    proxy: Proxy,
    models: dict[str, Path],
    api: ApiConfig = ApiConfig(),
    node: NodeConfig | None = None,
    changes: ModelChanges | None = None,
):
    """The ASGI app. `node`, when given, sets the SLO /metrics scores against and what /health reports of the
    node's shape (policy, SLO, whether the host<->device link is emulated). `changes`, when given, serves the
    admin routes that add and remove models (aegaeon.serve.admin_api)."""
    app = FastAPI(
        title="aegaeon",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        default_response_class=JSONResponse,
    )
    served = {}
    for name, path in models.items():
        served[name] = ServedModel(name, Path(path))
    metrics = Metrics(
        proxy,
        node.slo if node is not None else None,
        node.engine.link_gbps if node is not None else None,
    )
    responder = Responder(proxy, metrics)
    shape = (
        {}
        if node is None
        else {
            "policy": node.policy,
            "slo": {"ttft": node.slo.ttft, "tpot": node.slo.tpot},
            "link": f"emulated at {node.engine.link_gbps:g} GB/s"
            if node.engine.link_gbps
            else "native",
        }
    )
    pool = ThreadPoolExecutor(api.tokenizer_threads, thread_name_prefix="tokenize")
    weakref.finalize(app, pool.shutdown, wait=False, cancel_futures=True)

    async def off_loop(fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, err: BodyTooLarge) -> JSONResponse:
        return JSONResponse(error_body(str(err), None, "body_too_large"), status_code=413)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        if isinstance(
            err.__cause__, BodyTooLarge
        ):  # FastAPI wraps errors met while reading the body
            return JSONResponse(
                error_body(str(err.__cause__), None, "body_too_large"), status_code=413
            )
        return JSONResponse(
            error_body(str(err.detail), None, None),
            status_code=err.status_code,
            headers=getattr(err, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(loc) or None
        message = f"{param or 'body'}: {first.get('msg', 'invalid')}"
        return JSONResponse(error_body(message, param, first.get("type")), status_code=400)

    @app.get("/health")
    async def health() -> JSONResponse:
        serving, reason, details = proxy.health()
        body = {
            "status": "ok" if serving else "unavailable",
            "models": len(served),
            **shape,
            **details,
        }
        if not serving:
            body["reason"] = reason
        return JSONResponse(body, status_code=200 if serving else 503)

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {
            "object": "list",
            "data": [
                {
                    "id": n,
                    "object": "model",
                    "created": 0,
                    "owned_by": "aegaeon",
                    "max_model_len": m.max_position,
                }
                for n, m in served.items()
            ],
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    def _model(name: str) -> ServedModel:
        if name not in served:
            raise ApiError(
                404,
                f"The model `{name}` does not exist: see GET /v1/models",
                "model",
                "model_not_found",
            )
        return served[name]

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, request: Request):
        arrival = time.time()  # wall clock, as the workers stamp tokens
        model = _model(body.model)
        prompts = body.prompt_batch()
        if len(prompts) * (body.n or 1) > MAX_CHOICES:
            raise ApiError(
                400,
                f"{len(prompts)} prompts x n={body.n} makes more than {MAX_CHOICES} choices",
                "n",
            )
        ids_and_texts = []
        for prompt in prompts:
            if isinstance(prompt, str):
                ids_and_texts.append((await off_loop(model.encode, prompt), prompt))
                continue
            outside = [t for t in prompt if t >= model.vocab_size]
            if outside:
                raise ApiError(
                    400,
                    f"prompt token ids {outside[:8]} are not tokens of {model.name} (vocabulary "
                    f"of {model.vocab_size})",
                    "prompt",
                )
            ids_and_texts.append(
                (prompt, await off_loop(model.decode, prompt) if body.echo else "")
            )
        states: list = []
        try:
            for ids, _ in ids_and_texts:
                states += submit_choices(
                    proxy,
                    model,
                    ids,
                    body,
                    body.max_tokens or 16,
                    body.logprobs,
                    body.logprobs if body.echo else None,  # echo with logprobs: the prompt's too
                )
        except ApiError:
            for state in states:
                proxy.cancel(state.submit.request_id, by_client=False)
            raise
        n = body.n or 1
        echoes = tuple(text for _, text in ids_and_texts for _ in range(n)) if body.echo else ()
        generation = Generation(
            tuple(states),
            model,
            False,
            tuple(body.stop_strings()),
            arrival,
            body.logprobs,
            echoes,
            _wants_usage(body),
            prompts=len(prompts),
        )
        return await _respond(generation, bool(body.stream), request)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody, request: Request):
        arrival = time.time()
        model = _model(body.model)
        if body.top_logprobs is not None and not body.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        messages = [
            {"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})}
            for m in body.messages
        ]
        try:
            text = await off_loop(model.render_chat, messages)
        except TemplateRejected as err:
            raise ApiError(400, str(err), "messages") from None
        prompt_ids = await off_loop(model.encode, text)
        # vLLM's default for chat: whatever of the context the prompt leaves
        max_tokens = (
            body.max_completion_tokens
            or body.max_tokens
            or max(1, model.max_position - len(prompt_ids))
        )
        logprobs = body.top_logprobs_wanted()
        states = submit_choices(proxy, model, prompt_ids, body, max_tokens, logprobs)
        generation = Generation(
            states,
            model,
            True,
            tuple(body.stop_strings()),
            arrival,
            logprobs,
            usage_chunk=_wants_usage(body),
        )
        return await _respond(generation, bool(body.stream), request)

    async def _respond(generation: Generation, stream: bool, request: Request):
        for state in generation.states:
            metrics.started(generation.model.name, len(state.submit.prompt_ids))
        if stream:
            return StreamingResponse(responder.stream(generation), media_type="text/event-stream")
        return await responder.complete(generation, request)

    if changes is not None:
        add_admin_routes(app, changes, served, api.host, api.api_key)
    return Guard(app, api.api_key, api.max_body_bytes, api.public_metrics)


def _wants_usage(body) -> bool:
    return bool(
        body.stream and body.stream_options is not None and body.stream_options.include_usage
    )
