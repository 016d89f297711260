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

from fastapi import Request

from aegaeon.serve.api_errors import ApiError, unavailable
from aegaeon.serve.api_guard import JSONResponse, error_body
from aegaeon.serve.generation import Choice, Generation, logprob_block
from aegaeon.serve.metrics import Metrics
from aegaeon.serve.requests import LiveRequest

TOKEN_TIMEOUT = 300.0  # seconds without a token before a request is given up as a 504


class ClientGone(Exception):
    pass


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
            try:
                done, _ = await asyncio.wait(
                    waiting, timeout=TOKEN_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
                )
            except asyncio.CancelledError:  # the response was given up: no getter may outlive it
                getter.cancel()
                raise
            if getter not in done:
                getter.cancel()
                if gone is not None and gone in done:
                    raise ClientGone()
                self.proxy.cancel(state.submit.request_id, by_client=False)
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

    def _end(self, generation: Generation, choices: list[Choice]) -> None:
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
        choices = [Choice(i, state, generation) for i, state in enumerate(generation.states)]
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

    async def _collect(self, choice: Choice, gone: asyncio.Future) -> None:
        async for batch in self.tokens(choice.state, gone):
            choice.take(*batch)
            if choice.reason is not None:
                break
        if choice.stopped_by_string:  # the rest would be thrown away: stop generating it
            self.proxy.cancel(choice.state.submit.request_id, by_client=False)
        choice.ended = True

    def _whole_choice(self, generation: Generation, choice: Choice) -> dict:
        text = choice.text
        logprobs = None
        if generation.logprobs is not None:
            logprobs = logprob_block(
                generation.model,
                choice.tokens,
                choice.logprobs,
                generation.chat,
                len(generation.echo(choice.index)),
                choice.state.submit.prompt_ids,
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
        choices = [Choice(i, state, generation) for i, state in enumerate(generation.states)]
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(choice: Choice) -> None:
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
                seen = len(choice.logprobs)
                text = choice.take(token_ids, stamps, finish, logprobs, prompt_logprobs)
                if not token_ids and finish is None:
                    continue  # prompt logprobs, which come in pieces ahead of the first token
                if (
                    choice.prompt_logprobs and not choice.echo_sent
                ):  # echo's chunk, with its logprobs
                    choice.echo_sent = True
                    ids = list(choice.state.submit.prompt_ids)
                    yield chunk(
                        choice,
                        generation.echo(choice.index),
                        None,
                        logprob_block(generation.model, ids, choice.prompt_logprobs, False, 0),
                    )
                delta, choice.shown = text[len(choice.shown) :], text
                lp = None
                if generation.logprobs is not None:
                    context = list(choice.state.submit.prompt_ids) + choice.tokens[:seen]
                    lp = logprob_block(
                        generation.model,
                        token_ids,
                        choice.logprobs[seen:],
                        generation.chat,
                        choice.text_offset,
                        context,
                    )
                    if (
                        not generation.chat and lp["tokens"]
                    ):  # the next batch's tokens start after these
                        choice.text_offset = lp["text_offset"][-1] + len(lp["tokens"][-1])
                content = {"content": delta} if generation.chat else delta
                yield chunk(choice, content, choice.reason, lp)
                if choice.reason is not None:
                    choice.ended = True
                    left -= 1
                    if choice.stopped_by_string:  # stop generating the rest
                        self.proxy.cancel(choice.state.submit.request_id, by_client=False)
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

        def chunk(choice: Choice, content, finish: str | None, logprobs: dict | None) -> bytes:
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
