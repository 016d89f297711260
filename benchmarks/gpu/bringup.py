"""The stages of the GPU bring-up after the build (see bringup.sh). Each stage's figures go into
$OUT/results.json as soon as it ends; a failing stage is named in the summary and the rest still run.
`--device cpu` is the dry run: the same code on a tiny model, so a mistake is found before device time."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

log = logging.getLogger("bringup")


def bandwidth(device: str, nbytes: int) -> dict:
    """Plain copies, the physical references: pinned host->device, device->host, device->device."""
    pinned = device.startswith("cuda")
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    other = torch.empty(nbytes, dtype=torch.uint8, device=device)

    def best(copy) -> float:
        times = []
        for _ in range(5):
            _sync(device)
            start = time.perf_counter()
            copy()
            _sync(device)
            times.append(time.perf_counter() - start)
        return min(times)

    h2d = best(lambda: dev.copy_(host, non_blocking=pinned))
    d2h = best(lambda: host.copy_(dev, non_blocking=pinned))
    d2d = best(lambda: other.copy_(dev))
    # a device->device copy reads and writes every byte: memory bandwidth is twice its rate
    return {
        "bytes": nbytes,
        "h2d_gb_s": nbytes / h2d / 1e9,
        "d2h_gb_s": nbytes / d2h / 1e9,
        "memory_gb_s": 2 * nbytes / d2d / 1e9,
    }


def switch(device: str, model: Path, h2d_gb_s: float) -> dict:
    from aegaeon.bench.switch import bench_switch

    r = bench_switch(model, device, switches=6)
    bound = r.bytes_per_switch / (h2d_gb_s * 1e9)
    return {
        "bytes": r.bytes_per_switch,
        "switch_s": r.median_switch_s,
        "bytes_over_h2d_s": bound,
        "ratio_to_h2d_bound": r.median_switch_s / bound,
        "target": "<= 1.2x",
        "decode_step_s": r.decode_step_s,
        "switch_per_step": r.switch_per_step,
    }


def swap(device: str, model: Path, h2d_gb_s: float) -> dict:
    from aegaeon.bench.swap import bench_swap

    r = bench_swap(model, device, blocks=512, steps=16)
    bound = r.nbytes / (h2d_gb_s * 1e9)
    return {
        "bytes": r.nbytes,
        "swap_out_s": r.swap_out_s,
        "swap_in_s": r.swap_in_s,
        "ratio_to_h2d_bound": max(r.swap_out_s, r.swap_in_s) / bound,
        "decode_slowdown": r.decode_slowdown,
        "target": "<= 1.2x, slowdown < 10%",
    }


def decode(device: str, model: Path, memory_gb_s: float, batches: tuple[int, ...]) -> dict:
    from aegaeon.bench.switch import decode_step_time
    from aegaeon.config.serving import EngineConfig
    from aegaeon.engine.executor import StepExecutor

    out = {}
    with StepExecutor(
        {"m": model},
        EngineConfig(device=device, kv_bytes=2 * 2**30 if device != "cpu" else 64 * 2**20),
    ) as engine:
        engine.host_cache.wait("m")
        engine.runner.switch_to("m")
        weight_bytes = engine.runner.entries["m"].weights.total_bytes
        for batch in batches:
            step = decode_step_time(engine, "m", device, batch=batch, steps=8)
            roofline = weight_bytes / (
                memory_gb_s * 1e9
            )  # every weight read once per step; short KV ignored
            out[f"batch{batch}"] = {
                "step_s": step,
                "roofline_s": roofline,
                "ratio": step / roofline,
            }
    out["target"] = "<= 1.5x the roofline"
    return out


def live_node(device: str, models: dict[str, str]) -> dict:
    """Two worker processes on the one device (one prefill, one decode, each its own arena)."""
    from tokenizers import Tokenizer

    from aegaeon.client import Client
    from aegaeon.config.serving import EngineConfig, NodeConfig
    from aegaeon.serve.node import Node

    config = NodeConfig(
        models,
        num_instances=2,
        prefill_instances=1,
        cluster_id="bringup",
        devices=(device, device) if device != "cpu" else (),
        device=device,
        engine=EngineConfig(device=device, kv_bytes=64 * 2**20),
        host_kv_bytes=64 * 2**20,
    )
    started = time.perf_counter()
    with Node(config) as node:
        up = time.perf_counter() - started
        client = Client(node.proxy, timeout=120)
        requests = []
        for name, path in models.items():
            ids = (
                Tokenizer.from_file(f"{path}/tokenizer.json")
                .encode("one gpu serves many models")
                .ids
            )
            requests += [(name, ids)] * 3
        began = time.perf_counter()
        results = client.complete_many(requests, max_tokens=16)
        took = time.perf_counter() - began
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(results)} requests failed: {errors[:2]}")
    return {
        "requests": len(results),
        "startup_s": up,
        "serve_s": took,
        "tokens": sum(len(r.token_ids) for r in results),
    }


def device_tests(out: Path) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "tests/gpu", "tests/csrc/test_swap.py"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    (out / "tests.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError("device tests failed:\n" + "\n".join(done.stdout.splitlines()[-15:]))
    return {"summary": done.stdout.strip().splitlines()[-1]}


def make_models(device: str, root: Path) -> tuple[Path, dict[str, str]]:
    """The measured model (Qwen2.5-7B's shape in bf16 on a GPU, a tiny one in the dry run) and two tiny ones
    for the node."""
    from dataclasses import replace

    from aegaeon.models.maker import PRESETS, config_for, make_model

    tiny = config_for(
        "llama", layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=512
    )
    measured_config = tiny if device == "cpu" else replace(PRESETS["qwen2.5-7b"], dtype="bfloat16")
    measured = make_model(root / "measured", measured_config, seed=0)
    node_models = {f"n{i}": str(make_model(root / f"n{i}", tiny, seed=i + 1)) for i in range(2)}
    return measured, node_models


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO,
        format="[bringup %(asctime)s] %(message)s",
        handlers=[logging.StreamHandler(), logging.FileHandler(args.out / "summary.txt")],
    )
    device = "cuda:0" if args.device == "cuda" else args.device
    results: dict = {
        "device": torch.cuda.get_device_name(0) if device != "cpu" else "cpu",
        "torch": torch.__version__,
        "stages": {},
    }
    failed = []

    def stage(name: str, fn, *fn_args):
        began = time.perf_counter()
        try:
            value = fn(*fn_args)
            results["stages"][name] = {"ok": True, "seconds": time.perf_counter() - began, **value}
            log.info(
                "stage %s: ok in %.1f s: %s",
                name,
                time.perf_counter() - began,
                json.dumps(value, default=str),
            )
            return value
        except Exception as err:  # a failing stage is reported by name; the others still run
            failed.append(name)
            results["stages"][name] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
            log.error("stage %s: FAILED: %s\n%s", name, err, traceback.format_exc(limit=3))
            return None
        finally:
            (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))

    with tempfile.TemporaryDirectory(prefix="bringup-") as tmp:
        made = stage(
            "models", lambda: dict(zip(("measured", "node"), make_models(args.device, Path(tmp))))
        )
        stage("tests", device_tests, args.out)
        bw = stage("bandwidth", bandwidth, device, 1 << 30 if device != "cpu" else 1 << 24) or {}
        if made:
            h2d = bw.get("h2d_gb_s", 1.0)
            stage("switch", switch, device, made["measured"], h2d)
            stage("swap", swap, device, made["measured"], h2d)
            stage(
                "decode", decode, device, made["measured"], bw.get("memory_gb_s", 1.0), (1, 8, 32)
            )
            stage("node", live_node, device, made["node"])
    log.info("done: %d stages, failed: %s", len(results["stages"]), ", ".join(failed) or "none")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
