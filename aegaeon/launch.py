"""`aegaeon-launch`: the per-node launcher.

`start` runs a node on this machine: the host weight and KV caches in shared
memory, one worker process per virtual CPU instance, and the proxy with the
HTTP API (this node is the head node; joining other nodes over TCP is not
built yet). `status` and `cleanup` inspect and clean a cluster's shared-memory
namespace on this node.
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
@click.option("--models", "models_spec", default=None,
              help="Comma-separated checkpoint dirs (or NAME=DIR) [default: the embedded demo pool].")
@click.option("--device", type=click.Choice(["cpu"]), default="cpu", show_default=True,
              help="Only virtual CPU instances so far; GPU workers per device are not built yet.")
@click.option("--num-instances", default=3, show_default=True, help="Worker processes (virtual CPU instances).")
@click.option("--prefill-instances", default=1, show_default=True, help="How many of them run prefill.")
@click.option("--cluster-id", default="default", show_default=True, help="Names the cluster's shm objects.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--api-key", default=None, help="Require `Authorization: Bearer KEY` on /v1/ endpoints.")
def start(models_spec: str | None, device: str, num_instances: int, prefill_instances: int, cluster_id: str,
          host: str, port: int, api_key: str | None) -> None:
    """Start this node (caches, workers, proxy and HTTP API) until Ctrl-C or SIGTERM; both clean up."""
    from aegaeon.cli import _parse_models
    from aegaeon.serve.node import NodeConfig
    from aegaeon.serve.server import serve_node

    config = NodeConfig(_parse_models(models_spec), num_instances, prefill_instances, cluster_id=cluster_id,
                        device=device)
    try:
        serve_node(config, host, port, api_key, announce=lambda line: click.echo(line, err=True))
    except AegaeonError as exc:
        raise click.ClickException(str(exc)) from exc


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
