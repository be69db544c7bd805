"""Output helpers: JSON for scripts (``--json``), Rich tables for people."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence

import click
from rich.console import Console
from rich.table import Table

__all__ = ["ago", "console", "dumps", "echo_json", "err_console", "table", "text"]

NON_TTY_WIDTH = 160


def text(raw: bytes | str | None) -> str | None:
    """Bytes as UTF-8 text when they are, else ``base64:…`` (keys and values may be binary)."""
    if raw is None or isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(raw).decode("ascii")


def _default(obj: object) -> object:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, bytes | bytearray):
        return text(bytes(obj))
    if isinstance(obj, dt.datetime):
        return obj.isoformat()
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(f"cannot serialize {type(obj).__name__} as JSON")


def dumps(obj: object) -> str:
    return json.dumps(obj, default=_default, ensure_ascii=False, separators=(",", ":"))


def echo_json(obj: object) -> None:
    sys.stdout.write(dumps(obj) + "\n")
    sys.stdout.flush()


def outcome(as_json: bool, payload: Mapping[str, object], line: str) -> None:
    """A command's result: ``payload`` as JSON with ``--json``, else one line of text."""
    if as_json:
        echo_json(payload)
    else:
        click.echo(line)


def console() -> Console:
    """stdout console; a fixed wide width when not a terminal, so piped tables do not fold."""
    return Console(width=None if sys.stdout.isatty() else NON_TTY_WIDTH, highlight=False)


def err_console() -> Console:
    return Console(
        stderr=True, width=None if sys.stderr.isatty() else NON_TTY_WIDTH, highlight=False
    )


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    for name in columns:
        numeric = name in {
            "partitions",
            "messages",
            "length",
            "pending",
            "lag",
            "epoch",
            "members",
            "attempts",
            "partition",
            "maxlen",
            "retention_ms",
            "pid",
            "msg/s",
            "handled",
        }
        t.add_column(name, justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        t.add_row(*("-" if v is None else str(v) for v in row))
    return t


def ago(ms: int) -> str:
    """'1.2s ago' for a wall-clock time in ms since the epoch (0 = never)."""
    if not ms:
        return "-"
    return f"{max(0.0, time.time() - ms / 1000):.1f}s ago"
