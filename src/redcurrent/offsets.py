"""Offsets and retention: reset a group's position, trim partitions safely."""

from __future__ import annotations

import datetime as dt
from typing import Any

from redis.exceptions import ResponseError

from .connection import Client
from .errors import ConfigError
from .groups import _find_group, _text

__all__ = ["check_id", "id_before", "reset_partition", "safe_floor", "to_start_id", "trim_partition"]

MAX_SEQ = 18446744073709551615


def id_before(entry_id: str) -> str:
    """The greatest id below ``entry_id`` (so a read after it starts at ``entry_id``)."""
    ms_s, _, seq_s = entry_id.partition("-")
    ms, seq = int(ms_s), int(seq_s or 0)
    if seq > 0:
        return f"{ms}-{seq - 1}"
    return "0" if ms == 0 else f"{ms - 1}-{MAX_SEQ}"


def next_id(entry_id: str) -> str:
    """The smallest id above ``entry_id``: where a read that follows it starts.

    ``next_id("1700000000000-5") == "1700000000000-6"``; past the last sequence of a
    millisecond it moves to the next millisecond."""
    ms_s, _, seq_s = check_id(entry_id).partition("-")
    ms, seq = int(ms_s), int(seq_s or 0)
    if seq < MAX_SEQ:
        return f"{ms}-{seq + 1}"
    return f"{ms + 1}-0"


def id_key(entry_id: str) -> tuple[int, int]:
    """``entry_id`` as a (ms, seq) tuple, to compare ids in order."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def check_id(entry_id: object) -> str:
    """``entry_id`` if it is a valid stream id (``ms-seq``, both below 2**64), else ConfigError."""
    if not isinstance(entry_id, str):
        raise ConfigError(f"an entry id must be a str like 1700000000000-0, got {type(entry_id).__name__}")
    ms, sep, seq = entry_id.partition("-")
    if not (ms.isascii() and ms.isdigit()) or (sep and not (seq.isascii() and seq.isdigit())) \
            or int(ms) > MAX_SEQ or (sep and int(seq) > MAX_SEQ):
        raise ConfigError(f"not a stream entry id: {entry_id!r} (expected like 1700000000000-0)")
    return entry_id


def _valid_id(entry_id: str) -> str:
    check_id(entry_id)
    return entry_id if "-" in entry_id else f"{entry_id}-0"


def to_start_id(to: object) -> str:
    """Where the group's next read starts, as the id to set the group to.

    ``"earliest"`` replays everything, ``"latest"`` skips to the end, a
    ``datetime`` starts at the first entry at or after it, an id string starts at
    that entry (inclusive, as Kafka's --to-offset).
    """
    if to == "earliest":
        return "0"
    if to == "latest":
        return "$"
    if isinstance(to, dt.datetime):
        moment = to if to.tzinfo else to.replace(tzinfo=dt.UTC)
        return id_before(f"{max(0, int(moment.timestamp() * 1000))}-0")
    if isinstance(to, str):
        return id_before(_valid_id(to))
    raise ConfigError(f"to must be 'earliest', 'latest', a datetime or an entry id, got {to!r}")


async def reset_partition(client: Client, stream: str, group: str, start_id: str) -> int:
    """Ack what is pending (the reset discards in-flight state) and move the group. Returns pending acked."""
    acked = 0
    while True:
        pending = await client.xpending_range(stream, group, min="-", max="+", count=1000)
        if not pending:
            break
        ids = [p["message_id"] for p in pending]
        acked += await client.xack(stream, group, *ids)
    try:
        await client.execute_command("XGROUP", "SETID", stream, group, start_id)
    except ResponseError as exc:
        if "NOGROUP" not in str(exc) and "no such key" not in str(exc).lower():
            raise
        await client.execute_command("XGROUP", "CREATE", stream, group, start_id, "MKSTREAM")
    return acked


async def safe_floor(client: Client, stream: str) -> str | None:
    """The oldest entry id any group on ``stream`` still needs (pending or undelivered).

    None means no group exists: nothing to protect.
    """
    try:
        groups = await client.execute_command("XINFO", "GROUPS", stream)
    except ResponseError:
        return None
    if not groups:
        return None
    floor: str | None = None
    for g in groups:
        info = _find_group([g], _text(_name(g)))
        assert info is not None
        name = _text(info.get("name"))
        summary = await client.execute_command("XPENDING", stream, name)
        oldest = _oldest_pending(summary)
        need = oldest or next_id(_text(info.get("last-delivered-id")) or "0-0")
        if floor is None or id_key(need) < id_key(floor):
            floor = need
    return floor


async def trim_partition(client: Client, stream: str, min_id: str | None, maxlen: int | None,
                         floor: str | None, safe: bool) -> int:
    """Trim ``stream`` to ``min_id``/``maxlen``; with ``safe`` never past ``floor``. Returns entries removed."""
    target = min_id
    if maxlen is not None:
        tail: list[Any] = list(await client.xrevrange(stream, count=maxlen + 1) or [])
        if len(tail) > maxlen:
            cut = _text(tail[-2][0]) if maxlen > 0 else next_id(_text(tail[0][0]))
            target = cut if target is None or id_key(cut) > id_key(target) else target
    if safe:
        if floor is None and target is None:
            return 0
        if floor is not None and (target is None or id_key(target) > id_key(floor)):
            target = floor
    if target is None:
        return 0
    return int(await client.execute_command("XTRIM", stream, "MINID", target))


def _name(g: Any) -> Any:
    if isinstance(g, dict):
        return g.get("name", g.get(b"name"))
    return dict(zip(g[::2], g[1::2], strict=True)).get(b"name")


def _oldest_pending(summary: Any) -> str | None:
    if isinstance(summary, dict):
        count, oldest = summary.get("pending", 0), summary.get("min")
    else:
        count, oldest = summary[0], summary[1]
    return _text(oldest) if count and oldest else None


