"""``redcurrent topics``: list, create, describe, alter, trim, delete."""

from __future__ import annotations

from typing import Any

import click

from redcurrent import TopicInfo, UnknownTopicError

from .context import json_option, pass_env
from .env import Env
from .output import console, echo_json, outcome, table

__all__ = ["topic_json", "topics"]


def topic_json(info: TopicInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "partitions": info.partitions,
        "version": info.version,
        "created_at": info.created_at,
        "colocate_with": info.colocate_with,
        "length": info.length,
        "config": info.config,  # a dataclass: output.dumps writes it field by field
        "partition_info": [
            {
                "partition": p.partition,
                "length": p.length,
                "first_id": p.first_id,
                "last_id": p.last_id,
            }
            for p in info.partition_info
        ],
    }


@click.group()
def topics() -> None:
    """Create, list, describe, grow, trim and delete topics."""


@topics.command("list", short_help="Topics with partitions, size, retention.")
@json_option
@pass_env
def list_topics(env: Env) -> None:
    """List the topics of the namespace with their partitions, size and retention."""

    async def go() -> list[TopicInfo]:
        async with env.admin() as admin:
            out = []
            for name in await admin.list_topics():
                try:
                    out.append(await admin.describe_topic(name))
                except UnknownTopicError:  # deleted meanwhile
                    continue
            return out

    infos = env.run(go())
    if env.json:
        echo_json([topic_json(i) for i in infos])
        return
    if not infos:
        click.echo(f"no topics in namespace {env.namespace!r}")
        return
    rows = [(i.name, i.partitions, i.length, i.config.maxlen, i.config.retention_ms) for i in infos]
    console().print(
        table(None, ["topic", "partitions", "messages", "maxlen", "retention_ms"], rows)
    )


@topics.command("create")
@click.argument("name")
@click.option("--partitions", "-p", type=int, required=True, help="Number of partitions (>= 1).")
@click.option("--maxlen", type=int, help="Cap each partition at about this many entries.")
@click.option("--retention-ms", type=int, help="Drop entries older than this (MINID trimming).")
@click.option("--ttl", type=float, help="Default message TTL in seconds.")
@click.option("--dedup-window", type=float, default=600.0, show_default=True,
              help="Seconds a record's dedup key is remembered (docs/exactly-once.md).")
@click.option("--if-not-exists", is_flag=True, help="Succeed if the topic already exists.")
@click.option("--colocate-with", metavar="TOPIC",
              help="Put partition p in the hash slot of TOPIC's partition p (same partition count).")
@json_option
@pass_env
def create(
    env: Env,
    name: str,
    partitions: int,
    maxlen: int | None,
    retention_ms: int | None,
    ttl: float | None,
    dedup_window: float,
    if_not_exists: bool,
    colocate_with: str | None,
) -> None:
    """Create topic NAME."""

    async def go() -> TopicInfo:
        async with env.admin() as admin:
            return await admin.create_topic(
                name,
                partitions,
                maxlen=maxlen,
                retention_ms=retention_ms,
                ttl=ttl,
                exist_ok=if_not_exists,
                dedup_window=dedup_window,
                colocate_with=colocate_with,
            )

    info = env.run(go())
    if env.json:
        echo_json(topic_json(info))
    else:
        click.echo(f"topic {info.name} ready: {info.partitions} partitions")


@topics.command("describe", short_help="Partitions, config and groups of a topic.")
@click.argument("name")
@json_option
@pass_env
def describe(env: Env, name: str) -> None:
    """Partitions (length, first and last id), config and groups of topic NAME."""

    async def go() -> tuple[TopicInfo, list[str]]:
        async with env.admin() as admin:
            info = await admin.describe_topic(name)
            return info, await admin.list_groups(name)

    info, group_names = env.run(go())
    if env.json:
        echo_json({**topic_json(info), "groups": group_names})
        return
    cfg = info.config
    c = console()
    c.print(
        f"topic [bold]{info.name}[/]  partitions {info.partitions}  messages {info.length}  "
        f"version {info.version}"
    )
    c.print(
        f"config: maxlen={cfg.maxlen} retention_ms={cfg.retention_ms} ttl_ms={cfg.ttl_ms} "
        f"dead_letter_expired={cfg.dead_letter_expired} dedup_window_ms={cfg.dedup_window_ms}"
    )
    if info.colocate_with:
        c.print(f"co-located with: {info.colocate_with}")
    c.print(f"groups: {', '.join(group_names) or '-'}")
    rows = [(p.partition, p.length, p.first_id, p.last_id) for p in info.partition_info]
    c.print(table(None, ["partition", "length", "first id", "last id"], rows))


