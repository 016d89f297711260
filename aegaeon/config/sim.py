"""Configuration of a simulated cluster (the live node's caps are the same constants)."""

from __future__ import annotations

from dataclasses import dataclass

from aegaeon.errors import ConfigError
from aegaeon.sched.decode import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUOTA
from aegaeon.sched.prefill import DEFAULT_MAX_GROUP_SIZE

DEFAULT_DEVICE_MEMORY = 80 * 2**30


@dataclass(frozen=True)
class SimConfig:
    num_gpus: int = 16
    # devices per instance (tensor parallelism): the cluster runs num_gpus // tp instances, each timed and
    # sized by the profiles of degree tp (one rank's shard of every model in each rank's memory)
    tp: int = 1
    device_memory_bytes: int = DEFAULT_DEVICE_MEMORY
    prefill_instances: int | None = None  # aegaeon: None -> a quarter of the GPUs
    max_group_size: int = DEFAULT_MAX_GROUP_SIZE  # aegaeon prefill groups
    max_quota: float = DEFAULT_MAX_QUOTA  # aegaeon decode Q
    max_batch: int = DEFAULT_MAX_BATCH
    # aegaeon: each decode turn copies the next turn's weights while it decodes, and rounds are planned on
    # the exposed switch (aegaeon.sched.decode.plan_round), as live decode workers do with --prefetch
    prefetch: bool = False
    # aegaeon: each prefill instance copies its next group's model while the current group computes
    # (live prefill workers do with `serve --prefetch`, which turns on both kinds)
    prefill_prefetch: bool = False
    # aegaeon, beyond the paper: a decode turn is shortened when a request waiting for a later turn of the
    # round would otherwise miss its first decode deadline (aegaeon.sched.rounds.RoundConfig.slo_aware)
    slo_aware_rounds: bool = False
    # aegaeon, beyond the paper: every instance keeps the weights of the models it ran in device memory the
    # KV in use leaves free, evicting by next use in the round (live: `serve --residency`)
    residency: bool = False
    # aegaeon, beyond the paper: a switch's first forward starts before the copy has landed, each layer
    # waiting for its own weights (aegaeon.sched.layerwise; live: `serve --layerwise`)
    layerwise: bool = False
    queue_size: int = 4  # sllm / sllm+ QS
    muxserve_kv_reserve_bytes: int = 20 * 2**30  # KV room each MuxServe model is placed with
    horizon_factor: float = 4.0  # stop simulating at this multiple of the workload span
    # every system replays the arrivals before `replay_seconds` only (the artifact's window; None: all)
    replay_seconds: float | None = 120.0
    # sllm-ae, sllm+-ae (the artifact's rules): a request without a first token `failure_seconds` after its
    # arrival fails; iterations are timed with the artifact's latency fit (`artifact_latency`; False: this
    # project's fitted profiles)
    failure_seconds: float = 15.0
    artifact_latency: bool = True
    # replay lengths as the artifact's loader draws them (aegaeon.workload.artifact_resample): only to check
    # the artifact-faithful baselines against the artifact's own figures
    resample_lengths: bool = False
    record_turns: bool = (
        False  # aegaeon: keep every prefill group and decode turn (the differential tests)
    )

    def __post_init__(self) -> None:
        if self.tp < 1 or self.num_gpus % self.tp:
            raise ConfigError(
                f"--num-gpus {self.num_gpus} does not split into instances of --tp {self.tp} devices"
            )

    @property
    def num_instances(self) -> int:
        return self.num_gpus // self.tp
