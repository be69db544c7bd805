"""``redcurrent groups``: list a topic's groups, describe one (epoch, members, assignment, lag)."""

from __future__ import annotations

from typing import Any

import click

from redcurrent import GroupInfo, UnknownGroupError

from .context import json_option, pass_env
from .env import Env
from .output import ago, console, echo_json, table

__all__ = ["group_json", "groups"]


def group_json(info: GroupInfo) -> dict[str, Any]:
    return {
        "topic": info.topic,
        "group": info.group,
        "epoch": info.epoch,
        "lag": info.lag,
        "pending": info.pending,
        # MemberInfo and PartitionGroupInfo are dataclasses: output.dumps writes them
        # field by field, as this function once did by hand
        "members": info.members,
        "assignment": info.assignment,
        "partitions": info.partitions,
    }


@click.group()
def groups() -> None:
    """Inspect consumer groups: members, assignment, pending and lag."""


@groups.command("list")
@click.argument("topic")
@json_option
@pass_env
def list_groups(env: Env, topic: str) -> None:
    """Groups of TOPIC with their epoch, live members, pending and lag."""

    async def go() -> list[GroupInfo]:
        async with env.admin() as admin:
            await admin.describe_topic(topic)  # unknown topic: one clear error
            out = []
            for name in await admin.list_groups(topic):
                try:
                    out.append(await admin.describe_group(topic, name))
                except UnknownGroupError:
                    continue
            return out

    infos = env.run(go())
    if env.json:
        echo_json(
            [
                {
                    "group": i.group,
                    "epoch": i.epoch,
                    "members": len(i.members),
                    "pending": i.pending,
                    "lag": i.lag,
                }
                for i in infos
            ]
        )
        return
    if not infos:
        click.echo(f"no groups on topic {topic}")
        return
    rows = [(i.group, i.epoch, len(i.members), i.pending, i.lag) for i in infos]
    console().print(table(None, ["group", "epoch", "members", "pending", "lag"], rows))


@groups.command("describe")
@click.argument("topic")
@click.argument("group")
@json_option
@pass_env
def describe_group(env: Env, topic: str, group: str) -> None:
    """Epoch, members, assignment and per-partition owner, pending and lag of GROUP on TOPIC."""

    async def go() -> GroupInfo:
        async with env.admin() as admin:
            return await admin.describe_group(topic, group)

    info = env.run(go())
    if env.json:
        echo_json(group_json(info))
        return
    c = console()
    c.print(
        f"group [bold]{info.group}[/] on topic [bold]{info.topic}[/]  epoch {info.epoch}  "
        f"members {len(info.members)}  pending {info.pending}  lag {info.lag}"
    )
    if info.members:
        rows = [
            (
                m.member_id,
                m.host,
                m.pid,
                ",".join(map(str, m.partitions)) or "-",
                ago(m.last_heartbeat),
            )
            for m in info.members
        ]
        c.print(table("members", ["member", "host", "pid", "partitions", "last heartbeat"], rows))
    else:
        c.print("no live members")
    rows2 = [(p.partition, p.owner, p.pending, p.lag, p.last_delivered_id) for p in info.partitions]
    c.print(
        table("partitions", ["partition", "owner", "pending", "lag", "last delivered id"], rows2)
    )
