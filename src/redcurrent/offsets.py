"""Offsets: entry-id arithmetic, and resetting a group's position on a partition."""

from __future__ import annotations

import datetime as dt

from redis.exceptions import ResponseError

from .connection import Client
from .errors import ConfigError

__all__ = ["check_id", "id_before", "id_key", "next_id", "reset_partition", "to_start_id"]

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
    """``entry_id`` as a (ms, seq) tuple, to compare ids in order:
    ``sorted(ids, key=id_key)``, ``heapq.merge(*reads, key=lambda m: id_key(m.id))``."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def id_ms(entry_id: str) -> int:
    """The time part of ``entry_id``: Redis's clock (ms since the epoch) when it was
    appended. (The per-message decode and the producer's results inline this slice.)"""
    return int(entry_id.partition("-")[0])


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
