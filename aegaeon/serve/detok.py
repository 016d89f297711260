"""The text of a growing generation, decoded a token at a time.

Decoding the whole output again for every streamed chunk costs O(n^2): 1.5-1.95 s of event-loop time for an
1,800-token stream. tokenizers' DecodeStream keeps the few tokens it needs to place the next piece of text
(a multi-byte character split over tokens, a word-start marker), so each token costs the same. What it
holds back at the end (an unfinished UTF-8 sequence) is settled by one full decode when the generation ends.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


CONTEXT_TOKENS = (
    8  # of the prompt, before the output: enough for a word-start marker or a split character
)


class IncrementalText:
    """`context` (the prompt's last tokens) is decoded but not part of the text: SentencePiece-style
    tokenizers drop the leading space of a sequence's first token, and the output is not one."""

    def __init__(self, tokenizer, context: list[int] | tuple[int, ...] = ()):
        from tokenizers.decoders import DecodeStream

        self._tokenizer = tokenizer
        self._context = list(context)[-CONTEXT_TOKENS:]
        try:
            self._stream = DecodeStream(ids=self._context, skip_special_tokens=True)
        except TypeError:  # tokenizers before 0.22 take no context: decode without it
            self._stream, self._context = DecodeStream(skip_special_tokens=True), []
        self._ids: list[int] = []
        self.text = ""

    def add(self, token_ids: list[int]) -> str:
        """Append tokens; the text decoded so far (everything but a character still incomplete)."""
        pieces = []
        for token_id in token_ids:
            piece = self._stream.step(self._tokenizer, token_id)
            if piece:
                pieces.append(piece)
        self._ids += token_ids
        if pieces:
            self.text += "".join(pieces)
        return self.text

    def finish(self) -> str:
        """The whole text as one decode of every token gives it. Text already returned by `add` is a prefix
        of it (streamed text is never taken back); if a tokenizer ever breaks that, the streamed text stands."""
        full = self._tokenizer.decode(self._context + self._ids)
        before = self._tokenizer.decode(self._context) if self._context else ""
        full = full[len(before) :] if full.startswith(before) else self._tokenizer.decode(self._ids)
        if full.startswith(self.text):
            self.text = full
        else:
            log.warning(
                "incremental decoding diverged from a full decode after %d tokens; keeping the "
                "streamed text",
                len(self._ids),
            )
        return self.text
