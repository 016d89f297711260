"""The one loader of a node's configuration: defaults, then a YAML pool file, then flags.

A pool file (`aegaeon serve --config pool.yaml`) looks like::

    models:                      # a list of paths, NAME=PATH strings, {name, path} maps, or one NAME: PATH map
      - name: qwen
        path: /models/Qwen2.5-7B-Instruct
      - Qwen/Qwen2.5-0.5B        # a hub id: resolved in the local Hugging Face cache, never downloaded
    num_instances: 4
    prefill_instances: 1
    tp: 1                        # devices per instance (tensor parallelism); with devices, len(devices) / tp instances
    device: cpu
    policy: aegaeon
    slo: {ttft: 10, tpot: 0.1}
    limits: {max_requests: 1024, max_requests_per_model: 256}
    recovery: {recovery_grace: 30, max_reruns: 2}
    engine: {kv_mib: 64, dtype: bfloat16, link_gbps: 1.5}
    api: {host: 127.0.0.1, port: 8000, public_metrics: false, max_body_mib: 8}

Every key is checked: an unknown one is an error that names it and lists the known ones.
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from aegaeon.config.env import hub_cache
from aegaeon.config.serving import (
    AdmissionLimits,
    ApiConfig,
    EngineConfig,
    NodeConfig,
    RecoveryConfig,
    RestartPolicy,
)
from aegaeon.errors import ConfigError
from aegaeon.sched.slo import SLO

NODE_KEYS = (
    "models",
    "num_instances",
    "prefill_instances",
    "cluster_id",
    "device",
    "devices",
    "tp",
    "policy",
    "max_batch",
    "max_quota",
    "slo_aware_rounds",
    "threads_per_worker",
    "host_kv_mib",
    "slo",
    "limits",
    "recovery",
    "restarts",
    "engine",
    "api",
)
ENGINE_KEYS = (
    "kv_mib",
    "dtype",
    "link_gbps",
    "prefetch",
    "residency",
    "layerwise",
    "slab_kib",
    "block_size",
)
API_KEYS = (
    "host",
    "port",
    "api_key",
    "public_metrics",
    "max_body_mib",
    "limit_concurrency",
    "keep_alive_seconds",
    "header_timeout",
    "tokenizer_threads",
)


def read_pool_file(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"--config {path}: the top level must be a mapping of settings, not {type(data).__name__}"
        )
    _check_keys(data, NODE_KEYS, str(path))
    return data


def _check_keys(data: dict, known: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {unknown}; known: {', '.join(known)}")


def merge(file_values: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """Flags given on the command line win over the file, section by section."""
    merged = dict(file_values)
    for key, value in flags.items():
        if isinstance(value, dict):
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
    return merged


def build(values: dict[str, Any], where: str = "the configuration") -> tuple[NodeConfig, ApiConfig]:
    """A NodeConfig and an ApiConfig from merged settings (the names of NODE_KEYS)."""
    _check_keys(values, NODE_KEYS, where)
    engine_values = dict(values.get("engine") or {})
    _check_keys(engine_values, ENGINE_KEYS, f"{where}: engine")
    api_values = dict(values.get("api") or {})
    _check_keys(api_values, API_KEYS, f"{where}: api")
    engine = EngineConfig(
        **_rename(engine_values, {"kv_mib": ("kv_bytes", 2**20), "slab_kib": ("slab_bytes", 1024)})
    )
    slo_values = values.get("slo") or {}
    _check_keys(slo_values, ("ttft", "tpot"), f"{where}: slo")
    slo = SLO.from_env(
        _number(slo_values.get("ttft"), "slo.ttft"), _number(slo_values.get("tpot"), "slo.tpot")
    )
    models = resolve_models(values.get("models") or [])
    node = NodeConfig(models, engine=engine, slo=slo)
    simple = {
        k: values[k]
        for k in (
            "num_instances",
            "prefill_instances",
            "cluster_id",
            "device",
            "policy",
            "max_batch",
            "max_quota",
            "slo_aware_rounds",
            "threads_per_worker",
        )
        if values.get(k) is not None
    }
    node = replace(node, **simple)
    tp = values.get("tp")
    if tp is not None:
        if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
            raise ConfigError(f"{where}: tp {tp!r} must be a whole number of devices per instance")
        node = replace(node, engine=replace(node.engine, tp_size=tp))
    if values.get("devices"):
        devices = tuple(values["devices"])
        tp = node.engine.tp_size
        if len(devices) % tp:
            raise ConfigError(
                f"{where}: {len(devices)} devices do not split into instances of --tp {tp} devices each"
            )
        node = replace(node, devices=devices, num_instances=len(devices) // tp)
    if values.get("host_kv_mib") is not None:
        node = replace(node, host_kv_bytes=int(values["host_kv_mib"]) * 2**20)
    for key, cls in (
        ("limits", AdmissionLimits),
        ("recovery", RecoveryConfig),
        ("restarts", RestartPolicy),
    ):
        if values.get(key):
            section = dict(values[key])
            _check_keys(section, tuple(f.name for f in fields(cls)), f"{where}: {key}")
            node = replace(node, **{key: cls(**section)})
    if node.devices:
        node = replace(node, device="cuda")
    node = replace(node, engine=replace(node.engine, device=node.device))
    api = ApiConfig(**_rename(api_values, {"max_body_mib": ("max_body_bytes", 2**20)}))
    return node, api


def _rename(values: dict, units: dict[str, tuple[str, int]]) -> dict:
    out = {}
    for key, value in values.items():
        if key in units and value is not None:
            name, scale = units[key]
            out[name] = int(float(value) * scale)
        elif value is not None:
            out[key] = value
    return out


def _number(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    return float(value)


# ---- models ---------------------------------------------------------------------------------------------------


def resolve_models(items: Any, served_names: tuple[str, ...] = ()) -> dict[str, str]:
    """name -> checkpoint directory, from paths, NAME=PATH, {name, path} maps or hub ids; `served_names`
    renames them in order (vLLM's --served-model-name)."""
    if isinstance(items, dict):
        items = [{"name": k, "path": v} for k, v in items.items()]
    if isinstance(items, str):
        items = [items]
    pairs = [_model_entry(item) for item in items]
    if served_names:
        if len(served_names) != len(pairs):
            raise ConfigError(
                f"--served-model-name gives {len(served_names)} names for {len(pairs)} models: give "
                f"one per model, in order"
            )
        pairs = [(name, path) for name, (_, path) in zip(served_names, pairs)]
    models: dict[str, str] = {}
    for name, path in pairs:
        if name in models:
            raise ConfigError(
                f"model name {name!r} appears twice: use NAME=PATH or --served-model-name to tell "
                f"them apart"
            )
        models[name] = path
    return models


def _model_entry(item: Any) -> tuple[str, str]:
    if isinstance(item, dict):
        _check_keys(item, ("name", "path"), f"model {item}")
        if "path" not in item:
            raise ConfigError(f"model {item}: give its path")
        path = resolve_path(str(item["path"]))
        return str(item.get("name") or Path(path).name), path
    if not isinstance(item, str) or not item.strip():
        raise ConfigError(f"model {item!r}: give a directory, NAME=PATH or a hub id")
    item = item.strip()
    if "=" in item:
        name, _, path = item.partition("=")
        if not name:
            raise ConfigError(f"model {item!r} has no name before '='")
        return name, resolve_path(path)
    path = resolve_path(item)
    return (item if _looks_like_hub_id(item) and not Path(item).exists() else Path(path).name), path


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))


def resolve_path(text: str) -> str:
    """A checkpoint directory, or a hub id (`org/name`) found in the local Hugging Face cache."""
    path = Path(text).expanduser()
    if path.exists() or not _looks_like_hub_id(text):
        return str(path)
    repo = hub_cache() / f"models--{text.replace('/', '--')}"
    snapshots = repo / "snapshots"
    ref = repo / "refs" / "main"
    if ref.is_file() and (snapshots / ref.read_text().strip()).is_dir():
        return str(snapshots / ref.read_text().strip())
    candidates = (
        sorted(snapshots.glob("*"), key=lambda p: p.stat().st_mtime) if snapshots.is_dir() else []
    )
    if candidates:
        return str(candidates[-1])
    raise ConfigError(
        f"model {text!r} is neither a directory nor in the local Hugging Face cache ({hub_cache()}); "
        f"aegaeon never downloads: fetch it with `huggingface-cli download {text}` or give its path"
    )
