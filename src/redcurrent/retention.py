"""Retention by hand: trimming a partition, never past what a group still needs.

``Admin.trim`` runs here. A topic's own retention (``maxlen``, ``retention_ms``) is applied
by the produce script as it writes; this is the operator's trim, which with ``safe``
stops at the oldest entry any group has pending or not yet read.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from .connection import Client
from .groups import _find_group, _text
from .offsets import id_key, next_id

__all__ = ["safe_floor", "trim_partition"]


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


