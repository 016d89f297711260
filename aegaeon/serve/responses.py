"""From the token streams of one API request's choices to OpenAI's responses: one JSON body, or events.

A request with `n` choices is `n` requests on the node (each its own seed), answered together: the body
lists every choice; the event stream interleaves their chunks, each naming its choice's index. Text is
decoded incrementally (aegaeon.serve.detok); stop strings end a choice and cancel its generation
(aegaeon.serve.stop); logprobs are shaped as OpenAI shapes them for each endpoint.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import Request

from aegaeon.serve.api_guard import JSONResponse, error_body
from aegaeon.serve.detok import IncrementalText
from aegaeon.serve.metrics import Metrics
from aegaeon.serve.requests import LiveRequest
from aegaeon.serve.served_model import ServedModel
from aegaeon.serve.stop import StopMatcher

TOKEN_TIMEOUT = 300.0  # seconds without a token before a request is given up as a 504


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status,
            message,
            param,
            code,
            kind,
        )
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.param, self.code, self.kind)


def unavailable(message: str) -> ApiError:
    return ApiError(503, message, None, "service_unavailable", "service_unavailable_error")


class ClientGone(Exception):
    pass


@dataclass(frozen=True)
class Generation:
    """What one API request asked for, across its choices."""

    states: tuple[LiveRequest, ...]  # one per choice, in index order
    model: ServedModel
    chat: bool
    stop_strings: tuple[str, ...]
    arrival: float  # wall clock, as the workers stamp tokens
    logprobs: int | None  # None: not asked; k: each token's log-probability and the k most likely
    echoes: tuple[
        str, ...
    ] = ()  # completions' echo: per choice, its prompt's text, put before its own
    usage_chunk: bool = False  # stream_options.include_usage
    prompts: int = 1  # distinct prompts (a completions batch): choice i answers prompt i // (choices / prompts)

    @property
    def response_id(self) -> str:
        return f"{'chatcmpl' if self.chat else 'cmpl'}-{self.states[0].submit.request_id}"

    @property
    def prompt_tokens(self) -> int:
        """Each prompt's tokens once, however many choices it has (as OpenAI counts usage)."""
        per_prompt = len(self.states) // self.prompts
        return sum(len(self.states[i * per_prompt].submit.prompt_ids) for i in range(self.prompts))

    def echo(self, index: int) -> str:
        return self.echoes[index] if self.echoes else ""


class _Choice:
    def __init__(self, index: int, state: LiveRequest, generation: Generation):
        self.index, self.state, self.model = index, state, generation.model
        self.stops = StopMatcher(list(generation.stop_strings))
        self.decoded = IncrementalText(generation.model.tokenizer)
        self.tokens: list[int] = []
        self.times: list[float] = []
        self.logprobs: list = []
        self.prompt_logprobs: tuple = ()  # echo with logprobs: per prompt token, from the first message
        self.reason: str | None = None
        self.shown = ""  # text already streamed
        self.text = ""  # the text as it stands (final once the choice has a reason)
        self.stopped_by_string = False
        self.ended = False

    def take(
        self,
        token_ids: list[int],
        stamps: list[float],
        finish: str | None,
        logprobs: tuple,
        prompt_logprobs: tuple = (),
    ) -> str:
        """Add a batch of tokens; the text that may be shown now (all of it once the choice has ended)."""
        self.tokens += token_ids
        self.times += stamps
        self.logprobs += logprobs
        self.prompt_logprobs = self.prompt_logprobs or prompt_logprobs
        text, stopped = self.stops.cut(self.decoded.add(token_ids))
        if finish is not None and not stopped:  # the end: nothing is held back any more
            text, stopped = self.stops.cut(self.decoded.finish())
            if not stopped:
                text = self.decoded.text
        if stopped:
            self.reason, self.stopped_by_string = "stop", True
        elif finish is not None:
            self.reason = finish
        self.text = text
        return text


