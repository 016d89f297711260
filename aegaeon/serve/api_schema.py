"""The request bodies of the OpenAI-compatible API, validated strictly.

No coercion: `"16"`, `true` or `"yes"` where a number is due are 400s, as are unknown fields and values out
of range. Text must be valid Unicode (a lone surrogate such as `\\ud800` is refused here, not deep in the
tokeniser). `seed` spans what a torch generator takes (signed or unsigned 64-bit).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)

SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
MAX_TOKENS_LIMIT = 1_000_000
MAX_STOP = 4  # as OpenAI's API
MAX_STOP_TOKEN_IDS = 64
MAX_N = 16
MAX_PROMPTS = 16  # prompts in one completions request
MAX_LOGPROBS = 20  # as OpenAI's top_logprobs (aegaeon.models.sampler checks it again)


def check_unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"text is not valid Unicode at position {err.start} (a lone surrogate?)"
        ) from None
    return text


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: StrictBool | None = False  # a last chunk, with no choices, carries the usage


class _Generation(_Strict):
    """Fields both endpoints share."""

    model: StrictStr
    max_tokens: StrictInt | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: StrictFloat | None = Field(1.0, ge=0.0, le=2.0)
    top_p: StrictFloat | None = Field(1.0, gt=0.0, le=1.0)
    top_k: StrictInt | None = Field(None, ge=-1, le=MAX_TOKENS_LIMIT)  # vLLM's: -1 or 0 is off
    min_p: StrictFloat | None = Field(None, ge=0.0, le=1.0)  # vLLM's
    presence_penalty: StrictFloat | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: StrictFloat | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: StrictFloat | None = Field(
        None, gt=0.0, allow_inf_nan=False
    )  # vLLM's; 1 is off
    min_tokens: StrictInt | None = Field(None, ge=0, le=MAX_TOKENS_LIMIT)  # vLLM's
    stop_token_ids: list[Annotated[StrictInt, Field(ge=0)]] | None = Field(
        None, max_length=MAX_STOP_TOKEN_IDS
    )
    n: StrictInt | None = Field(
        1, ge=1, le=MAX_N
    )  # independent samples, each its own request on the node
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    seed: StrictInt | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    user: StrictStr | None = None
    ignore_eos: StrictBool | None = (
        False  # vLLM's extension: generate max_tokens whatever the model says
    )
    stop: StrictStr | list[StrictStr] | None = (
        None  # up to MAX_STOP strings; the text ends before the first
    )

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings, got {len(stops)}")
        for text in stops:
            if not text:
                raise ValueError("a stop string must not be empty")
            check_unicode(text)
        return value

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


TokenIds = list[Annotated[StrictInt, Field(ge=0)]]


class CompletionBody(_Generation):
    # a text, a batch of texts, token ids, or a batch of token-id lists (as OpenAI and vLLM take them)
    prompt: StrictStr | list[StrictStr] | TokenIds | list[TokenIds]
    logprobs: StrictInt | None = Field(
        None, ge=0, le=MAX_LOGPROBS
    )  # each token's and the k most likely
    echo: StrictBool | None = False  # the prompt's text before the completion's

    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value):
        prompts = cls._as_batch(value)
        if not 1 <= len(prompts) <= MAX_PROMPTS:
            raise ValueError(f"give 1 to {MAX_PROMPTS} prompts, got {len(prompts)}")
        for prompt in prompts:
            if isinstance(prompt, str):
                check_unicode(prompt)
        return value

    @staticmethod
    def _as_batch(value) -> list:
        if isinstance(value, str) or (value and all(isinstance(t, int) for t in value)):
            return [value]
        return list(value)

    def prompt_batch(self) -> list[str | list[int]]:
        """The prompts of this request, each a text or a list of token ids."""
        return self._as_batch(self.prompt)


class TextPart(_Strict):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None

    @field_validator("content")
    @classmethod
    def _unicode(cls, value):
        for text in [value] if isinstance(value, str) else [p.text for p in value or []]:
            check_unicode(text)
        return value

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content or [])


class ChatBody(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    logprobs: StrictBool | None = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)

    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None
