"""Parameter types shared by commands: a bad value is a usage error (exit 2), like click's own."""

from __future__ import annotations

import math
from urllib.parse import unquote, urlsplit

import click

__all__ = ["check_entry_id", "check_entry_ids", "check_idle_timeout", "check_url", "entry_id"]

MAX_ID_PART = 2**64 - 1


def entry_id(text: str, ctx: click.Context | None = None, param: click.Parameter | None = None) -> str:
    """A stream entry id, ``ms-seq`` or ``ms`` (read as ``ms-0``), returned as ``ms-seq``."""
    ms, sep, seq = text.partition("-")
    parts = [ms, seq] if sep else [ms]
    if not all(p.isascii() and p.isdigit() and int(p) <= MAX_ID_PART for p in parts):
        raise click.BadParameter(
            f"{text!r} is not a stream entry id (like 1700000000000-0)", ctx, param
        )
    return f"{int(ms)}-{int(seq or 0)}"


def check_entry_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Callback of an option that takes one entry id."""
    return None if value is None else entry_id(value, ctx, param)


def check_entry_ids(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    """Callback of an argument that takes entry ids (``nargs=-1``)."""
    return tuple(entry_id(v, ctx, param) for v in value)


def check_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse what redis-py would silently read otherwise: ``redis://host:6379/abc`` is db 0
    to redis-py, and the command would then work on the wrong database."""
    if not value:
        return value
    parts = urlsplit(value)
    if parts.scheme in ("redis", "rediss"):
        db = unquote(parts.path).replace("/", "")
        if db and not (db.isascii() and db.isdigit()):
            # Only the path is echoed: the URL may carry a password.
            raise click.BadParameter(
                f"the database after the port must be a number (like /0), got {parts.path!r}",
                ctx,
                param,
            )
    return value


def check_idle_timeout(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise click.BadParameter(
            f"must be a finite number of seconds >= 0, got {value!r}", ctx, param
        )
    return value
