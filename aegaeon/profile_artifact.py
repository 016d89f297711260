"""What a profile states besides its fit, and where from: the paper artifact's stated sizes and latency
regressions (the inputs of the artifact-faithful baselines, sllm-ae and sllm+-ae), and the sources of its
host-link figures."""

from __future__ import annotations

import numpy as np

from aegaeon.sched.cost import ArtifactSizes

# What the paper artifact's simulator states of each model (its sim/__init__.py and sim/worker.py): nominal
# weights in GiB (2 bytes per parameter) and the flat 16 GiB/s it loads them at. Profiles carry them, with
# this source, as `artifact_baseline`; the artifact-faithful baselines (sllm-ae, sllm+-ae) run on them.
ARTIFACT_WEIGHT_GB = {"qwen2_5_7b": 14.0, "yi1_5_9b_chat": 18.0, "llama2_13b_chat": 26.0}
ARTIFACT_MAX_SEQ_LEN = {"qwen2_5_7b": 8192, "yi1_5_9b_chat": 4096, "llama2_13b_chat": 4096}
ARTIFACT_LOAD_GBPS = 16.0
# The artifact fits its latency regressions on these table points (input length x batch) where the batch's
# tokens fit the model's max_seq_len and (L + 10) x B < 10240, every third point of that list held out.
_ARTIFACT_LENGTHS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
_ARTIFACT_BATCHES = (1, 2, 4, 8, 16, *range(30, 201, 10))
ARTIFACT_SOURCE = (
    "stated by the paper artifact's simulator (MachineLearningSystem/25SOSP-Aegaeon, aegaeon/sim): "
    "nominal weight GiB, a flat 16 GiB/s load, KV bytes per token 4 x layers x hidden"
)

# Where each host-link figure of a profile comes from (written beside `link` as `link_sources`).
LINK_SOURCES = {
    "h2d_bandwidth": "stated: a PCIe 5.0 x16 link's practical host-to-device rate (half of it for PCIe 4.0 "
    "devices); not measured here, no GPU has been lent",
    "switch_efficiency": "stated: the paper artifact's live planning constant for a request-level (cold) "
    "model load, engine re-initialisation included (the request-level baselines sllm, sllm+ load at it)",
    "swap_efficiency": "stated: the share of the link a KV block swap reaches (DESIGN's target)",
    "device_memory_bytes": "stated: the device's memory",
    "fast_switch_efficiency": "stated: DESIGN's 1/1.2 target for Aegaeon's switch into a reused engine; "
    "replace it with `aegaeon bench switch` on the device",
}


def artifact_baseline(spec_name: str, num_layers: int, hidden_size: int) -> dict | None:
    """The profile's `artifact_baseline` field for a model the artifact simulates (None otherwise)."""
    if spec_name not in ARTIFACT_WEIGHT_GB:
        return None
    return {
        "weight_gb": ARTIFACT_WEIGHT_GB[spec_name],
        "load_gbps": ARTIFACT_LOAD_GBPS,
        "kv_bytes_per_token": 4 * num_layers * hidden_size,
        "source": ARTIFACT_SOURCE,
    }


def artifact_latency_fit(model: str, table: list[dict]) -> tuple[tuple, tuple] | None:
    """The artifact simulator's latency regressions, refitted from the profile's measured table: ordinary
    least squares with an intercept, prefill on (tokens, sum of squared lengths) and decode on (tokens,
    batch). None for a model the artifact does not simulate or a table without its points."""
    if model not in ARTIFACT_MAX_SEQ_LEN:
        return None
    points = {(p["input_len"], p["batch"]): p for p in table}
    grid = [
        (length, batch)
        for length in _ARTIFACT_LENGTHS
        for batch in _ARTIFACT_BATCHES
        if length * batch <= ARTIFACT_MAX_SEQ_LEN[model] and (length + 10) * batch < 10240
    ]
    train = [g for i, g in enumerate(grid) if i % 3 != 0 and g in points]
    if len(train) < 4:
        return None
    tokens = np.array([length * batch for length, batch in train], dtype=np.float64)
    ones = np.ones(len(train))
    squares = np.array([length * length * batch for length, batch in train], dtype=np.float64)
    batches = np.array([batch for _, batch in train], dtype=np.float64)
    prefill = np.linalg.lstsq(
        np.stack([ones, tokens, squares], 1),
        np.array([points[g]["prefill_s"] for g in train]),
        rcond=None,
    )[0]
    decode = np.linalg.lstsq(
        np.stack([ones, tokens, batches], 1),
        np.array([points[g]["decode_s"] for g in train]),
        rcond=None,
    )[0]
    return tuple(float(x) for x in prefill), tuple(float(x) for x in decode)


def artifact_sizes(data: dict) -> ArtifactSizes | None:
    """A profile's `artifact_baseline` with the latency fit from its table (None without the field)."""
    stated = data.get("artifact_baseline")
    if not stated:
        return None
    fit = artifact_latency_fit(data["model"], data.get("table", []))
    return ArtifactSizes(
        **stated,
        prefill_coefficients=fit[0] if fit else None,
        decode_coefficients=fit[1] if fit else None,
    )
