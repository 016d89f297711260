"""Configuration of a live node: its engine, its workers, admission, recovery and the HTTP API.

One frozen dataclass per concern; `NodeConfig` holds them. The defaults here are the only defaults: the CLI,
the pool file loader (aegaeon.config.pool) and the benchmarks build on them. The decode batch and quota caps
are the simulator's too (aegaeon.config.sim takes the same constants).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aegaeon.config.link import LinkConfig, parse_address
from aegaeon.errors import ConfigError
from aegaeon.sched.decode import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUOTA
from aegaeon.sched.prefill import DEFAULT_MAX_GROUP_SIZE
from aegaeon.sched.slo import SLO

DEFAULT_SLAB_BYTES = 2 * 1024 * 1024
DEFAULT_BLOCK_SIZE = 16


@dataclass(frozen=True)
class EngineConfig:
    """One instance's step executor."""

    device: str = "cpu"
    kv_bytes: int = 64 * 1024 * 1024  # arena bytes beyond the largest model's weights
    arena_bytes: int | None = None  # whole arena; overrides kv_bytes
    slab_bytes: int = DEFAULT_SLAB_BYTES
    block_size: int = DEFAULT_BLOCK_SIZE
    max_batch_size: int = 8  # sequences per forward of the one-process engine
    steps_per_turn: int = 4  # the one-process engine's turns (aegaeon.sched.rounds.StepRoundRobin)
    dtype: str | None = None  # None keeps each checkpoint's dtype
    cluster_id: str | None = None  # names the host cache segment; default per process
    link_gbps: float | None = (
        None  # CPU only: emulate a host<->device link of this many GB/s (aegaeon.device_link)
    )
    # decode turns copy the next turn's weights while they decode (aegaeon.engine.runner): a staging slot of
    # the largest model's size beside the arena
    prefetch: bool = False
    # beyond the paper: models' weights stay in arena slabs the KV cache is not using after their turn, so a
    # switch back to one only re-binds (aegaeon.engine.resident); with it, prefetches copy into such slabs
    # too (no staging slot). KV always has priority: a resident model is evicted before KV is swapped out.
    residency: bool = False
    # a forward starts before the bound model's weights have all landed, waiting before each layer for its
    # bytes (aegaeon.engine.layerwise): the rest of a switch's copy overlaps its first forward
    layerwise: bool = False
    # tensor parallelism (aegaeon.parallel): this executor is rank `tp_rank` of a group of `tp_size`, whose
    # ranks run on `tp_devices` (rank 0's is `device`; empty: every rank on `device`)
    tp_size: int = 1
    tp_rank: int = 0
    tp_devices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.tp_size < 1 or not 0 <= self.tp_rank < self.tp_size:
            raise ConfigError(
                f"--tp {self.tp_size} with rank {self.tp_rank}: the degree must be at least 1 and the "
                f"rank below it"
            )
        if self.tp_devices and len(self.tp_devices) != self.tp_size:
            raise ConfigError(
                f"--tp {self.tp_size} needs {self.tp_size} devices per group, got {list(self.tp_devices)}"
            )
        if self.residency and self.tp_size > 1:
            raise ConfigError(
                "--residency with --tp > 1 is not built yet: the ranks of a group would have to agree on "
                "every eviction; use one of them"
            )
        if self.layerwise and self.tp_size > 1:
            raise ConfigError(
                "--layerwise with --tp > 1 is not built yet: each rank would wait on its own copy; use one"
            )
        if self.link_gbps is not None and not self.device.startswith("cpu"):
            raise ConfigError(
                f"--link-gbps emulates a link for CPU instances; device {self.device} has a real one"
            )
        if self.link_gbps is not None and not self.link_gbps > 0:
            raise ConfigError(f"--link-gbps {self.link_gbps} must be positive (GB/s)")


@dataclass(frozen=True)
class AdmissionLimits:
    """Requests a node holds at once (queued or running): beyond them new ones are refused with a 429."""

    max_requests: int = 1024
    max_requests_per_model: int = 256
    retry_after: float = 1.0  # seconds a refused client is told to wait

    def __post_init__(self) -> None:
        if self.max_requests < 1 or self.max_requests_per_model < 1 or self.retry_after <= 0:
            raise ConfigError(f"admission limits must be positive: {self}")


@dataclass(frozen=True)
class RecoveryConfig:
    recovery_grace: float = 30.0  # seconds a role may have no worker before its requests fail
    max_reruns: int = (
        2  # re-runs of a request lost by workers that were computing it (not merely holding it)
    )


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int = 5  # per worker id, over the node's life
    backoff: float = 0.5  # seconds before the first replacement; doubles each time
    max_backoff: float = 10.0


