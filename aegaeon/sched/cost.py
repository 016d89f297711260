"""The cost model the scheduler sees: predicted times of every operation.

Latency forms follow DistServe's appendix, as the Aegaeon paper does, with h the
hidden size, m the FFN size and b the attention block size:
  prefill(t, t2) = C1*(4*t*h^2 + 2*t*h*m) + C2*(3*h*t2/b) + C3
      t: prompt tokens in the batch, t2: sum of squared prompt lengths
  decode(B, t)  = C4*(4*h^2 + 2*h*m) + C5*(3*h*t) + C6*B*(4*h^2 + 2*h*m)
      t: context tokens in the batch, B: sequences in the batch
The C6 term is our addition: measured decode steps grow with the batch even at
short contexts (one new token per sequence through every matmul), which the
two-term form cannot express. Coefficients are fitted per model and device
(aegaeon.profiles). Switches and swaps move bytes over the host link at a
profiled fraction of its bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Protocol, Sequence

from aegaeon.errors import ConfigError
from aegaeon.sched.layerwise import StageShares


class CostModel(Protocol):
    def prefill_time(self, model: str, input_lens: Sequence[int]) -> float: ...
    def decode_time(self, model: str, batch: int, context_tokens: int) -> float: ...
    def switch_time(self, from_model: str | None, to_model: str) -> float: ...
    def swap_time(self, nbytes: int) -> float: ...
    def weight_bytes(self, model: str) -> int: ...
    def kv_bytes_per_token(self, model: str) -> int: ...


@dataclass(frozen=True)
class ArtifactSizes:
    """What the paper artifact's simulator states of a model, the inputs of the artifact-faithful baselines
    (sllm-ae, sllm+-ae): nominal weights of `weight_gb` GiB (2 bytes per parameter, as it rounds them) loaded
    at a flat `load_gbps` GiB/s (its PCIe constant), a KV budget from the same nominal size, and KV bytes per
    token of 4 x layers x hidden (K and V in 2 bytes, grouped-query attention ignored). `source` says where
    the figures come from."""

    weight_gb: float
    load_gbps: float
    kv_bytes_per_token: int
    source: str = ""
    # its latency regressions, refitted from the profile's table (aegaeon.profiles.artifact_latency_fit):
    # prefill a + b*tokens + c*sum of squared lengths; decode a + b*context tokens + c*batch
    prefill_coefficients: tuple[float, float, float] | None = None
    decode_coefficients: tuple[float, float, float] | None = None

    @property
    def load_seconds(self) -> float:
        return self.weight_gb / self.load_gbps


@dataclass(frozen=True)
class ModelCost:
    """Fitted latency coefficients and sizes of one model on one device."""

    name: str
    hidden_size: int
    intermediate_size: int
    block_size: int
    weight_bytes: int
    kv_bytes_per_token: int
    max_context: int
    prefill_coefficients: tuple[float, float, float]
    decode_coefficients: tuple[float, float, float]
    artifact: ArtifactSizes | None = None  # the artifact simulator's stated sizes (profile field)
    # its forward's stages' shares of the copy and the compute (aegaeon.sched.layerwise), from its shape
    stages: StageShares | None = None

    @property
    def _dense(self) -> float:
        h, m = self.hidden_size, self.intermediate_size
        return 4.0 * h * h + 2.0 * h * m

    def prefill_features(self, tokens: float, squared: float) -> tuple[float, float, float]:
        return tokens * self._dense, 3.0 * self.hidden_size * squared / self.block_size, 1.0

    def decode_features(self, batch: float, context_tokens: float) -> tuple[float, float, float]:
        return self._dense, 3.0 * self.hidden_size * context_tokens, batch * self._dense

    def prefill_time(self, input_lens: Sequence[int]) -> float:
        tokens = float(sum(input_lens))
        squared = float(sum(n * n for n in input_lens))
        return _dot(self.prefill_coefficients, self.prefill_features(tokens, squared))

    def decode_time(self, batch: int, context_tokens: int) -> float:
        return _dot(self.decode_coefficients, self.decode_features(batch, context_tokens))


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


@dataclass(frozen=True)
class LinkCost:
    """The host<->device link of one device."""

    h2d_bandwidth: float  # bytes/s, pinned host to device
    # Share of it a request-level model load achieves (sllm, sllm+). 0.15 is the artifact's *live* planning
    # constant for a cold load (engine re-initialisation included), not its simulator's figure: that one
    # loads at a flat 16 GB/s, which the artifact-faithful baselines take from `ModelCost.artifact`.
    switch_efficiency: float
    swap_efficiency: float  # share of it a KV swap achieves
    device_memory_bytes: int
    # Share of it Aegaeon's switch achieves (weights streamed from the pinned
    # shared cache into a reused engine). Default: the 1/1.2 target of DESIGN
    # section 7; replace it with `aegaeon bench switch` on the device.
    fast_switch_efficiency: float = 1 / 1.2

    def __post_init__(self) -> None:
        shares = (self.switch_efficiency, self.swap_efficiency, self.fast_switch_efficiency)
        if self.h2d_bandwidth <= 0 or not all(0 < x <= 1 for x in shares):
            raise ConfigError(f"link parameters out of range: {self}")


class TableCostModel:
    """CostModel over per-model ModelCost entries sharing one device link.

    `models` maps the names the scheduler uses (e.g. synth_model_07) to the
    costs of the model they stand for.
    """

    def __init__(self, models: Mapping[str, ModelCost], link: LinkCost):
        self.models = dict(models)
        self.link = link

    def with_switch_efficiency(self, efficiency: float) -> "TableCostModel":
        """The same costs with model switches at another share of the link."""
        return TableCostModel(self.models, replace(self.link, switch_efficiency=efficiency))

    def model(self, name: str) -> ModelCost:
        try:
            return self.models[name]
        except KeyError:
            raise ConfigError(
                f"model {name!r} has no profile; known: {sorted(self.models)[:8]}..."
            ) from None

    def prefill_time(self, model: str, input_lens: Sequence[int]) -> float:
        return self.model(model).prefill_time(input_lens)

    def decode_time(self, model: str, batch: int, context_tokens: int) -> float:
        return self.model(model).decode_time(batch, context_tokens)

    def switch_time(self, from_model: str | None, to_model: str) -> float:
        if from_model == to_model:
            return 0.0
        return self.model(to_model).weight_bytes / (
            self.link.h2d_bandwidth * self.link.switch_efficiency
        )

    def swap_time(self, nbytes: int) -> float:
        return nbytes / (self.link.h2d_bandwidth * self.link.swap_efficiency)

    def stage_shares(self, model: str) -> StageShares:
        """How a layer-wise switch to `model` overlaps its copy with its first forward."""
        stages = self.model(model).stages
        if stages is None:
            raise ConfigError(
                f"model {model!r}: its cost carries no shape to split into stages; profile it again "
                f"(aegaeon profile) so that its architecture is recorded"
            )
        return stages

    def weight_bytes(self, model: str) -> int:
        return self.model(model).weight_bytes

    def kv_bytes_per_token(self, model: str) -> int:
        return self.model(model).kv_bytes_per_token


@dataclass(frozen=True)
class ModelSizes:
    """What an executor knows of a model's size: its packed weights and its KV bytes per token."""

    weight_bytes: int
    kv_bytes_per_token: int


