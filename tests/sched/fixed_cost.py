"""A hand-made cost model with round numbers, for exact policy tests."""

from dataclasses import dataclass, field


@dataclass
class FixedCost:
    step: dict = field(default_factory=lambda: {"a": 0.01, "b": 0.02, "c": 0.05})
    switch: float = 1.0
    prefill_per_token: float = 0.001
    kv_per_token: int = 1

    def prefill_time(self, model, input_lens):
        return self.prefill_per_token * sum(input_lens)

    def decode_time(self, model, batch, context_tokens):
        return self.step[model]

    def switch_time(self, from_model, to_model):
        return 0.0 if from_model == to_model else self.switch

    def swap_time(self, nbytes):
        return nbytes * 1e-9

    def weight_bytes(self, model):
        return 100

    def kv_bytes_per_token(self, model):
        return self.kv_per_token
