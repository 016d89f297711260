"""Stop strings against a brute-force reference: nothing after a stop string, no part of one shown early."""

import random

import pytest

from aegaeon.serve.stop import StopMatcher


def _reference(text: str, stops: list[str]) -> tuple[str, bool]:
    for start in range(len(text)):  # the text ends where the first stop string in it begins
        for stop in stops:
            if stop and text[start:].startswith(stop):
                return text[:start], True
    held = max(
        (k for stop in stops for k in range(1, len(stop)) if text.endswith(stop[:k])), default=0
    )
    return text[: len(text) - held], False


@pytest.mark.parametrize(
    "text, stops, expected",
    [
        ("hello world", ["wor"], ("hello ", True)),
        ("hello wo", ["world"], ("hello ", False)),  # "wo" may become "world": held back
        ("hello", ["xyz"], ("hello", False)),
        ("a\n\nb", ["\n\n", "b"], ("a", True)),
        ("abab", ["bab", "ab"], ("", True)),
        (
            "xab",
            ["b", "ab"],
            ("x", True),
        ),  # both complete: the text ends where the earlier one begins
    ],
)
def test_cases(text, stops, expected):
    assert StopMatcher(stops).cut(text) == expected


def test_random_texts_match_the_reference_and_streaming_never_takes_text_back():
    rng = random.Random(0)
    for _ in range(2000):
        stops = [
            "".join(rng.choice("ab\n") for _ in range(rng.randint(1, 3)))
            for _ in range(rng.randint(1, 3))
        ]
        text = "".join(rng.choice("ab\nc") for _ in range(rng.randint(0, 12)))
        matcher = StopMatcher(stops)
        assert matcher.cut(text) == _reference(text, stops), (text, stops)
        shown = ""
        for end in range(
            len(text) + 1
        ):  # as a stream: what is shown only grows, and ends as the whole cut
            now, stopped = matcher.cut(text[:end])
            assert now.startswith(shown), (text, stops, end)
            shown = now
            if stopped:
                break
        # what a stream shows never holds a stop string; when it stopped, a stop string follows it
        assert not any(stop in shown for stop in stops), (text, stops, shown)
        assert not stopped or any(text[:end].startswith(shown + stop) for stop in stops), (
            text,
            stops,
            shown,
        )