class MeasuredCost:
    """A CostModel learnt from what an executor observes (steps, switches, prefills, swaps).

    Every quantity is one exponential moving average per model, with weight `LEARNING_RATE` on the newest
    observation; until a model has one, `prior` (a profile, when there is one) answers for it, else the
    average over the models observed, else `DEFAULTS`. Decode steps are averaged per model whatever the batch and
    context (the live decode worker's quotas have always used this); prefill is learnt per prompt token.
    Observations are plain numbers: the caller times them, this class reads no clock.
    """

    LEARNING_RATE = 0.3
    DEFAULTS = {"step": 0.01, "switch": 0.001, "prefill_token": 1e-4, "swap_byte": 0.0}

    def __init__(
        self, sizes: Mapping[str, ModelSizes] | None = None, prior: CostModel | None = None
    ):
        self.sizes = dict(sizes or {})
        self.prior = prior
        self._tables: dict[str, dict[str, float]] = {kind: {} for kind in self.DEFAULTS}

    # -- observations ---------------------------------------------------------------------------------------
    def observe_step(self, model: str, seconds: float) -> None:
        self._observe("step", model, seconds)

    def observe_switch(self, model: str, seconds: float) -> None:
        self._observe("switch", model, seconds)

    def observe_prefill(self, model: str, tokens: int, seconds: float) -> None:
        if tokens > 0:
            self._observe("prefill_token", model, max(0.0, seconds) / tokens)

    def observe_swap(self, nbytes: int, seconds: float) -> None:
        if nbytes > 0:
            self._observe("swap_byte", "", max(0.0, seconds) / nbytes)

    def _observe(self, kind: str, key: str, value: float) -> None:
        table = self._tables[kind]
        old = table.get(key)
        table[key] = (
            value if old is None else (1 - self.LEARNING_RATE) * old + self.LEARNING_RATE * value
        )

    def learnt(self, kind: str, key: str) -> float | None:
        """The moving average of `kind` for `key`; None before its first observation."""
        return self._tables[kind].get(key)

    def _average(self, kind: str) -> float:
        table = self._tables[kind]
        return sum(table.values()) / len(table) if table else self.DEFAULTS[kind]

    # -- the CostModel protocol -----------------------------------------------------------------------------
    def decode_time(self, model: str, batch: int, context_tokens: int) -> float:
        return self._value("step", model, lambda p: p.decode_time(model, batch, context_tokens))

    def switch_time(self, from_model: str | None, to_model: str) -> float:
        if from_model == to_model:
            return 0.0
        return self._value("switch", to_model, lambda p: p.switch_time(from_model, to_model))

    def prefill_time(self, model: str, input_lens: Sequence[int]) -> float:
        per_token = self.learnt("prefill_token", model)
        if per_token is None and self.prior is not None:
            return self.prior.prefill_time(model, input_lens)
        return (per_token if per_token is not None else self._average("prefill_token")) * sum(
            input_lens
        )

    def swap_time(self, nbytes: int) -> float:
        per_byte = self.learnt("swap_byte", "")
        if per_byte is None and self.prior is not None:
            return self.prior.swap_time(nbytes)
        return (per_byte if per_byte is not None else self.DEFAULTS["swap_byte"]) * nbytes

    def weight_bytes(self, model: str) -> int:
        return self._sizes(model).weight_bytes

    def kv_bytes_per_token(self, model: str) -> int:
        return self._sizes(model).kv_bytes_per_token

    def _value(self, kind: str, model: str, from_prior) -> float:
        value = self.learnt(kind, model)
        if value is not None:
            return value
        return from_prior(self.prior) if self.prior is not None else self._average(kind)

    def _sizes(self, model: str) -> ModelSizes:
        if model in self.sizes:
            return self.sizes[model]
        if self.prior is not None:
            return ModelSizes(self.prior.weight_bytes(model), self.prior.kv_bytes_per_token(model))
        raise ConfigError(
            f"model {model!r}: its sizes are unknown to this cost model; known: {sorted(self.sizes)}"
        )


def kv_capacity_bytes(memory_bytes: int, weight_bytes: Sequence[int]) -> int:
    """KV bytes an instance can plan with: its memory minus the largest weights it may have to hold.

    One rule for the live workers (memory = the arena, sized by the largest model they serve) and the
    simulator (memory = the device, weights = every model of the workload)."""
    return max(0, memory_bytes - max(weight_bytes, default=0))
