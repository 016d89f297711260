"""`aegaeon-launch`: the per-node launcher.

`start` runs a node on this machine: the host weight and KV caches in shared
memory, one worker process per virtual CPU instance, and on the head node the
proxy with the HTTP API. Alone, a node is a whole cluster. With `--head` it
also listens for other nodes on the TCP link; `--join HOST:PORT` runs a node
whose workers serve the head's proxy (no HTTP API of its own). `status` and
`cleanup` inspect and clean a cluster's shared-memory namespace on this node.
"""

from __future__ import annotations

import logging

import click

from aegaeon import __version__
from aegaeon.cli.root import ReportingGroup
from aegaeon.cli_node import node_options, node_settings
from aegaeon.ipc.shm import inspect_cluster, remove_stale


@click.group(cls=ReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="aegaeon-launch")
def main() -> None:
    """Per-node launcher of an aegaeon cluster."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.option(
    "--cluster-id", default="default", show_default=True, help="Names the cluster's shm objects."
)
def status(cluster_id: str) -> None:
    """Show the shared-memory objects of a cluster on this node and whether their owner lives."""
    report = inspect_cluster(cluster_id)
    owner = (
        "none"
        if report.owner_pid is None
        else f"pid {report.owner_pid} ({'alive' if report.owner_alive else 'gone'})"
    )
    click.echo(f"cluster {cluster_id}: owner {owner}, {len(report.objects)} objects")
    for name in report.objects:
        click.echo(f"  /dev/shm/{name}")


@main.command()
@node_options
@click.option(
    "--head", "is_head", is_flag=True, help="Also listen for joining nodes on --link-listen."
)
@click.option(
    "--link-listen",
    default="127.0.0.1:7070",
    show_default=True,
    help="HOST:PORT the head listens on for nodes (0.0.0.0:PORT for every interface).",
)
@click.option(
    "--join",
    "join_address",
    default=None,
    metavar="HOST:PORT",
    help="Join the head node listening there; this node then serves the head's proxy.",
)
@click.option(
    "--token",
    envvar="AEGAEON_TOKEN",
    default=None,
    help="Shared cluster token (8+ characters) for --head/--join [env AEGAEON_TOKEN].",
)
@click.option(
    "--node-name", default=None, help="This node's name in the head's logs [default: host name]."
)
@click.option(
    "--max-frame-mib",
    default=256,
    show_default=True,
    help="Largest TCP link frame (one request's KV crossing nodes must fit).",
)
@click.option(
    "--heartbeat-timeout",
    default=5.0,
    show_default=True,
    help="Seconds of silence after which a node (or the head) counts as lost.",
)
def start(
    is_head: bool,
    link_listen: str,
    join_address: str | None,
    token: str | None,
    node_name: str | None,
    max_frame_mib: int,
    heartbeat_timeout: float,
    **given,
) -> None:
    """Start this node (caches, workers, and on the head the proxy and HTTP API) until Ctrl-C or SIGTERM;
    both clean up. A joining node also stops when it loses the head. Node settings as for `aegaeon serve`."""
    import socket

    from aegaeon.config.link import LinkConfig
    from aegaeon.serve.server import join_cluster, serve_node

    announce = lambda line: click.echo(line, err=True)  # noqa: E731
    if is_head and join_address:
        raise click.UsageError("a node is either --head or --join HOST:PORT, not both")
    role = "head" if is_head else "join" if join_address else None
    link = None
    if role is not None:
        if not token:
            raise click.UsageError(
                "--head and --join need the cluster token: --token or AEGAEON_TOKEN"
            )
        link = LinkConfig(token, max_frame_mib * 2**20, heartbeat_timeout)
    config, api = node_settings(
        given,
        link_role=role,
        link_address=join_address or link_listen,
        link=link,
        node_name=node_name or socket.gethostname(),
    )
    if role == "join":
        join_cluster(config, announce)
    else:
        serve_node(config, api, announce=announce)


@main.command()
@click.option("--cluster-id", default="default", show_default=True)
def cleanup(cluster_id: str) -> None:
    """Remove the shared-memory objects a crashed run of the cluster left behind."""
    removed = remove_stale(cluster_id)
    click.echo(f"removed {len(removed)} stale objects of cluster {cluster_id}")


if __name__ == "__main__":
    main()
