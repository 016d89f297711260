"""`aegaeon serve`, `make-model`, `generate`."""

from __future__ import annotations

import json
import sys

import click

from aegaeon.cli.root import _parse_models, _progress_bar, main
from aegaeon.cli_node import node_options, node_settings
from aegaeon.models.registry import FAMILIES


@main.command()
@node_options
def serve(**given) -> None:
    """Serve an OpenAI-compatible API for MODEL... (checkpoint dirs, NAME=DIR or hub ids in the local Hugging
    Face cache) from a node of worker processes; without models, the embedded demo pool on CPU.

    Settings come from the defaults, then --config FILE, then the flags given; see docs/configuration.md."""
    from aegaeon.serve.server import serve_node

    config, api = node_settings(given)
    serve_node(config, api, announce=lambda line: click.echo(line, err=True))


@main.command("make-model")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--arch", type=click.Choice(sorted(FAMILIES)), default="llama", show_default=True)
@click.option(
    "--like",
    type=click.Choice(["qwen2.5-7b", "yi-1.5-9b", "llama-2-13b"]),
    default=None,
    help="Use the published configuration of this model (real size, random weights).",
)
@click.option("--layers", default=2, show_default=True)
@click.option("--hidden", default=64, show_default=True)
@click.option("--heads", default=4, show_default=True)
@click.option("--kv-heads", default=2, show_default=True)
@click.option("--intermediate", default=128, show_default=True)
@click.option("--vocab", default=512, show_default=True)
@click.option("--max-position", default=2048, show_default=True)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16", "bfloat16"]),
    default=None,
    help="Weight dtype [default: float32, or the preset's].",
)
@click.option("--seed", default=0, show_default=True)
@click.option("--shard-mib", default=2048, show_default=True, help="Largest safetensors shard.")
def make_model_cmd(
    out_dir: str,
    arch: str,
    like: str | None,
    layers: int,
    hidden: int,
    heads: int,
    kv_heads: int,
    intermediate: int,
    vocab: int,
    max_position: int,
    dtype: str | None,
    seed: int,
    shard_mib: int,
) -> None:
    """Write a Hugging Face checkpoint with random weights and a working tokenizer to OUT_DIR."""
    from dataclasses import replace

    from aegaeon.models.maker import PRESETS, config_for, make_model

    if like:
        config = PRESETS[like] if dtype is None else replace(PRESETS[like], dtype=dtype)
    else:
        config = config_for(
            arch,
            layers,
            hidden,
            heads,
            kv_heads,
            intermediate,
            vocab,
            max_position,
            dtype or "float32",
        )
    total = config.num_parameters() * (4 if config.dtype == "float32" else 2)
    with click.progressbar(length=total, label="writing weights", file=sys.stderr) as bar:
        path = make_model(
            out_dir,
            config,
            seed=seed,
            shard_bytes=shard_mib * 2**20,
            progress=lambda done, _total: bar.update(done - bar.pos),
        )
    click.echo(f"wrote {config.arch} model, {config.num_parameters():,} parameters, to {path}")


@main.command()
@click.option(
    "--models",
    "models_spec",
    default=None,
    help="Comma-separated checkpoint dirs (or NAME=DIR) [default: the embedded demo pool].",
)
@click.option(
    "--prompt",
    "prompts",
    multiple=True,
    help="A prompt; repeat for more. Each goes to every model.",
)
@click.option("--max-tokens", default=16, show_default=True)
@click.option("--temperature", default=0.0, show_default=True, help="0 means greedy.")
@click.option("--top-p", default=1.0, show_default=True)
@click.option("--seed", default=None, type=int, help="Seed for sampling (with --temperature > 0).")
@click.option(
    "--steps-per-turn",
    default=4,
    show_default=True,
    help="Decode steps a model runs before the engine switches to the next model.",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16", "bfloat16"]),
    default=None,
    help="Convert weights to this dtype [default: keep the checkpoint's].",
)
@click.option(
    "--kv-mib",
    default=64,
    show_default=True,
    help="Arena memory for the KV cache beyond the weights.",
)
@click.option("--device", default="cpu", show_default=True)
@click.option(
    "--prefetch-order",
    default=None,
    help="Comma-separated model names to load into the host cache first [default: as given].",
)
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per (model, prompt) and line."
)
def generate(
    models_spec: str | None,
    prompts: tuple[str, ...],
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
    steps_per_turn: int,
    dtype: str | None,
    kv_mib: int,
    device: str,
    prefetch_order: str | None,
    as_json: bool,
) -> None:
    """Serve prompts for several models from one engine that switches models between decode steps."""
    from aegaeon.config.serving import EngineConfig
    from aegaeon.engine.local import LocalEngine
    from aegaeon.models.demo import DEMO_PROMPTS
    from aegaeon.models.sampler import SamplingParams

    models = _parse_models(models_spec)
    sampling = SamplingParams(max_tokens, temperature, top_p, seed)
    config = EngineConfig(
        device=device, kv_bytes=kv_mib * 2**20, steps_per_turn=steps_per_turn, dtype=dtype
    )
    sampling.validate()
    order = [m.strip() for m in (prefetch_order or "").split(",") if m.strip()]
    unknown = [m for m in order if m not in models]
    if unknown:
        raise click.BadParameter(
            f"{unknown} are not among --models {sorted(models)}", param_hint="--prefetch-order"
        )
    with LocalEngine(
        models, config, prefetch_order=order, progress=_progress_bar("loading")
    ) as engine:
        for name, reason in engine.unavailable.items():
            click.echo(f"warning: {reason}", err=True)
        results = engine.generate(
            [(m, p) for p in (prompts or DEMO_PROMPTS) for m in models], sampling
        )
        switches = len(engine.executor.runner.switches)
    for r in results:
        if as_json:
            payload = {
                "model": r.model,
                "prompt": r.prompt,
                "token_ids": r.token_ids,
                "text": r.text,
            }
            if r.error:
                payload["error"] = r.error
            click.echo(json.dumps(payload))
        elif r.error:
            click.echo(f"[{r.model}] error: {r.error}")
        else:
            click.echo(
                f"[{r.model}] {r.prompt!r} -> {r.text!r} ({len(r.token_ids)} tokens, {r.finish_reason})"
            )
    if not as_json:
        click.echo(
            f"{len(results)} completions from {len(models)} models, {switches} model switches",
            err=True,
        )
    if all(r.error for r in results):
        raise SystemExit(1)
