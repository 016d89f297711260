"""The options that configure a node, shared by `aegaeon serve` and `aegaeon-launch start`.

Models come as arguments (`aegaeon serve DIR_OR_ID ...`, as `vllm serve` takes one), with `--models` or in
the pool file. Every option defaults to "not given": the defaults live in aegaeon.config.serving alone, a pool file
(`--config pool.yaml`, aegaeon.config.pool) comes next, and flags given on the command line win.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from aegaeon.config.serving import ApiConfig, NodeConfig

# flag name -> (section of the pool file or None, key)
FLAG_KEYS: dict[str, tuple[str | None, str]] = {
    "num_instances": (None, "num_instances"),
    "prefill_instances": (None, "prefill_instances"),
    "cluster_id": (None, "cluster_id"),
    "device": (None, "device"),
    "tp": (None, "tp"),
    "policy": (None, "policy"),
    "max_batch": (None, "max_batch"),
    "max_quota": (None, "max_quota"),
    "slo_aware_rounds": (None, "slo_aware_rounds"),
    "host_kv_mib": (None, "host_kv_mib"),
    "ttft_slo": ("slo", "ttft"),
    "tpot_slo": ("slo", "tpot"),
    "max_requests": ("limits", "max_requests"),
    "max_requests_per_model": ("limits", "max_requests_per_model"),
    "recovery_grace": ("recovery", "recovery_grace"),
    "kv_mib": ("engine", "kv_mib"),
    "dtype": ("engine", "dtype"),
    "link_gbps": ("engine", "link_gbps"),
    "prefetch": ("engine", "prefetch"),
    "residency": ("engine", "residency"),
    "layerwise": ("engine", "layerwise"),
    "host": ("api", "host"),
    "port": ("api", "port"),
    "api_key": ("api", "api_key"),
    "public_metrics": ("api", "public_metrics"),
    "max_body_mib": ("api", "max_body_mib"),
}

_OPTIONS = [
    click.argument("model_args", metavar="[MODEL]...", nargs=-1),
    click.option(
        "--served-model-name",
        "served_names",
        multiple=True,
        metavar="NAME",
        help="The API name of each model given, in order (repeat it, or NAME1,NAME2) "
        "[default: the folder's name].",
    ),
    click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False),
        default=None,
        help="A YAML pool file (models and any setting below); flags given here win over it.",
    ),
    click.option(
        "--models",
        "models_spec",
        default=None,
        help="Comma-separated checkpoint dirs, NAME=DIR or hub ids found in the local Hugging Face "
        "cache [default: the embedded demo pool].",
    ),
    click.option(
        "--device",
        type=click.Choice(["cpu", "cuda"]),
        default=None,
        help="cpu: --num-instances virtual instances; cuda: one worker per GPU of --devices [cpu].",
    ),
    click.option(
        "--devices",
        default=None,
        metavar="0,1,...",
        help="GPU indexes, one worker each (implies --device cuda; sets --num-instances to their "
        "number / --tp).",
    ),
    click.option(
        "--num-instances",
        type=int,
        default=None,
        help="Instances (each --tp worker processes) [3].",
    ),
    click.option(
        "--tp",
        type=click.IntRange(min=1),
        default=None,
        help="Tensor-parallel degree: devices (worker processes) per instance; every model's "
        "attention and KV heads must divide by it [1].",
    ),
    click.option(
        "--prefill-instances", type=int, default=None, help="How many of them run prefill [1]."
    ),
    click.option("--cluster-id", default=None, help="Names the cluster's shared-memory objects."),
    click.option(
        "--policy", default=None, help="Decode scaling: aegaeon or sllm (request-level) [aegaeon]."
    ),
    click.option(
        "--ttft-slo",
        type=float,
        default=None,
        help="Seconds to the first token [env AEGAEON_TTFT_SLO or 10].",
    ),
    click.option(
        "--tpot-slo",
        type=float,
        default=None,
        help="Seconds per output token the quotas plan for [env AEGAEON_TPOT_SLO or 0.1].",
    ),
    click.option(
        "--max-batch", type=int, default=None, help="Decode batch cap per model turn [64]."
    ),
    click.option("--max-quota", type=float, default=None, help="Longest decode turn, seconds [4]."),
    click.option(
        "--slo-aware-rounds",
        is_flag=True,
        default=None,
        help="Beyond the paper: shorten a decode turn when a request waiting for a later turn of the "
        "round would otherwise miss its first decode deadline (the simulator's --slo-aware-rounds).",
    ),
    click.option(
        "--kv-mib", type=int, default=None, help="Device arena MiB beyond the largest model [64]."
    ),
    click.option(
        "--host-kv-mib",
        type=int,
        default=None,
        help="Host KV cache MiB, shared by all workers [64].",
    ),
    click.option(
        "--dtype",
        type=click.Choice(["float32", "float16", "bfloat16"]),
        default=None,
        help="Cast every checkpoint to this dtype [each checkpoint's own].",
    ),
    click.option(
        "--link-gbps",
        type=float,
        default=None,
        help="CPU only: pace weight copies and KV swaps to a host<->device link of this many GB/s "
        "(the regime of a GPU's PCIe link; off by default).",
    ),
    click.option(
        "--prefetch",
        is_flag=True,
        default=None,
        help="Decode workers copy the next turn's weights while the current turn decodes (and plan "
        "rounds on the exposed switch), prefill workers the next group's while a group computes (a "
        "second weight slot of the largest model's size per worker).",
    ),
    click.option(
        "--residency",
        is_flag=True,
        default=None,
        help="Beyond the paper: workers keep models' weights in arena memory the KV cache is not using "
        "after their turns, so a switch back re-binds without a copy; KV has priority (a resident model "
        "is evicted before KV is swapped out). With --prefetch, copies go there too (no second slot).",
    ),
    click.option(
        "--layerwise",
        is_flag=True,
        default=None,
        help="Weights are copied layer by layer and a model's first forward after a switch starts before "
        "its copy has landed, waiting before each layer for that layer's weights (the rest of the copy "
        "overlaps the forward; pays where one forward is comparable to a copy: long prompts).",
    ),
    click.option(
        "--max-requests", type=int, default=None, help="Requests held at once before 429s [1024]."
    ),
    click.option(
        "--max-requests-per-model", type=int, default=None, help="The same, per model [256]."
    ),
    click.option(
        "--recovery-grace",
        type=float,
        default=None,
        help="Seconds a role may have no live worker before its requests fail with 503 [30].",
    ),
    click.option("--host", default=None, help="HTTP address [127.0.0.1]."),
    click.option("--port", type=int, default=None, help="HTTP port [8000]."),
    click.option(
        "--api-key",
        envvar="AEGAEON_API_KEY",
        default=None,
        help="Require `Authorization: Bearer KEY` on every route but /health [env AEGAEON_API_KEY].",
    ),
    click.option(
        "--public-metrics", is_flag=True, default=None, help="Serve /metrics without the API key."
    ),
    click.option(
        "--max-body-mib",
        type=float,
        default=None,
        help="Largest request body; beyond it a 413 [8].",
    ),
]


def node_options(command: Callable) -> Callable:
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def _with_served_names(specs: list[str], names: list[str]) -> list[str]:
    if len(names) != len(specs):
        raise click.BadParameter(
            f"{len(names)} names for {len(specs)} models: give one name per MODEL (or "
            f"--models entry), in the same order",
            param_hint="--served-model-name",
        )
    if len(set(names)) != len(names):
        raise click.BadParameter(
            f"the names {names} repeat one: each model needs its own",
            param_hint="--served-model-name",
        )
    named = [spec for spec in specs if "=" in spec]
    if named:
        raise click.BadParameter(
            f"{named} already name their models (NAME=DIR): drop the name there or drop "
            f"--served-model-name",
            param_hint="--served-model-name",
        )
    return [f"{name}={spec}" for name, spec in zip(names, specs)]


def node_settings(given: dict[str, Any], **fixed: Any) -> tuple[NodeConfig, ApiConfig]:
    """NodeConfig and ApiConfig from the options of `node_options` (None: not given) and `fixed` fields of
    NodeConfig set by the command itself (multi-node role, token)."""
    from dataclasses import replace

    from aegaeon.config.pool import build, merge, read_pool_file

    file_values = read_pool_file(given["config_file"]) if given.get("config_file") else {}
    flags: dict[str, Any] = {}
    for name, (section, key) in FLAG_KEYS.items():
        if given.get(name) is None:
            continue
        if section is None:
            flags[key] = given[name]
        else:
            flags.setdefault(section, {})[key] = given[name]
    specs = list(given.get("model_args") or ())
    if given.get("models_spec"):
        specs += [part.strip() for part in given["models_spec"].split(",") if part.strip()]
    names = [
        n.strip()
        for joined in given.get("served_names") or ()
        for n in joined.split(",")
        if n.strip()
    ]
    if names:
        specs = _with_served_names(specs, names)
    if specs:
        flags["models"] = specs
    if given.get("devices"):
        indexes = [d.strip() for d in given["devices"].split(",") if d.strip()]
        if not indexes or not all(d.isdigit() for d in indexes):
            raise click.BadParameter(
                f"{given['devices']!r} is not a list of GPU indexes like 0,1",
                param_hint="--devices",
            )
        flags["devices"] = [f"cuda:{d}" for d in indexes]
    values = merge(file_values, flags)
    if not values.get("models"):
        from aegaeon.models.demo import demo_models

        values["models"] = [f"{name}={path}" for name, path in demo_models().items()]
    node, api = build(values, given.get("config_file") or "the command line")
    node = replace(node, **fixed)
    node.validate()
    return node, api
