"""`aegaeon-launch`: the per-node launcher.

What exists today: inspecting and cleaning a cluster's shared-memory namespace
on this node. Starting worker processes and the proxy arrives with the cluster
(see the README's status table); this command does not pretend to do it.
"""

from __future__ import annotations

import logging

import click

from aegaeon.errors import AegaeonError
from aegaeon.ipc.shm import inspect_cluster, remove_stale


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Per-node launcher of an aegaeon cluster."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--cluster-id", default="default", show_default=True, help="Names the cluster's shm objects.")
def status(cluster_id: str) -> None:
    """Show the shared-memory objects of a cluster on this node and whether their owner lives."""
    try:
        report = inspect_cluster(cluster_id)
    except AegaeonError as exc:
        raise click.ClickException(str(exc)) from exc
    owner = "none" if report.owner_pid is None else f"pid {report.owner_pid} ({'alive' if report.owner_alive else 'gone'})"
    click.echo(f"cluster {cluster_id}: owner {owner}, {len(report.objects)} objects")
    for name in report.objects:
        click.echo(f"  /dev/shm/{name}")


@main.command()
@click.option("--cluster-id", default="default", show_default=True)
def cleanup(cluster_id: str) -> None:
    """Remove the shared-memory objects a crashed run of the cluster left behind."""
    try:
        removed = remove_stale(cluster_id)
    except AegaeonError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"removed {len(removed)} stale objects of cluster {cluster_id}")


if __name__ == "__main__":
    main()
