"""Our Llama-family forward against Hugging Face transformers (a reference nobody here wrote).

Tolerances: float32 max abs logit difference < 1e-4; bfloat16 (both sides in
bfloat16) max abs difference < 0.05 of the largest logit magnitude, because
bfloat16 keeps 8 bits of mantissa and the two implementations round in a
different order.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tests.models.reference import VARIANTS, BareModel, make_variant  # noqa: E402

PROMPTS = [
    [5, 17, 33, 2, 9],
    [101, 7, 7, 42, 250, 3, 11, 90, 64, 1, 2],
    [12] * 3 + list(range(40, 54)),
]
DECODE_STEPS = 16


def hf_logits(hf, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([tokens])).logits[0]


def _pair(path, dtype):
    """The transformers reference and our model, both on the checkpoint at `path`, in `dtype`."""
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval(), BareModel(
        path, dtype
    )


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {variant: make_variant(root, variant, seed=i) for i, variant in enumerate(VARIANTS)}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_batched_ragged_prefill_and_16_decode_steps_match_transformers_in_float32(
    checkpoints, variant
):
    hf, ours = _pair(checkpoints[variant], torch.float32)
    logits = ours.step(PROMPTS, all_logits=True)
    for i, prompt in enumerate(PROMPTS):
        diff = (logits[i, : len(prompt)] - hf_logits(hf, prompt)).abs().max().item()
        assert diff < 1e-4, f"{variant} prefill of prompt {i}: max abs diff {diff}"
    sequences = [list(p) for p in PROMPTS]
    next_tokens = [int(logits[i, len(p) - 1].argmax()) for i, p in enumerate(PROMPTS)]
    for step in range(DECODE_STEPS):
        for seq, token in zip(sequences, next_tokens):
            seq.append(token)
        step_logits = ours.step([[t] for t in next_tokens])
        for i, seq in enumerate(sequences):
            diff = (step_logits[i] - hf_logits(hf, seq)[-1]).abs().max().item()
            assert diff < 1e-4, f"{variant} decode step {step} of sequence {i}: max abs diff {diff}"
        next_tokens = [int(row.argmax()) for row in step_logits]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_bfloat16_prefill_and_decode_match_transformers_within_stated_tolerance(
    checkpoints, variant
):
    hf, ours = _pair(checkpoints[variant], torch.bfloat16)
    logits = ours.step(PROMPTS, all_logits=True)
    sequences = [list(p) for p in PROMPTS]
    for step in range(4):
        for i, seq in enumerate(sequences):
            ref = hf_logits(hf, seq)[-1].float()
            got = (logits[i, len(seq) - 1] if step == 0 else logits[i]).float()
            assert (got - ref).abs().max().item() < 0.05 * ref.abs().max().item(), (
                f"{variant} step {step} seq {i}"
            )
        tokens = [
            int((logits[i, len(s) - 1] if step == 0 else logits[i]).argmax())
            for i, s in enumerate(sequences)
        ]
        for seq, token in zip(sequences, tokens):
            seq.append(token)
        logits = ours.step([[t] for t in tokens])


def test_tied_embeddings_and_linear_rope_scaling_match_transformers(tmp_path):
    import json

    path = make_variant(tmp_path, "yi", tie_embeddings=True)
    raw = json.loads((path / "config.json").read_text())
    raw["rope_scaling"] = {"type": "linear", "factor": 2.0}
    (path / "config.json").write_text(json.dumps(raw))
    hf, ours = _pair(path, torch.float32)
    logits = ours.step(PROMPTS, all_logits=True)
    for i, prompt in enumerate(PROMPTS):
        assert (logits[i, : len(prompt)] - hf_logits(hf, prompt)).abs().max().item() < 1e-4
