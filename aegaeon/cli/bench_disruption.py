"""`aegaeon bench` of a node under disruption: `chaos` kills workers under load, `stall` sets hostile
clients on the HTTP API."""

from __future__ import annotations

import click

from aegaeon.cli.bench_parts import bench


@bench.command("chaos")
@click.option("--num-models", default=4, show_default=True, help="Tiny market models (two shapes).")
@click.option("--requests", default=96, show_default=True, help="Requests per round of load.")
@click.option(
    "--kills", default=5, show_default=True, help="Workers killed with SIGKILL while loaded."
)
@click.option("--max-tokens", default=32, show_default=True)
@click.option("--instances", default=5, show_default=True)
@click.option("--prefill-instances", default=2, show_default=True)
@click.option("--seed", default=0, show_default=True, help="Which workers die, and when.")
@click.option(
    "--node-kill/--no-node-kill",
    default=True,
    show_default=True,
    help="Also run a joined node (2 workers, over the TCP link on loopback), SIGKILL it under load and "
    "let a new one join in its place.",
)
def bench_chaos_cmd(
    num_models: int,
    requests: int,
    kills: int,
    max_tokens: int,
    instances: int,
    prefill_instances: int,
    seed: int,
    node_kill: bool,
) -> None:
    """Serve the same requests undisturbed and while workers (and a joined node) are killed: sent,
    completed, failed, lost, wrong tokens, re-runs, restarts, re-joins, latency percentiles and the node's
    memory."""
    from aegaeon.bench.chaos import bench_chaos
    from aegaeon.bench.e2e import market_models
    from aegaeon.models.demo import aegaeon_home

    r = bench_chaos(
        market_models(num_models, aegaeon_home() / "market"),
        requests,
        kills,
        max_tokens,
        instances,
        prefill_instances,
        seed,
        node_kill=node_kill,
    )
    click.echo(r.render())


@bench.command("stall")
@click.option(
    "--requests", default=64, show_default=True, help="Small streaming requests per condition."
)
@click.option("--concurrency", default=4, show_default=True)
@click.option("--max-tokens", default=8, show_default=True)
@click.option("--prompt-mib", default=10.0, show_default=True, help="Size of each big prompt.")
@click.option(
    "--slow-clients", default=64, show_default=True, help="Half-sent requests held open at once."
)
@click.option(
    "--join-node",
    is_flag=True,
    help="Make the server a head with a node joined over the TCP link (its own process), and report "
    "the link's longest silence per condition (the heartbeat timeout is 5 s).",
)
def bench_stall_cmd(
    requests: int,
    concurrency: int,
    max_tokens: int,
    prompt_mib: float,
    slow_clients: int,
    join_node: bool,
) -> None:
    """Small requests' p50/p99 through the HTTP API, undisturbed and while hostile clients (big prompts,
    slow and leaving clients, fuzzed bodies) use the same server (demo pool)."""
    from aegaeon.bench.stall import bench_stall
    from aegaeon.models.demo import demo_models

    if min(requests, concurrency, max_tokens) < 1 or prompt_mib <= 0 or slow_clients < 0:
        raise click.BadParameter(
            "--requests, --concurrency and --max-tokens must be at least 1, --prompt-mib "
            "positive, --slow-clients not negative"
        )
    click.echo(
        bench_stall(
            {k: str(v) for k, v in demo_models().items()},
            requests,
            concurrency,
            max_tokens,
            prompt_mib,
            slow_clients,
            join_node=join_node,
        ).render()
    )