@topics.command("alter", short_help="Grow a topic's partitions or change its settings.")
@click.argument("name")
@click.option("--partitions", "-p", type=int, help="New partition count (only grows).")
@click.option(
    "--config", "-c", "settings", multiple=True, metavar="NAME=VALUE",
    help="Change a setting: maxlen, retention_ms, ttl (seconds), dead_letter_expired "
    "(true/false) or dedup_window (seconds); VALUE 'none' removes it. Repeatable.",
)
@click.option(
    "--preserve-key-order", is_flag=True,
    help="Grow behind a drain barrier: each group handles everything written before the growth "
    "before anything written after it (a pause while groups catch up).",
)
@json_option
@pass_env
def alter(env: Env, name: str, partitions: int | None, settings: tuple[str, ...], preserve_key_order: bool) -> None:
    """Grow topic NAME to --partitions partitions (keys remap, as in Kafka; with
    --preserve-key-order every key keeps its order across the growth), and/or change its
    settings with --config (kafka-configs --alter --add-config)."""
    if partitions is None and not settings:
        raise click.UsageError("give --partitions and/or --config NAME=VALUE")
    changes = _config_changes(settings)

    async def go() -> tuple[int, TopicInfo]:
        async with env.admin() as admin:
            before = (await admin.describe_topic(name)).partitions
            info = None
            if changes:
                info = await admin.alter_topic_config(name, **changes)
            if partitions is not None:
                info = await admin.alter_partitions(name, partitions, preserve_key_order=preserve_key_order)
            assert info is not None
            return before, info

    before, info = env.run(go())
    cfg = info.config
    outcome(
        env.json,
        {**topic_json(info), "previous_partitions": before},
        f"topic {info.name} has {info.partitions} partitions (was {before}); maxlen={cfg.maxlen} "
        f"retention_ms={cfg.retention_ms} ttl_ms={cfg.ttl_ms} dead_letter_expired={cfg.dead_letter_expired}",
    )


_SETTINGS = {"maxlen": int, "retention_ms": int, "ttl": float, "dead_letter_expired": bool, "dedup_window": float}


def _config_changes(settings: tuple[str, ...]) -> dict[str, Any]:
    """--config NAME=VALUE pairs as alter_topic_config keywords (usage errors for bad ones)."""
    changes: dict[str, Any] = {}
    for item in settings:
        key, sep, raw = item.partition("=")
        key, raw = key.strip().replace("-", "_"), raw.strip()
        kind = _SETTINGS.get(key)
        if not sep or kind is None:
            raise click.UsageError(f"--config {item!r}: expected NAME=VALUE with NAME one of {', '.join(_SETTINGS)}")
        if raw.lower() in ("none", "null", "") and kind is not bool:
            changes[key] = None
        elif kind is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise click.UsageError(f"--config {item!r}: {key} is true or false")
            changes[key] = raw.lower() in ("true", "1", "yes")
        else:
            try:
                changes[key] = kind(raw)
            except ValueError:
                raise click.UsageError(f"--config {item!r}: {key} must be a number or none") from None
    return changes


@topics.command("trim", short_help="Trim now (safe: keeps what groups need).")
@click.argument("name")
@click.option("--maxlen", type=int, help="Keep at most about this many entries per partition.")
@click.option("--retention-ms", type=int, help="Remove entries older than this.")
@click.option(
    "--unsafe",
    is_flag=True,
    help="Apply the retention even to entries a group has not acked yet (they are lost).",
)
@json_option
@pass_env
def trim(env: Env, name: str, maxlen: int | None, retention_ms: int | None, unsafe: bool) -> None:
    """Trim topic NAME now (default targets: the topic's config).

    Safe by default: nothing pending or not yet delivered to every group is removed;
    with no retention it removes exactly what every group has acked.
    """

    async def go() -> int:
        async with env.admin() as admin:
            return await admin.trim(name, safe=not unsafe, maxlen=maxlen, retention_ms=retention_ms)

    removed = env.run(go())
    outcome(
        env.json,
        {"topic": name, "removed": removed, "safe": not unsafe},
        f"trimmed {removed} entries from topic {name}{'' if unsafe else ' (safe)'}",
    )


@topics.command("delete", short_help="Delete a topic, its groups and dead letters.")
@click.argument("name")
@json_option
@pass_env
def delete(env: Env, name: str) -> None:
    """Delete topic NAME with its partitions, groups and dead letters."""

    async def go() -> None:
        async with env.admin() as admin:
            await admin.delete_topic(name)

    env.run(go())
    outcome(env.json, {"topic": name, "deleted": True}, f"deleted topic {name}")
