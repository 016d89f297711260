"""aegaeon's configuration, in one package: one frozen dataclass per concern.

- `serving`: a live node (EngineConfig, NodeConfig, AdmissionLimits, RecoveryConfig, RestartPolicy, ApiConfig)
- `link`: the TCP link between nodes (LinkConfig)
- `sim`: a simulated cluster (SimConfig)
- `models`: the paper's model shapes and workload mix (ModelSpec, PAPER_MODELS, PAPER_MIX)
- `env`: every environment variable read, and nowhere else
- `pool`: the loader of a pool file plus flags

The SLOs are `aegaeon.sched.slo.SLO` (the policies' own input; `SLO.from_env` reads the variables through
`env`). Nothing here imports torch.
"""

from aegaeon.config.models import (
    MEASURED_MODELS,
    PAPER_MIX,
    PAPER_MODELS,
    ModelSpec,
    synthetic_model_name,
)

__all__ = ["MEASURED_MODELS", "PAPER_MIX", "PAPER_MODELS", "ModelSpec", "synthetic_model_name"]