class Responder:
    """Answers generations from the proxy's token streams, on the event loop (no thread per stream)."""

    def __init__(self, proxy, metrics: Metrics, now: Callable[[], float] = time.time):
        self.proxy, self.metrics, self.now = proxy, metrics, now

    async def tokens(
        self, state: LiveRequest, gone: asyncio.Future | None = None
    ) -> AsyncIterator[tuple[list[int], list[float], str | None, tuple]]:
        """Token batches of one request; ApiError on its failure, ClientGone as soon as `gone` completes."""
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()
        self.proxy.listen(
            state, lambda message: loop.call_soon_threadsafe(inbox.put_nowait, message)
        )
        while True:
            getter = asyncio.ensure_future(inbox.get())
            waiting = {getter} if gone is None else {getter, gone}
            done, _ = await asyncio.wait(
                waiting, timeout=TOKEN_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
            if getter not in done:
                getter.cancel()
                if gone is not None and gone in done:
                    raise ClientGone()
                self.proxy.cancel(state.submit.request_id)
                raise ApiError(
                    504,
                    f"request {state.submit.request_id} produced no token in {TOKEN_TIMEOUT:g} s",
                    None,
                    "timeout",
                    "server_error",
                )
            message = getter.result()
            if message.error is not None:
                if message.unavailable:
                    raise unavailable(message.error)
                raise ApiError(400, message.error, None, "request_failed")
            yield (
                list(message.token_ids),
                list(message.times),
                message.finish_reason,
                tuple(message.logprobs),
                tuple(message.prompt_logprobs),
            )
            if message.finish_reason is not None:
                return

    def _end(self, generation: Generation, choices: list[_Choice]) -> None:
        for choice in choices:
            if (
                not choice.ended and choice.reason is None
            ):  # the client left or it failed: free its KV
                self.proxy.cancel(choice.state.submit.request_id)
            self.metrics.finished(
                generation.model.name, generation.arrival, choice.times, choice.reason
            )

    # ---- one JSON body ------------------------------------------------------------------------------------

    async def complete(self, generation: Generation, request: Request):
        choices = [_Choice(i, state, generation) for i, state in enumerate(generation.states)]
        gone = asyncio.ensure_future(_disconnected(request))
        tasks = [asyncio.ensure_future(self._collect(choice, gone)) for choice in choices]
        try:
            await asyncio.gather(*tasks)
        except ClientGone:
            return JSONResponse(
                error_body("the client disconnected", None, "client_disconnected"), status_code=499
            )
        finally:
            gone.cancel()
            for task in tasks:
                task.cancel()
            self._end(generation, choices)
        completion = sum(len(c.tokens) for c in choices)
        return {
            "id": generation.response_id,
            "object": "chat.completion" if generation.chat else "text_completion",
            "created": int(self.now()),
            "model": generation.model.name,
            "choices": [self._whole_choice(generation, c) for c in choices],
            "usage": {
                "prompt_tokens": generation.prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": generation.prompt_tokens + completion,
            },
        }

    async def _collect(self, choice: _Choice, gone: asyncio.Future) -> None:
        async for batch in self.tokens(choice.state, gone):
            choice.take(*batch)
            if choice.reason is not None:
                break
        if choice.stopped_by_string:  # the rest would be thrown away: stop generating it
            self.proxy.cancel(choice.state.submit.request_id)
        choice.ended = True

    def _whole_choice(self, generation: Generation, choice: _Choice) -> dict:
        text = choice.text
        logprobs = None
        if generation.logprobs is not None:
            logprobs = logprob_block(
                generation.model,
                choice.tokens,
                choice.logprobs,
                generation.chat,
                len(generation.echo(choice.index)),
            )
            if choice.prompt_logprobs:  # echo: the prompt's tokens come first, from offset 0
                prompt = logprob_block(
                    generation.model,
                    list(choice.state.submit.prompt_ids),
                    choice.prompt_logprobs,
                    False,
                    0,
                )
                logprobs = {key: prompt[key] + logprobs[key] for key in logprobs}
        if generation.chat:
            return {
                "index": choice.index,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
                "finish_reason": choice.reason,
            }
        return {
            "index": choice.index,
            "text": generation.echo(choice.index) + text,
            "logprobs": logprobs,
            "finish_reason": choice.reason,
        }

    # ---- server-sent events -------------------------------------------------------------------------------

    async def stream(self, generation: Generation) -> AsyncIterator[bytes]:
        choices = [_Choice(i, state, generation) for i, state in enumerate(generation.states)]
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(choice: _Choice) -> None:
            try:
                async for batch in self.tokens(choice.state):
                    queue.put_nowait((choice, batch, None))
            except ApiError as err:
                queue.put_nowait((choice, None, err))

        tasks = [asyncio.ensure_future(pump(choice)) for choice in choices]
        chunk = self._chunk_maker(generation)
        try:
            for choice in choices:  # OpenAI's first chat chunk carries the role; echo's, the prompt
                if generation.chat:
                    yield chunk(choice, {"role": "assistant", "content": ""}, None, None)
                elif generation.echo(choice.index) and generation.logprobs is None:
                    yield chunk(choice, generation.echo(choice.index), None, None)
            left = len(choices)
            while left:
                choice, batch, err = await queue.get()
                if choice.ended:
                    continue  # what a cancelled choice's worker sent before it heard of the cancel
                if err is not None:
                    choice.ended = True
                    yield _event(err.body())
                    break
                token_ids, stamps, finish, logprobs, prompt_logprobs = batch
                if (
                    prompt_logprobs and not choice.prompt_logprobs
                ):  # echo's chunk, with the prompt's logprobs
                    ids = list(choice.state.submit.prompt_ids)
                    yield chunk(
                        choice,
                        generation.echo(choice.index),
                        None,
                        logprob_block(generation.model, ids, prompt_logprobs, False, 0),
                    )
                seen = len(choice.logprobs)
                text = choice.take(token_ids, stamps, finish, logprobs, prompt_logprobs)
                delta, choice.shown = text[len(choice.shown) :], text
                lp = None
                if generation.logprobs is not None:
                    offset = len(generation.echo(choice.index)) + len(choice.shown) - len(delta)
                    lp = logprob_block(
                        generation.model, token_ids, choice.logprobs[seen:], generation.chat, offset
                    )
                content = {"content": delta} if generation.chat else delta
                yield chunk(choice, content, choice.reason, lp)
                if choice.reason is not None:
                    choice.ended = True
                    left -= 1
                    if choice.stopped_by_string:  # stop generating the rest
                        self.proxy.cancel(choice.state.submit.request_id)
        finally:
            for task in tasks:
                task.cancel()
            self._end(generation, choices)
        if generation.usage_chunk:  # a last chunk with no choices, the usage
            completion = sum(len(c.tokens) for c in choices)
            yield _event(
                {
                    "id": generation.response_id,
                    "object": _chunk_object(generation),
                    "created": int(self.now()),
                    "model": generation.model.name,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": generation.prompt_tokens,
                        "completion_tokens": completion,
                        "total_tokens": generation.prompt_tokens + completion,
                    },
                }
            )
        yield b"data: [DONE]\n\n"

    def _chunk_maker(self, generation: Generation) -> Callable[..., bytes]:
        head = {
            "id": generation.response_id,
            "object": _chunk_object(generation),
            "model": generation.model.name,
        }

        def chunk(choice: _Choice, content, finish: str | None, logprobs: dict | None) -> bytes:
            body = (
                {
                    "index": choice.index,
                    "delta": content,
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }
                if generation.chat
                else {
                    "index": choice.index,
                    "text": content,
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }
            )
            return _event({**head, "created": int(self.now()), "choices": [body]})

        return chunk


def logprob_block(
    model: ServedModel, token_ids: list[int], entries: list, chat: bool, offset: int
) -> dict:
    """OpenAI's logprobs object for these tokens: chat's `content` list, or completions' parallel lists
    (`text_offset` counted from `offset`, the characters before the first of them; an entry None, a
    prompt's first token, has no logprob)."""
    piece = model.token_text
    if chat:

        def item(token: int, logprob: float) -> dict:
            text = piece(token)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

        return {
            "content": [
                {**item(token, chosen), "top_logprobs": [item(t, lp) for t, lp in top]}
                for token, (chosen, top) in zip(token_ids, entries)
            ]
        }
    texts = [piece(token) for token in token_ids]
    offsets = []
    for text in texts:
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": texts,
        "token_logprobs": [None if entry is None else entry[0] for entry in entries],
        "top_logprobs": [
            None if entry is None else {piece(t): lp for t, lp in entry[1]} for entry in entries
        ],
        "text_offset": offsets,
    }


def _chunk_object(generation: Generation) -> str:
    return "chat.completion.chunk" if generation.chat else "text_completion"


def _event(obj: dict) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


async def _disconnected(request: Request) -> None:
    """Completes when the client of a non-streaming request goes away (its body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
