"""One API request's choices as they generate: what was asked (Generation) and each choice's tokens,
text and logprobs so far (Choice), with the logprobs shaped as OpenAI shapes them for each endpoint.

Text is decoded incrementally (aegaeon.serve.detok); stop strings cut it and hold back what may still
become one (aegaeon.serve.stop).
"""

from __future__ import annotations

from dataclasses import dataclass

from aegaeon.serve.detok import IncrementalText
from aegaeon.serve.requests import LiveRequest
from aegaeon.serve.served_model import ServedModel
from aegaeon.serve.stop import StopMatcher


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


class Choice:
    def __init__(self, index: int, state: LiveRequest, generation: Generation):
        self.index, self.state, self.model = index, state, generation.model
        self.stops = StopMatcher(list(generation.stop_strings))
        self.decoded = IncrementalText(generation.model.tokenizer, state.submit.prompt_ids)
        # vLLM's min_tokens holds stop strings off too: they are looked for only in text decoded after it
        self.min_tokens = state.submit.min_tokens
        self.stops_from = 0
        self.tokens: list[int] = []
        self.times: list[float] = []
        self.logprobs: list = []
        self.prompt_logprobs: tuple = ()  # echo with logprobs: per prompt token, ahead of the first token
        self.text_offset = len(
            generation.echo(index)
        )  # where the next streamed token's text begins
        self.echo_sent = False
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
        self.prompt_logprobs += tuple(prompt_logprobs)
        decoded = self.decoded.add(token_ids)
        if len(self.tokens) < self.min_tokens:
            self.stops_from = max(0, len(decoded) - self.stops.longest + 1)
        text, stopped = self.stops.cut(decoded, self.stops_from)
        if finish is not None and not stopped:  # the end: nothing is held back any more
            text, stopped = self.stops.cut(self.decoded.finish(), self.stops_from)
            if not stopped:
                text = self.decoded.text
        if stopped:
            self.reason, self.stopped_by_string = "stop", True
        elif finish is not None:
            self.reason = finish
        self.text = text
        return text


def logprob_block(
    model: ServedModel,
    token_ids: list[int],
    entries: list,
    chat: bool,
    offset: int,
    context: list[int] | tuple[int, ...] = (),
) -> dict:
    """OpenAI's logprobs object for these tokens: chat's `content` list, or completions' parallel lists
    (`text_offset` counted from `offset`, the characters before the first of them; an entry None, a
    prompt's first token, has no logprob). `context`: the tokens before the first, so that each token
    and its alternatives are named as they read there."""
    before = list(context)[-4:]
    contexts = []
    for token in token_ids:
        contexts.append(before)
        before = (before + [token])[-4:]
    piece = model.token_text
    if chat:

        def item(token: int, logprob: float, ctx: list[int]) -> dict:
            text = piece(token, ctx)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

        return {
            "content": [
                {**item(token, chosen, ctx), "top_logprobs": [item(t, lp, ctx) for t, lp in top]}
                for token, (chosen, top), ctx in zip(token_ids, entries, contexts)
            ]
        }
    texts = [piece(token, ctx) for token, ctx in zip(token_ids, contexts)]
    offsets = []
    for text in texts:
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": texts,
        "token_logprobs": [None if entry is None else entry[0] for entry in entries],
        "top_logprobs": [
            None if entry is None else {piece(t, ctx): lp for t, lp in entry[1]}
            for entry, ctx in zip(entries, contexts)
        ],
        "text_offset": offsets,
    }
