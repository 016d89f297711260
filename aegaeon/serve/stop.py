"""Stop strings (OpenAI's `stop`): where generated text ends, and how much of it is safe to stream.

Text that could still become a stop string is held back until it cannot: a client never sees part of a stop
string, and never sees text after one. Pure string logic, tested on its own.
"""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)

    def cut(self, text: str, start: int = 0) -> tuple[str, bool]:
        """Of the whole text generated so far: the part that may be shown, and whether a stop string ended
        it (then the part shown is everything before the earliest stop string, which is left out). Stop
        strings are looked for from `start` on (text before it may hold one: min_tokens)."""
        ends = [i for i in (text.find(s, start) for s in self.stops) if i >= 0]
        if ends:
            return text[: min(ends)], True
        return text[: len(text) - self._held_back(text)], False

    def _held_back(self, text: str) -> int:
        """The longest end of `text` that begins some stop string (it may complete at the next token)."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if stop.startswith(text[len(text) - size :]):
                    longest = size
                    break
        return longest