@dataclass(frozen=True)
class ApiConfig:
    """The HTTP front end."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    public_metrics: bool = False  # /metrics without the API key
    max_body_bytes: int = 8 * 2**20  # larger request bodies are refused with a 413
    max_prompt_tokens: int | None = None  # None: the model's context decides
    limit_concurrency: int = 512  # open connections before new ones get a 503 (uvicorn)
    keep_alive_seconds: float = 5.0
    header_timeout: float = 10.0  # seconds a client has to send a whole request (headers and body)
    tokenizer_threads: int = 2

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536 or self.max_body_bytes < 1024 or self.limit_concurrency < 1:
            raise ConfigError(
                f"API settings out of range: port {self.port}, max body {self.max_body_bytes} bytes, "
                f"{self.limit_concurrency} connections"
            )


@dataclass(frozen=True)
class NodeConfig:
    models: dict[str, str]
    num_instances: int = 3
    prefill_instances: int = 1
    cluster_id: str = "default"
    device: str = "cpu"  # every worker's device, unless `devices` names one per worker
    # e.g. ("cuda:0", "cuda:1"): one worker process per entry; instance i takes entries
    # [i * engine.tp_size, (i + 1) * engine.tp_size) (num_instances * engine.tp_size must match)
    devices: tuple[str, ...] = ()
    engine: EngineConfig = EngineConfig()
    host_kv_bytes: int = 64 * 1024 * 1024
    kv_slab_bytes: int = 256 * 1024
    ring_slots: int = 1024
    ring_slot_bytes: int = 16 * 1024
    slo: SLO = field(
        default_factory=SLO.from_env
    )  # the quotas plan for it and /metrics scores against it
    threads_per_worker: int | None = None
    start_timeout: float = 120.0
    policy: str = "aegaeon"  # decode scaling: a live policy of aegaeon.sched.policies
    max_batch: int = DEFAULT_MAX_BATCH  # decode batch cap, the simulator's too
    max_quota: float = DEFAULT_MAX_QUOTA
    # beyond the paper: a decode turn is shortened when a request waiting for a later turn of the round would
    # otherwise miss its first decode deadline (aegaeon.sched.rounds.RoundConfig.slo_aware; `sim
    # --slo-aware-rounds` simulates the same rule)
    slo_aware_rounds: bool = False
    max_group_size: int = DEFAULT_MAX_GROUP_SIZE
    limits: AdmissionLimits = AdmissionLimits()
    recovery: RecoveryConfig = RecoveryConfig()
    restarts: RestartPolicy = RestartPolicy()
    # Multi-node: "head" listens on `link_address` (HOST:PORT); "join" connects to the head there.
    link_role: str | None = None
    link_address: str = ""
    link: LinkConfig | None = None
    node_name: str = "node"

    @property
    def tpot_slo(self) -> float:
        return self.slo.tpot

    def validate(self) -> None:
        from aegaeon.sched.policies import live_policies, policy

        if not self.models:
            raise ConfigError(
                "no model to serve: name at least one (a path, NAME=PATH, or --config pool.yaml)"
            )
        tp = self.engine.tp_size
        if tp > 1 and self.device.startswith("cuda") and not self.devices:
            raise ConfigError(
                f"--tp {tp} on GPUs needs --devices ({tp} per instance, {self.num_instances * tp} in "
                f"all): every rank of an instance runs on a GPU of its own"
            )
        if self.devices and len(self.devices) != self.num_instances * tp:
            raise ConfigError(
                f"{len(self.devices)} devices given for {self.num_instances} instances of --tp {tp}: "
                f"each instance takes {tp} device(s), one worker process per device"
            )
        if not policy(self.policy).live:
            raise ConfigError(
                f"--policy {self.policy!r} runs in the simulator only: the live node runs "
                f"{', '.join(live_policies())}"
            )
        if self.link_role not in (None, "head", "join"):
            raise ConfigError(f"link role {self.link_role!r}: use head or join")
        if self.link_role is not None:
            if self.link is None:
                raise ConfigError("a multi-node node needs the cluster token (--token)")
            parse_address(
                self.link_address,
                "--head" if self.link_role == "head" else "--join",
                listen=self.link_role == "head",
            )
        if self.link_role is None and not 1 <= self.prefill_instances < self.num_instances:
            raise ConfigError(
                f"--prefill-instances {self.prefill_instances} must be at least 1 and below "
                f"--num-instances {self.num_instances}, leaving decode instances"
            )
        if self.link_role is not None and not 0 <= self.prefill_instances <= self.num_instances:
            raise ConfigError(
                f"--num-instances {self.num_instances} must be at least 1 and --prefill-instances "
                f"{self.prefill_instances} between 0 and it (the other nodes bring the other role)"
            )
        if self.num_instances < 1:
            raise ConfigError(f"--num-instances {self.num_instances} must be at least 1")
        if not isinstance(self.slo_aware_rounds, bool):
            raise ConfigError(f"slo_aware_rounds: {self.slo_aware_rounds!r} is not true or false")
        if self.host_kv_bytes < self.kv_partitions * self.kv_slab_bytes:
            raise ConfigError(
                f"host KV cache of {self.host_kv_bytes} bytes is smaller than one slab per partition "
                f"({self.kv_partitions} of {self.kv_slab_bytes} bytes): raise --host-kv-mib"
            )

    def instance_devices(self, instance: int) -> tuple[str, ...]:
        """The devices of instance `instance`, rank 0's first."""
        tp = self.engine.tp_size
        if self.devices:
            return tuple(self.devices[instance * tp : (instance + 1) * tp])
        return (self.device,) * tp

    @property
    def kv_partitions(self) -> int:
        """One per prefill worker, and one for KV arriving from other nodes."""
        return self.prefill_instances + (self.link_role is not None)

    @property
    def kv_share(self) -> int:
        return self.host_kv_bytes // self.kv_partitions // self.kv_slab_bytes * self.kv_slab_bytes
