"""Reading a group's state for operators: members, assignment, pending and lag."""

from __future__ import annotations

from typing import Any

import orjson

from .connection import Client
from .keys import SHARE_RELEASED, Keys, share_group_name
from .structs import (
    GroupInfo,
    InFlightMessage,
    MemberInfo,
    PartitionGroupInfo,
    ShareGroupInfo,
    ShareMemberInfo,
)

__all__ = ["describe_group", "describe_share_group", "group_exists", "partition_lag"]

LAG_PAGE = 10_000


async def group_exists(client: Client, keys: Keys, topic: str, group: str) -> bool:
    return bool(await client.sismember(keys.groups(topic), group))


async def describe_group(
    client: Client, keys: Keys, topic: str, group: str, partitions: int
) -> GroupInfo:
    """Epoch, live members, assignment, and per partition owner, pending and lag."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.members(topic, group))
    pipe.zrange(keys.deadlines(topic, group), 0, -1, withscores=True)
    pipe.hmget(keys.group_state(topic, group), ["epoch", "assignment"])
    raw_members, deadlines, (epoch, assignment_raw) = await pipe.execute()
    assignment: dict[str, tuple[int, ...]] = {
        m: tuple(ps) for m, ps in (orjson.loads(assignment_raw) if assignment_raw else {}).items()
    }
    members = []
    scores = {m.decode(): s for m, s in deadlines}
    for mid_raw, value in sorted(raw_members.items()):
        mid = mid_raw.decode()
        instance, _, info_json = value.decode().partition("|")
        info = orjson.loads(info_json) if info_json else {}
        session = int(info.get("session_ms", 0))
        members.append(MemberInfo(
            member_id=mid, instance_id=instance, host=str(info.get("host", "")),
            pid=int(info.get("pid", 0)), last_heartbeat=int(scores.get(mid, 0)) - session,
            partitions=assignment.get(mid, ()),
        ))
    parts = tuple([await _partition(client, keys, topic, group, p) for p in range(partitions)])
    return GroupInfo(topic, group, int(epoch or 0), tuple(members), assignment, parts)


async def _partition(client: Client, keys: Keys, topic: str, group: str, p: int) -> PartitionGroupInfo:
    stream = keys.stream(topic, p)
    pipe = client.pipeline(transaction=False)
    pipe.get(keys.owner(topic, p, group))
    pipe.execute_command("XINFO", "GROUPS", stream)
    pipe.execute_command("XPENDING", stream, group)
    owner, groups, pending = await pipe.execute(raise_on_error=False)
    info = _find_group(groups, group)
    if info is None:
        return PartitionGroupInfo(p, _owner(owner), 0, None, None)
    count = int(pending[0]) if isinstance(pending, list | tuple) and pending else 0
    if isinstance(pending, dict):
        count = int(pending.get("pending", 0))
    last = _text(info.get("last-delivered-id"))
    lag = await partition_lag(client, stream, info)
    return PartitionGroupInfo(p, _owner(owner), count, lag, last)


async def partition_lag(client: Client, stream: str, info: dict[str, Any]) -> int:
    """Entries not yet delivered to the group: XINFO's ``lag`` on Redis 7+, else counted."""
    lag = info.get("lag")
    if lag is not None:
        return int(lag)
    # Redis 6.2, or lag unknown after an AOF reload / XDEL: count what comes after
    # the group's last-delivered id, a page at a time.
    last = _text(info.get("last-delivered-id")) or "0-0"
    total = 0
    start = f"({last}"
    while True:
        page: list[Any] = list(await client.xrange(stream, start, "+", count=LAG_PAGE) or [])
        total += len(page)
        if len(page) < LAG_PAGE:
            return total
        start = f"({_text(page[-1][0])}"


def _find_group(groups: Any, group: str) -> dict[str, Any] | None:
    if isinstance(groups, Exception) or not groups:
        return None
    for g in groups:
        d = {_text(k): v for k, v in (g.items() if isinstance(g, dict) else zip(g[::2], g[1::2], strict=True))}
        if _text(d.get("name")) == group:
            return d
    return None


def _owner(raw: object) -> str | None:
    return None if raw is None or isinstance(raw, Exception) else _text(raw).partition("|")[0]


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else "" if v is None else str(v)


async def describe_share_group(
    client: Client, keys: Keys, topic: str, group: str, partitions: int, limit: int
) -> ShareGroupInfo | None:
    """Members, messages in flight (at most ``limit`` per partition, oldest first) and lag
    of share group ``group``; None if it exists on no partition (docs/guides/share-groups.md)."""
    rgroup, released = share_group_name(group), SHARE_RELEASED
    found = False
    available = 0  # released, waiting for a member to acquire them
    members: dict[str, tuple[int, int]] = {}  # member -> (in flight, least idle ms)
    in_flight: list[InFlightMessage] = []
    lag = 0
    for p in range(partitions):
        stream = keys.stream(topic, p)
        pipe = client.pipeline(transaction=False)
        pipe.xinfo_groups(stream)
        pipe.xinfo_consumers(stream, rgroup)
        pipe.xpending_range(stream, rgroup, min="-", max="+", count=limit)
        groups, consumers, pending = await pipe.execute(raise_on_error=False)
        info = _find_group(groups, rgroup)
        if info is None:
            continue
        found = True
        lag += await partition_lag(client, stream, info)
        for c in consumers if isinstance(consumers, list) else []:
            name = _text(c.get("name"))
            if name == released:
                continue
            held, idle = members.get(name, (0, 1 << 62))
            members[name] = (held + int(c.get("pending", 0)), min(idle, int(c.get("idle", 0))))
        for e in pending if isinstance(pending, list) else []:
            if _text(e["consumer"]) == released:
                available += 1
                continue
            in_flight.append(InFlightMessage(p, _text(e["message_id"]), _text(e["consumer"]),
                                             int(e["times_delivered"]), int(e["time_since_delivered"])))
    if not found:
        return None
    return ShareGroupInfo(topic, group, tuple(ShareMemberInfo(m, n, idle) for m, (n, idle) in sorted(members.items())),
                          tuple(in_flight), available, lag)
