"""The ``redcurrent demo`` command: its options, where it runs, and what it prints."""

from __future__ import annotations

import sys
from typing import Any

import click

from redcurrent.embedded import EmbeddedCluster

from ..context import json_option, pass_env
from ..env import Env
from ..output import console, echo_json
from .chaos import is_cluster
from .options import DemoOptions
from .phases import Demo
from .report import print_verdict
from .view import View

__all__ = ["demo"]


@click.command(short_help="Kill a consumer under load; check nothing is lost.")
@click.option(
    "--duration",
    type=click.FloatRange(min=2),
    default=30,
    show_default=True,
    help="Seconds of producing; a consumer is killed halfway.",
)
@click.option("--partitions", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--consumers", type=click.IntRange(min=2), default=3, show_default=True)
@click.option(
    "--rate",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Messages per second.",
)
@click.option(
    "--keys", type=click.IntRange(min=1), default=64, show_default=True, help="Distinct keys."
)
@click.option("--keep", is_flag=True, help="Keep the topic and the worker logs afterwards.")
@click.option(
    "--cluster",
    is_flag=True,
    help="Run on a Redis Cluster (a private 3+3 one unless --url is a cluster) and also "
    "SIGKILL a Redis primary holding some of the partitions.",
)
@json_option
@pass_env
def demo(
    env: Env,
    duration: float,
    partitions: int,
    consumers: int,
    rate: int,
    keys: int,
    keep: bool,
    cluster: bool,
) -> None:
    """Watch a consumer group lose a member to SIGKILL and lose no message.

    Prints a live table, then a verdict from what was really sent and handled:
    produced, consumed, lost, duplicated, per-key order violations, seconds to recover.
    Exits 1 if anything was lost or out of order. With --cluster, a Redis primary holding
    some of the partitions is SIGKILLed too (sends use acks="replica").
    """
    opts = DemoOptions(duration, partitions, consumers, rate, keys, keep, cluster)
    out = None if env.json else console()
    if not cluster:
        result = _run(env, opts, View(out), None)
    else:
        given = click.get_current_context().find_root().params.get("url")
        if given and is_cluster(given):
            result = _run(env, opts, View(out), None)  # not ours: a consumer is killed, no primary
        else:
            with EmbeddedCluster() as nodes:
                print(
                    f"redcurrent: started an embedded Redis Cluster, 3 primaries + 3 replicas, at "
                    f"{nodes.url}{' (the --url / REDIS_URL server is not a cluster)' if given else ''}; "
                    "stopped on exit, its data with it",
                    file=sys.stderr,
                )
                result = _run(Env(nodes.url, env.namespace, env.json), opts, View(out), nodes)
    if env.json:
        echo_json(result)
    else:
        assert out is not None
        print_verdict(result, out)
    if not result["ok"]:
        sys.exit(1)


def _run(env: Env, opts: DemoOptions, view: View, nodes: EmbeddedCluster | None) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        async with env.admin() as admin:
            run = Demo(env, admin, opts, view, nodes)
            try:
                return await run.run()
            finally:
                await run.cleanup()

    return env.run(main())
