"""Incremental decoding equals one full decode, for byte-level and metaspace (sentencepiece-style) tokenizers."""

import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from aegaeon.models.maker import build_tokenizer
from aegaeon.serve.detok import IncrementalText

CORPUS = [
    "héllo wörld, naïve café — 日本語のテキスト and emoji 🙂🙃 mixed in",
    "plain ascii words here",
] * 20


def _metaspace_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "</s>"] + byte_tokens)
    tokenizer.train_from_iterator(CORPUS, trainer)
    return tokenizer


@pytest.mark.parametrize(
    "make", [lambda: build_tokenizer(512), _metaspace_tokenizer], ids=["byte-level", "metaspace"]
)
def test_streamed_text_only_grows_and_ends_as_the_full_decode(make):
    tokenizer = make()
    rng = random.Random(0)
    vocab = tokenizer.get_vocab_size()
    encoded = [tokenizer.encode(text).ids for text in CORPUS[:2]]
    for trial in range(60):
        # real text (multi-byte characters split over tokens) and random ids, special tokens included
        ids = (
            encoded[trial % 2][:]
            if trial % 3
            else [rng.randrange(vocab) for _ in range(rng.randint(1, 80))]
        )
        decoded, shown, start = IncrementalText(tokenizer), "", 0
        while start < len(ids):
            end = start + rng.randint(1, 5)
            text = decoded.add(ids[start:end])
            assert text.startswith(shown)
            shown, start = text, end
        assert decoded.finish() == tokenizer.decode(ids)
        assert decoded.finish().startswith(shown)


@pytest.mark.parametrize(
    "make", [lambda: build_tokenizer(512), _metaspace_tokenizer], ids=["byte-level", "metaspace"]
)
def test_output_decoded_after_its_prompt_reads_as_it_does_in_the_whole_sequence(make):
    """SentencePiece-style tokenizers drop a sequence's leading space: the output is not a sequence of its
    own, so its first word keeps the space it has after the prompt."""
    tokenizer = make()
    ids = tokenizer.encode("the plain ascii words here").ids
    for cut in range(1, len(ids)):
        prompt, output = ids[:cut], ids[cut:]
        decoded = IncrementalText(tokenizer, prompt)
        decoded.add(output)
        whole, before = tokenizer.decode(prompt + output), tokenizer.decode(prompt)
        assert whole.startswith(before)
        assert decoded.finish() == whole[len(before) :]
