"""What the tests of a CPU node share: its prompts, a market of tiny models, a node of 4 virtual
instances (1 prefill, 3 decode) and the prompts' token ids."""

from pathlib import Path

from aegaeon.config.serving import EngineConfig, NodeConfig
from aegaeon.models.maker import make_model
from aegaeon.serve.node import Node
from tests.models.reference import LARGE_SHAPE, SMALL_SHAPE

PROMPTS = [
    "the model serves many requests",
    "hot and cold models share one pool",
    "one gpu many models",
]
SLAB = 64 * 1024


def make_market(root: Path, count: int) -> dict[str, str]:
    """m00, m01, ...: the large shape at even indices, the small at odd ones, seeded by index."""
    return {
        f"m{i:02d}": str(
            make_model(root / f"m{i:02d}", SMALL_SHAPE if i % 2 else LARGE_SHAPE, seed=i)
        )
        for i in range(count)
    }


def make_node(models: dict[str, str], cluster: str, **overrides) -> Node:
    base = dict(
        num_instances=4,
        prefill_instances=1,
        cluster_id=cluster,
        engine=EngineConfig(slab_bytes=SLAB, kv_bytes=8 * 2**20),
        host_kv_bytes=4 * 2**20,
        kv_slab_bytes=SLAB,
        threads_per_worker=1,
    )
    return Node(NodeConfig(models, **{**base, **overrides}))


def prompt_ids(models: dict[str, str], model: str, prompt: str) -> list[int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(f"{models[model]}/tokenizer.json").encode(prompt).ids
