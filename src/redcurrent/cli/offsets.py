"""``redcurrent offsets reset``: move a group's position, like kafka-consumer-groups --reset-offsets."""

from __future__ import annotations

import datetime as dt

import click

from redcurrent import GroupError

from .context import json_option, pass_env
from .env import Env
from .output import console, echo_json, table
from .params import check_entry_id

__all__ = ["offsets"]


@click.group()
def offsets() -> None:
    """Reset a consumer group's position on a topic."""


def _target(
    earliest: bool, latest: bool, when: str | None, entry_id: str | None
) -> str | dt.datetime:
    chosen = [x for x in (earliest, latest, when is not None, entry_id is not None) if x]
    if len(chosen) != 1:
        raise click.UsageError(
            "give exactly one of --to-earliest, --to-latest, --to-datetime, --to-id"
        )
    if earliest:
        return "earliest"
    if latest:
        return "latest"
    if entry_id is not None:
        return entry_id
    assert when is not None
    try:
        return dt.datetime.fromisoformat(when)
    except ValueError:
        raise click.BadParameter(
            f"{when!r} is not an ISO 8601 date-time (e.g. 2025-01-31T12:00:00Z)",
            param_hint="--to-datetime",
        )


@offsets.command("reset")
@click.argument("topic")
@click.argument("group")
@click.option("--to-earliest", is_flag=True, help="Replay everything still in the partitions.")
@click.option("--to-latest", is_flag=True, help="Skip to the end: only new messages are delivered.")
@click.option(
    "--to-datetime",
    metavar="ISO",
    help="Start at the first entry at or after this time (naive times are UTC).",
)
@click.option(
    "--to-id", metavar="ID", callback=check_entry_id, help="Start at this entry id (inclusive)."
)
@click.option("--partition", "-p", type=int, help="Only this partition (default: all).")
@click.option("--dry-run", is_flag=True, help="Show what would be set; change nothing.")
@click.option("--force", is_flag=True, help="Reset even while the group has live members.")
@json_option
@pass_env
def reset(
    env: Env,
    topic: str,
    group: str,
    to_earliest: bool,
    to_latest: bool,
    to_datetime: str | None,
    to_id: str | None,
    partition: int | None,
    dry_run: bool,
    force: bool,
) -> None:
    """Move GROUP's position on TOPIC; pending entries of the group are acked (discarded).

    Refuses while the group has live members unless --force.
    """
    to = _target(to_earliest, to_latest, to_datetime, to_id)

    async def go() -> tuple[dict[int, str], dict[int, int], dict[int, int] | None]:
        async with env.admin() as admin:
            info = await admin.describe_group(topic, group)
            if info.members and not force:
                raise GroupError(
                    f"group {group!r} has {len(info.members)} live member(s); stop them "
                    "first or pass --force"
                )
            before = {p.partition: p.lag or 0 for p in info.partitions}
            result = await admin.reset_offsets(
                topic, group, to, partition=partition, force=force, dry_run=dry_run
            )
            after = None if dry_run else await admin.lag(topic, group)
            return result, before, after

    result, before, after = env.run(go())
    if env.json:
        echo_json(
            {
                "topic": topic,
                "group": group,
                "dry_run": dry_run,
                "partitions": [
                    {
                        "partition": p,
                        "position": pos,
                        "lag_before": before.get(p),
                        "lag_after": None if after is None else after.get(p),
                    }
                    for p, pos in sorted(result.items())
                ],
            }
        )
        return
    rows = [
        (p, pos, before.get(p), "-" if after is None else after.get(p))
        for p, pos in sorted(result.items())
    ]
    title = f"{'dry run: would reset' if dry_run else 'reset'} group {group} on {topic}"
    console().print(
        table(title, ["partition", "position (last delivered id)", "lag before", "lag after"], rows)
    )
