"""The `aegaeon` command: the root group (cli.root) and its subcommands, one module per area."""

from aegaeon.cli import (  # noqa: F401  (they register the commands)
    bench_disruption,
    bench_e2e,
    bench_engine,
    bench_layerwise,
    bench_parts,
    bench_sim_vs_live,
    bench_tp,
    models_admin,
    plotting,
    profiling,
    serving,
    simulate,
)
from aegaeon.cli.root import main

__all__ = ["main"]
