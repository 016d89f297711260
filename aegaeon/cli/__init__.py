"""The `aegaeon` command: the root group (cli.root) and its subcommands, one module per area."""

from aegaeon.cli import bench_node, bench_parts, serving, study  # noqa: F401  (they register the commands)
from aegaeon.cli.root import main

__all__ = ["main"]
