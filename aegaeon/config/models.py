"""The shapes of the paper's models and the workload mix of its experiments (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass

from aegaeon.sched.layerwise import StageShares


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a Llama-family model: enough to size weights and KV cache."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    max_context: int
    qkv_bias: bool = False
    tie_embeddings: bool = False
    dtype_bytes: int = 2
    tokenizer: str = ""  # names the length distribution of sharegpt_lengths.csv
    # a head's width when it is not hidden_size / num_heads: a tensor-parallel shard holds num_heads / N
    # heads of the whole model's width (0: hidden_size / num_heads)
    head_size: int = 0

    @property
    def head_dim(self) -> int:
        return self.head_size or self.hidden_size // self.num_heads

    @property
    def layer_parameters(self) -> int:
        """One decoder layer's: attention, MLP, the two norms."""
        h, m = self.hidden_size, self.intermediate_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attention = 2 * h * q + 2 * h * kv + (q + 2 * kv if self.qkv_bias else 0)
        return attention + 3 * h * m + 2 * h

    @property
    def num_parameters(self) -> int:
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_embeddings else 2)
        return self.num_layers * self.layer_parameters + embeddings + self.hidden_size

    def stage_shares(self) -> StageShares:
        """Its forward's stages' shares of the weight copy and of the compute (layer-wise readiness)."""
        h = self.hidden_size
        head = (0 if self.tie_embeddings else self.vocab_size * h) + h  # the final norm with it
        return StageShares.of_model(
            self.num_layers, self.layer_parameters, self.vocab_size * h, head, self.tie_embeddings
        )

    @property
    def weight_bytes(self) -> int:
        return self.num_parameters * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes


# The paper's three models, with their published configurations.
PAPER_MODELS: dict[str, ModelSpec] = {
    "qwen2_5_7b": ModelSpec(
        "qwen2_5_7b", 3584, 18944, 28, 28, 4, 152064, 32768, qkv_bias=True, tokenizer="qwen2.5"
    ),
    "yi1_5_9b_chat": ModelSpec(
        "yi1_5_9b_chat", 4096, 11008, 48, 32, 4, 64000, 4096, tokenizer="yi1.5"
    ),
    "llama2_13b_chat": ModelSpec(
        "llama2_13b_chat", 5120, 13824, 40, 40, 40, 32000, 4096, tokenizer="llama2"
    ),
}

# Every model the paper's artifact measured latency tables for (profiles/<device>/), with their published
# configurations. Qwen-7B-Chat (v1) counts its FFN as the per-branch 11008 (its config's 22016 is both
# branches of the gated MLP); its length distribution is qwen2.5's, the nearest tokenizer measured.
MEASURED_MODELS: dict[str, ModelSpec] = {
    **PAPER_MODELS,
    "yi1_5_6b_chat": ModelSpec(
        "yi1_5_6b_chat", 4096, 11008, 32, 32, 4, 64000, 4096, tokenizer="yi1.5"
    ),
    "llama2_7b": ModelSpec("llama2_7b", 4096, 11008, 32, 32, 32, 32000, 4096, tokenizer="llama2"),
    "qwen_7b_chat": ModelSpec(
        "qwen_7b_chat", 4096, 11008, 32, 32, 32, 151936, 8192, qkv_bias=True, tokenizer="qwen2.5"
    ),
}

# Model i of a synthetic workload stands for PAPER_MIX[i % 10] (the paper's runs).
PAPER_MIX: tuple[str, ...] = ("qwen2_5_7b",) * 6 + ("yi1_5_9b_chat",) * 2 + ("llama2_13b_chat",) * 2


def synthetic_model_name(index: int) -> str:
    return f"synth_model_{index:02d}"
