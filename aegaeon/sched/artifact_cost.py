"""The paper artifact's latency model, for its faithful baselines (sllm-ae, sllm+-ae): a CostModel over a
TableCostModel whose profiles carry `ArtifactSizes` (aegaeon.profile_artifact refits them from the tables)."""

from __future__ import annotations

from typing import Sequence

from aegaeon.errors import ConfigError
from aegaeon.sched.cost import ArtifactSizes, LinkCost, ModelCost, TableCostModel


class ArtifactLatency:
    """A CostModel with the artifact simulator's latencies, for sllm-ae and sllm+-ae: its regressions,
    every iteration truncated to whole milliseconds, and its decode step called with a batch feature of -1
    whatever the batch (its workers' call; `single_step` is its SRTF key's call, with +1). Loads and sizes
    are the `ArtifactSizes`; everything else is the wrapped model's."""

    def __init__(self, base: TableCostModel):
        self.base = base
        for name, cost in base.models.items():
            if cost.artifact is None or cost.artifact.prefill_coefficients is None:
                raise ConfigError(
                    f"model {name} ({cost.name}): its profile has no artifact_baseline or no table to fit "
                    f"the artifact's latencies from: use this project's latencies (--ae-latency profile)"
                )

    def _sizes(self, model: str) -> ArtifactSizes:
        return self.base.model(model).artifact

    def prefill_time(self, model: str, input_lens: Sequence[int]) -> float:
        a, b, c = self._sizes(model).prefill_coefficients
        return _whole_ms(a + b * sum(input_lens) + c * sum(n * n for n in input_lens))

    def decode_time(self, model: str, batch: int, context_tokens: int) -> float:
        a, b, c = self._sizes(model).decode_coefficients
        return _whole_ms(a + b * context_tokens - c)

    def single_step(self, model: str, context_tokens: int) -> float:
        a, b, c = self._sizes(model).decode_coefficients
        return a + b * context_tokens + c

    def switch_time(self, from_model: str | None, to_model: str) -> float:
        return 0.0 if from_model == to_model else self._sizes(to_model).load_seconds

    def swap_time(self, nbytes: int) -> float:
        return self.base.swap_time(nbytes)

    def weight_bytes(self, model: str) -> int:
        return self.base.weight_bytes(model)

    def kv_bytes_per_token(self, model: str) -> int:
        return self._sizes(model).kv_bytes_per_token

    def model(self, name: str) -> ModelCost:
        return self.base.model(name)

    @property
    def link(self) -> LinkCost:
        return self.base.link


def _whole_ms(seconds: float) -> float:
    return int(seconds * 1000) / 1000
