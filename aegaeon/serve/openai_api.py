"""OpenAI-compatible HTTP API on a node's proxy (FastAPI).

Endpoints: POST /v1/completions and /v1/chat/completions (with `stream: true` as server-sent events),
GET /v1/models, GET /health, GET /metrics (Prometheus text). Bodies are validated strictly
(aegaeon.serve.api_schema); errors use OpenAI's body `{"error": {"message", "type", "param", "code"}}`:
400 for a bad request, 401 without the key, 404 for an unknown model, 413 for an oversized body, 429 with
`Retry-After` beyond the admission limits, 503 when the cluster cannot serve. Tokenisation and chat
templates run on a thread pool, never on the event loop; the proxy and workers see token ids only. A client
that disconnects, streaming or not, cancels its request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from aegaeon.config.serving import ApiConfig, NodeConfig
from aegaeon.errors import RequestError
from aegaeon.models.sampler import GREEDY_BELOW
from aegaeon.serve.api_guard import BodyTooLarge, Guard, JSONResponse, error_body
from aegaeon.serve.api_schema import ChatBody, CompletionBody
from aegaeon.serve.detok import IncrementalText
from aegaeon.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from aegaeon.serve.metrics import Metrics
from aegaeon.serve.proxy import Proxy, UnavailableError
from aegaeon.serve.requests import LiveRequest, OverloadedError
from aegaeon.serve.served_model import ServedModel, TemplateRejected
from aegaeon.serve.stop import StopMatcher

log = logging.getLogger(__name__)

TOKEN_TIMEOUT = 300.0  # seconds without a token before a request is given up as a 504


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.param, self.code, self.kind)


class ClientGone(Exception):
    pass


def _unavailable(message: str) -> ApiError:
    return ApiError(503, message, None, "service_unavailable", "service_unavailable_error")


def create_app(proxy: Proxy, models: dict[str, Path], api: ApiConfig = ApiConfig(), node: NodeConfig | None = None):
    """The ASGI app. `node`, when given, sets the SLO /metrics scores against and what /health reports of the
    node's shape (policy, SLO, whether the host<->device link is emulated)."""
    app = FastAPI(title="aegaeon", docs_url=None, redoc_url=None, openapi_url=None, default_response_class=JSONResponse)
    served = {}
    for name, path in models.items():
        served[name] = ServedModel(name, Path(path))
    metrics = Metrics(proxy, node.slo if node is not None else None,
                      node.engine.link_gbps if node is not None else None)
    shape = {} if node is None else {
        "policy": node.policy, "slo": {"ttft": node.slo.ttft, "tpot": node.slo.tpot},
        "link": f"emulated at {node.engine.link_gbps:g} GB/s" if node.engine.link_gbps else "native"}
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
        if isinstance(err.__cause__, BodyTooLarge):  # FastAPI wraps errors met while reading the body
            return JSONResponse(error_body(str(err.__cause__), None, "body_too_large"), status_code=413)
        return JSONResponse(error_body(str(err.detail), None, None), status_code=err.status_code,
                            headers=getattr(err, "headers", None))

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
        body = {"status": "ok" if serving else "unavailable", "models": len(served), **shape, **details}
        if not serving:
            body["reason"] = reason
        return JSONResponse(body, status_code=200 if serving else 503)

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "aegaeon",
                                            "max_model_len": m.max_position} for n, m in served.items()]}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    def _model(name: str) -> ServedModel:
        if name not in served:
            raise ApiError(404, f"The model `{name}` does not exist: see GET /v1/models", "model", "model_not_found")
        return served[name]

    def _start(model: ServedModel, prompt_ids: list[int], body, max_tokens: int) -> LiveRequest:
        if not prompt_ids:
            raise ApiError(400, "the prompt is empty", "prompt")
        if len(prompt_ids) + max_tokens > model.max_position:
            raise ApiError(400, f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({max_tokens}) "
                                f"exceeds the context of {model.max_position} tokens", "max_tokens",
                           "context_length_exceeded")
        temperature = 1.0 if body.temperature is None else body.temperature
        if temperature < GREEDY_BELOW:  # as vLLM does: a temperature this small is greedy decoding
            temperature = 0.0
        top_p = 1.0 if body.top_p is None else body.top_p
        penalties = _penalties(body, model, max_tokens)
        try:
            return proxy.submit(model.name, prompt_ids, max_tokens, temperature, top_p, body.seed, bool(body.ignore_eos),
                                body.top_k or 0, body.min_p or 0.0, **penalties)
        except OverloadedError as err:
            raise ApiError(429, str(err), None, "too_many_requests", "rate_limit_error",
                           {"Retry-After": str(max(1, round(err.retry_after)))}) from None
        except UnavailableError as err:
            raise _unavailable(str(err)) from None
        except RequestError as err:
            raise ApiError(400, str(err)) from None

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, request: Request):
        arrival = time.time()  # wall clock, as the workers stamp tokens
        model = _model(body.model)
        if isinstance(body.prompt, list) and len(body.prompt) != 1:
            raise ApiError(400, "give one prompt per request (a list of exactly one string)", "prompt")
        prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
        prompt_ids = await off_loop(model.encode, prompt)
        state = _start(model, prompt_ids, body, body.max_tokens or 16)
        return await _respond(state, model, bool(body.stream), False, request, StopMatcher(body.stop_strings()),
                               _wants_usage(body), arrival)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody, request: Request):
        arrival = time.time()
        model = _model(body.model)
        messages = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})}
                    for m in body.messages]
        try:
            text = await off_loop(model.render_chat, messages)
        except TemplateRejected as err:
            raise ApiError(400, str(err), "messages") from None
        prompt_ids = await off_loop(model.encode, text)
        # vLLM's default for chat: whatever of the context the prompt leaves
        max_tokens = body.max_completion_tokens or body.max_tokens or max(1, model.max_position - len(prompt_ids))
        state = _start(model, prompt_ids, body, max_tokens)
        return await _respond(state, model, bool(body.stream), True, request, StopMatcher(body.stop_strings()),
                               _wants_usage(body), arrival)

    async def _respond(state: LiveRequest, model: ServedModel, stream: bool, chat: bool, request: Request,
                       stops: StopMatcher, usage_chunk: bool, arrival: float):
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{state.submit.request_id}"
        metrics.started(model.name, len(state.submit.prompt_ids))
        if stream:
            return StreamingResponse(_sse(state, model, rid, chat, stops, usage_chunk, arrival),
                                     media_type="text/event-stream")
        tokens, reason = [], None
        times: list[float] = []
        text: str | None = None  # set when a stop string ended the text
        gone = asyncio.ensure_future(_disconnected(request))
        decoded = IncrementalText(model.tokenizer) if stops.stops else None
        try:
            async for token_ids, stamps, finish in _tokens(state, gone):
                tokens += token_ids
                times += stamps
                reason = finish or reason
                if decoded is not None:
                    cut, stopped = stops.cut(decoded.add(token_ids))
                    if stopped:  # the rest would be thrown away: stop generating it
                        proxy.cancel(state.submit.request_id)
                        text, reason = cut, "stop"
                        break
        except ClientGone:
            proxy.cancel(state.submit.request_id)
            reason = None
            return JSONResponse(error_body("the client disconnected", None, "client_disconnected"), status_code=499)
        except ApiError:
            reason = None
            raise
        finally:
            gone.cancel()
            metrics.finished(model.name, arrival, times, reason)
        if text is None:
            text = await off_loop(model.decode, tokens)
        usage = {"prompt_tokens": len(state.submit.prompt_ids), "completion_tokens": len(tokens),
                 "total_tokens": len(state.submit.prompt_ids) + len(tokens)}
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason} if chat
                  else {"index": 0, "text": text, "logprobs": None, "finish_reason": reason})
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": model.name, "choices": [choice], "usage": usage}

    async def _tokens(state: LiveRequest, gone: asyncio.Future | None = None
                      ) -> AsyncIterator[tuple[list[int], list[float], str | None]]:
        """Token batches from the proxy, awaited on the event loop (no thread per stream); ApiError on
        failure, ClientGone as soon as `gone` completes."""
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()
        proxy.listen(state, lambda message: loop.call_soon_threadsafe(inbox.put_nowait, message))
        while True:
            getter = asyncio.ensure_future(inbox.get())
            waiting = {getter} if gone is None else {getter, gone}
            done, _ = await asyncio.wait(waiting, timeout=TOKEN_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                if gone is not None and gone in done:
                    raise ClientGone()
                proxy.cancel(state.submit.request_id)
                raise ApiError(504, f"request {state.submit.request_id} produced no token in {TOKEN_TIMEOUT:g} s",
                               None, "timeout", "server_error")
            message = getter.result()
            if message.error is not None:
                if message.unavailable:
                    raise _unavailable(message.error)
                raise ApiError(400, message.error, None, "request_failed")
            yield list(message.token_ids), list(message.times), message.finish_reason
            if message.finish_reason is not None:
                return

    async def _sse(state: LiveRequest, model: ServedModel, rid: str, chat: bool,
                   stops: StopMatcher, usage_chunk: bool, arrival: float) -> AsyncIterator[bytes]:
        sent, times, finished, shown, reason = [], [], False, "", None
        decoded = IncrementalText(model.tokenizer)
        obj = "chat.completion.chunk" if chat else "text_completion"
        try:
            if chat:  # OpenAI's first chunk carries the role
                first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                yield _event({"id": rid, "object": obj, "created": int(time.time()), "model": model.name,
                              "choices": [first]})
            async for token_ids, stamps, finish in _tokens(state):
                finished = finish is not None
                times += stamps
                sent += token_ids
                text, stopped = stops.cut(decoded.add(token_ids))
                if finish is not None and not stopped:
                    text = decoded.finish()  # the end: nothing is held back any more
                delta, shown = text[len(shown):], text
                if stopped:
                    finish, finished = "stop", True
                    proxy.cancel(state.submit.request_id)
                reason = finish
                choice = ({"index": 0, "delta": {"content": delta}, "finish_reason": finish} if chat
                          else {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish})
                yield _event({"id": rid, "object": obj, "created": int(time.time()), "model": model.name,
                              "choices": [choice]})
                if stopped:
                    break
        except ApiError as err:
            finished, reason = True, None
            yield _event(err.body())
        finally:
            if not finished:  # the client disconnected mid-stream: free the request's KV
                proxy.cancel(state.submit.request_id)
            metrics.finished(model.name, arrival, times, reason)
        if usage_chunk:  # OpenAI's stream_options.include_usage: one more chunk, no choices, the usage
            prompt = len(state.submit.prompt_ids)
            yield _event({"id": rid, "object": obj, "created": int(time.time()), "model": model.name, "choices": [],
                          "usage": {"prompt_tokens": prompt, "completion_tokens": len(sent),
                                    "total_tokens": prompt + len(sent)}})
        yield b"data: [DONE]\n\n"

    return Guard(app, api.api_key, api.max_body_bytes, api.public_metrics)


def _penalties(body, model: ServedModel, max_tokens: int) -> dict:
    """The penalty and stopping fields a request set, checked against its model and max_tokens."""
    given = {name: getattr(body, name) for name in ("presence_penalty", "frequency_penalty", "repetition_penalty",
                                                     "min_tokens", "stop_token_ids")
             if getattr(body, name) is not None}
    if given.get("min_tokens", 0) > max_tokens:
        raise ApiError(400, f"min_tokens ({given['min_tokens']}) must not exceed max_tokens ({max_tokens})",
                       "min_tokens")
    outside = [t for t in given.get("stop_token_ids", ()) if t >= model.vocab_size]
    if outside:
        raise ApiError(400, f"stop_token_ids {outside} are not tokens of {model.name} (vocabulary of "
                            f"{model.vocab_size})", "stop_token_ids")
    return given


def _wants_usage(body) -> bool:
    return bool(body.stream and body.stream_options is not None and body.stream_options.include_usage)


def _event(obj: dict) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


async def _disconnected(request: Request) -> None:
    """Completes when the client of a non-streaming request goes away (its body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
