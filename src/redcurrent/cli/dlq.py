"""``redcurrent dlq``: list, show, requeue, delete and purge a group's dead letters."""

from __future__ import annotations

import sys
from typing import Any

import click

from redcurrent import Admin, DeadLetterRecord, RequeueError

from .context import json_option, pass_env
from .env import Env
from .output import console, dumps, echo_json, outcome, table, text
from .params import check_entry_id, check_entry_ids

__all__ = ["dlq", "dlq_json"]

MAX_SHOWN = 10_000


def dlq_json(d: DeadLetterRecord, full: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "dead_letter_id": d.dead_letter_id,
        "topic": d.topic,
        "partition": d.partition,
        "id": d.id,
        "key": d.key,
        "reason": d.reason,
        "attempts": d.attempts,
        "error_type": d.error_type,
        "error": d.error,
        "group": d.group,
        "consumer": d.consumer,
        "time": d.time,
    }
    if full:
        out.update(headers=d.headers, value=d.value, traceback=d.traceback)
    return out


async def _find(
    admin: Admin, topic: str, group: str, ids: tuple[str, ...]
) -> list[DeadLetterRecord]:
    """The dead letters ``ids`` (each ``ms-seq``); ClickException for the first one missing."""
    found = []
    for i in ids:
        letter = await admin.dead_letter(topic, group, i)
        if letter is None:
            raise click.ClickException(f"no dead letter {i} for group {group!r} on topic {topic!r}")
        found.append(letter)
    return found


async def _check_group(admin: Admin, topic: str, group: str) -> None:
    await admin.describe_topic(topic)
    if group not in await admin.list_groups(topic):
        raise click.ClickException(f"unknown group {group!r} on topic {topic!r}")


@click.group(short_help="List, show, requeue, delete, purge dead letters.")
def dlq() -> None:
    """A group's dead letters: messages that failed max_attempts times, expired or were undecodable."""


@dlq.command("list")
@click.argument("topic")
@click.argument("group")
@click.option("--count", "-n", type=click.IntRange(min=1), default=100, show_default=True)
@click.option(
    "--after", metavar="ID", callback=check_entry_id, help="Start after this dead-letter id (paging)."
)
@json_option
@pass_env
def list_(env: Env, topic: str, group: str, count: int, after: str | None) -> None:
    """A page of GROUP's dead letters on TOPIC, oldest first."""

    async def go() -> tuple[list[DeadLetterRecord], int]:
        async with env.admin() as admin:
            await _check_group(admin, topic, group)
            return (
                await admin.dead_letters(topic, group, count=count, after=after),
                await admin.count_dead_letters(topic, group),
            )

    page, total = env.run(go())
    if env.json:
        echo_json({"total": total, "dead_letters": [dlq_json(d) for d in page]})
        return
    rows = [
        (
            d.dead_letter_id,
            d.partition,
            d.id,
            text(d.key),
            d.reason,
            d.attempts,
            f"{d.error_type}: {d.error}" if d.error_type else d.error,
        )
        for d in page
    ]
    console().print(
        table(
            f"{total} dead letter(s) of group {group} on {topic}",
            ["dead letter id", "partition", "id", "key", "reason", "attempts", "error"],
            rows,
        )
    )


@dlq.command("show")
@click.argument("topic")
@click.argument("group")
@click.argument("ids", nargs=-1, callback=check_entry_ids)
@json_option
@pass_env
def show(env: Env, topic: str, group: str, ids: tuple[str, ...]) -> None:
    """Everything about dead letters IDS (default: the first 100): value, headers, traceback."""

    async def go() -> list[DeadLetterRecord]:
        async with env.admin() as admin:
            await _check_group(admin, topic, group)
            if ids:
                return await _find(admin, topic, group, ids)
            return await admin.dead_letters(topic, group, count=100)

    found = env.run(go())
    if env.json:
        echo_json([dlq_json(d, full=True) for d in found])
        return
    c = console()
    for d in found:
        c.rule(f"dead letter {d.dead_letter_id}")
        for name, value in dlq_json(d, full=True).items():
            if name == "traceback" and value:
                c.print("traceback:")
                c.print(value, markup=False)
            else:
                c.print(
                    f"{name}: {value if isinstance(value, str) else dumps(value)}", markup=False
                )
    if not found:
        click.echo("no dead letters", err=True)


@dlq.command("requeue")
@click.argument("topic")
@click.argument("group")
@click.argument("ids", nargs=-1, callback=check_entry_ids)
@json_option
@pass_env
def requeue(env: Env, topic: str, group: str, ids: tuple[str, ...]) -> None:
    """Put dead letters IDS (default: all) back on their partitions, for GROUP only.

    A dead letter that cannot be put back (e.g. its headers are not JSON) stays where it
    is; the others are requeued, then the command fails naming it.
    """

    async def go() -> tuple[int, dict[str, str]]:
        async with env.admin() as admin:
            await _check_group(admin, topic, group)
            if ids:
                await _find(admin, topic, group, ids)
            try:
                return await admin.requeue_dead_letters(topic, group, list(ids) if ids else None), {}
            except RequeueError as exc:
                return exc.moved, exc.failed

    moved, failed = env.run(go())
    outcome(
        env.json,
        {"topic": topic, "group": group, "requeued": moved, "failed": failed},
        f"requeued {moved} dead letter(s) for group {group} on {topic}",
    )
    if failed:
        listed = "; ".join(f"{i}: {why}" for i, why in failed.items())
        raise click.ClickException(
            f"{len(failed)} dead letter(s) could not be requeued and stay in the dead-letter "
            f"stream: {listed}"
        )


@dlq.command("delete")
@click.argument("topic")
@click.argument("group")
@click.argument("ids", nargs=-1, required=True, callback=check_entry_ids)
@json_option
@pass_env
def delete(env: Env, topic: str, group: str, ids: tuple[str, ...]) -> None:
    """Delete dead letters IDS (to delete them all, use purge)."""

    async def go() -> int:
        async with env.admin() as admin:
            await _check_group(admin, topic, group)
            await _find(admin, topic, group, ids)  # a missing id: an error, nothing deleted
            return await admin.delete_dead_letters(topic, group, ids)

    n = env.run(go())
    outcome(env.json, {"topic": topic, "group": group, "deleted": n}, f"deleted {n} dead letter(s)")


@dlq.command("purge")
@click.argument("topic")
@click.argument("group")
@click.option("--yes", "-y", is_flag=True, help="Do not ask (asked only on a terminal).")
@json_option
@pass_env
def purge(env: Env, topic: str, group: str, yes: bool) -> None:
    """Delete every dead letter of GROUP on TOPIC."""
    if not yes and sys.stdin.isatty():
        click.confirm(
            f"delete every dead letter of group {group} on {topic}?", abort=True, err=True
        )

    async def go() -> int:
        async with env.admin() as admin:
            await _check_group(admin, topic, group)
            return await admin.purge_dead_letters(topic, group)

    n = env.run(go())
    outcome(env.json, {"topic": topic, "group": group, "purged": n}, f"purged {n} dead letter(s)")
