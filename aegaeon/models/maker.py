"""Make Hugging Face-layout checkpoints with random weights.

Tests and demos never download a model: they make one. The output is a real
checkpoint (config.json, safetensors shards with an index when large,
tokenizer.json built with the `tokenizers` library, tokenizer_config.json),
loadable by aegaeon and by `transformers` alike. `like` presets carry the
published configurations of the paper's models (real sizes, random weights)
for GPU benchmarks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from aegaeon.errors import ConfigError
from aegaeon.models.config import ArchConfig
from aegaeon.models.registry import FAMILIES
from aegaeon.weights.host_cache import resolve_dtype

log = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
DEFAULT_SHARD_BYTES = 2 * 1024**3

PRESETS: dict[str, ArchConfig] = {
    "qwen2.5-7b": ArchConfig(
        "qwen2",
        152064,
        3584,
        18944,
        28,
        28,
        4,
        128,
        32768,
        1e-6,
        1e6,
        qkv_bias=True,
        dtype="bfloat16",
    ),
    "yi-1.5-9b": ArchConfig(
        "llama", 64000, 4096, 11008, 48, 32, 4, 128, 4096, 1e-6, 5e6, dtype="bfloat16"
    ),
    "llama-2-13b": ArchConfig(
        "llama", 32000, 5120, 13824, 40, 40, 40, 128, 4096, 1e-5, 1e4, dtype="float16"
    ),
}

# A small English corpus for the demo tokenizer: enough for byte-level BPE to learn merges.
_CORPUS_WORDS = (
    "the a of and to in is it that for on with as was at by be this are from or have an they which one you "
    "were her all she there would their we him been has when who will more no if out so said what up its about "
    "into than them can only other new some could time these two may then do first any my now such like our over "
    "man me even most made after also did many before must through back years where much your way well down "
    "should because each just those people how too little state good very make world still own see men work long "
    "get here between both life being under never day same another know while last might us great old year off "
    "come since against go came right used take three model models serve serving request requests token tokens "
    "decode prefill memory switch cache shared pool gpu many few hot cold market schedule quota round batch"
).split()


def config_for(
    arch: str,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    vocab: int = 512,
    max_position: int = 2048,
    dtype: str = "float32",
    tie_embeddings: bool = False,
) -> ArchConfig:
    if arch not in FAMILIES:
        raise ConfigError(f"--arch {arch!r} is not supported: use one of {sorted(FAMILIES)}")
    if heads <= 0 or hidden % heads:
        raise ConfigError(f"--hidden {hidden} must be a positive multiple of --heads {heads}")
    config = ArchConfig(
        arch,
        vocab,
        hidden,
        intermediate,
        layers,
        heads,
        kv_heads,
        hidden // heads,
        max_position,
        qkv_bias=FAMILIES[arch].qkv_bias,
        tie_word_embeddings=tie_embeddings,
        dtype=dtype,
    )
    config.validate("make-model")
    return config


def make_model(
    out_dir: str | Path,
    config: ArchConfig,
    seed: int = 0,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a checkpoint of `config` with random weights (deterministic for `seed`) to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(config.vocab_size)
    tokenizer.save(str(out / "tokenizer.json"))
    config = replace(config, eos_token_ids=(tokenizer.token_to_id(EOS_TOKEN),))
    (out / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": EOS_TOKEN,
                "pad_token": EOS_TOKEN,
                "model_max_length": config.max_position,
            },
            indent=2,
        )
        + "\n"
    )
    _write_weights(out, config, seed, shard_bytes, progress)
    log.info(
        "wrote %s checkpoint (%.1f M parameters) to %s",
        config.arch,
        config.num_parameters() / 1e6,
        out,
    )
    return out


def _write_weights(
    out: Path,
    config: ArchConfig,
    seed: int,
    shard_bytes: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    dtype = resolve_dtype(config.dtype)
    itemsize = torch.empty((), dtype=dtype).element_size()
    generator = torch.Generator().manual_seed(seed)
    shapes = config.parameter_shapes()
    total = config.num_parameters() * itemsize
    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_fill, done = 0, 0
    for name, shape in shapes.items():
        tensor = _random_tensor(name, shape, generator).to(dtype)
        nbytes = tensor.numel() * itemsize
        if shard_fill and shard_fill + nbytes > shard_bytes:
            shards.append({})
            shard_fill = 0
        shards[-1][name] = tensor
        shard_fill += nbytes
        done += nbytes
        if progress:
            progress(done, total)
    for old in out.glob("*.safetensors"):
        old.unlink()
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        (out / "model.safetensors.index.json").unlink(missing_ok=True)
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / file), metadata={"format": "pt"})
        weight_map.update({name: file for name in shard})
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n"
    )


def _random_tensor(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return 1.0 + 0.1 * torch.randn(shape, generator=generator)
    return 0.05 * torch.randn(shape, generator=generator)


def build_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer of at most `vocab_size` tokens, trained on a small built-in corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 258:
        raise ConfigError(
            f"--vocab {vocab_size} is too small: byte-level tokenizers need at least 258 tokens"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab_size, 2048),
        special_tokens=[EOS_TOKEN],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [
        " ".join(_CORPUS_WORDS[i:] + _CORPUS_WORDS[:i]) for i in range(0, len(_CORPUS_WORDS), 7)
    ]
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer
