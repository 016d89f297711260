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


class CostModel(Protocol):
    def prefill_time(self, model: str, input_lens: Sequence[int]) -> float: ...
    def decode_time(self, model: str, batch: int, context_tokens: int) -> float: ...
    def switch_time(self, from_model: str | None, to_model: str) -> float: ...
    def swap_time(self, nbytes: int) -> float: ...
    def weight_bytes(self, model: str) -> int: ...
    def kv_bytes_per_token(self, model: str) -> int: ...


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
    switch_efficiency: float  # share of it a request-level model load achieves (the paper's simulator: 0.15)
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
            raise ConfigError(f"model {name!r} has no profile; known: {sorted(self.models)[:8]}...") from None

    def prefill_time(self, model: str, input_lens: Sequence[int]) -> float:
        return self.model(model).prefill_time(input_lens)

    def decode_time(self, model: str, batch: int, context_tokens: int) -> float:
        return self.model(model).decode_time(batch, context_tokens)

    def switch_time(self, from_model: str | None, to_model: str) -> float:
        if from_model == to_model:
            return 0.0
        return self.model(to_model).weight_bytes / (self.link.h2d_bandwidth * self.link.switch_efficiency)

    def swap_time(self, nbytes: int) -> float:
        return nbytes / (self.link.h2d_bandwidth * self.link.swap_efficiency)

    def weight_bytes(self, model: str) -> int:
        return self.model(model).weight_bytes

    def kv_bytes_per_token(self, model: str) -> int:
        return self.model(model).kv_bytes_per_token

    def kv_capacity_bytes(self, resident_models: Sequence[str]) -> int:
        """KV bytes left on a device once the largest of these models is placed."""
        largest = max((self.weight_bytes(m) for m in resident_models), default=0)
        return max(0, self.link.device_memory_bytes - largest)
