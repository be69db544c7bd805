"""``redcurrent consume``: print a topic's messages like kcat -C.

Two modes:

* ``--group G``: a real member of group G (it joins, gets partitions, acks what it
  prints, leaves on exit). ``--from-beginning`` only matters when G is new, as in Kafka.
* no group: a read-only reader. It reads the partition streams with XRANGE and
  decodes entries by the documented format (docs/message-format.md): no group is
  created, nothing is acked, so it never moves anyone's position nor blocks a safe trim.
"""

from __future__ import annotations

import asyncio
import heapq
import os
import sys
from collections.abc import Mapping
from typing import Any

import click
import orjson

from redcurrent import Admin, Consumer, Message
from redcurrent.keys import Keys

from .app import json_option, pass_env
from .env import Env
from .output import dumps, text
from .params import check_idle_timeout

__all__ = ["consume", "decode_fields"]

PAGE = 500
POLL_S = 0.2
REFRESH_S = 2.0


def decode_fields(
    topic: str, partition: int, entry_id: str, fields: Mapping[Any, Any]
) -> dict[str, Any]:
    """A printable message from one stream entry (format 1; anything else is shown raw)."""
    f = {k if isinstance(k, bytes) else str(k).encode(): v for k, v in fields.items()}
    out: dict[str, Any] = {
        "topic": topic,
        "partition": partition,
        "id": entry_id,
        "timestamp": int(entry_id.partition("-")[0]),
        "key": None,
        "headers": {},
    }
    fmt = f.get(b"f", b"")
    if len(fmt) != 3 or fmt[:1] != b"1":
        out["value"] = {text(k): text(v) for k, v in f.items()}
        out["error"] = "not a redcurrent format-1 entry"
        return out
    try:
        value = f.get(b"v", b"")
        out["value"] = orjson.loads(value) if fmt[1:2] == b"j" else value
        k = f.get(b"k")
        out["key"] = (
            None if fmt[2:3] == b"n" or k is None else k.decode() if fmt[2:3] == b"s" else k
        )
        out["headers"] = orjson.loads(f[b"h"]) if f.get(b"h") else {}
        if f.get(b"t"):
            out["timestamp"] = int(f[b"t"])
        if f.get(b"x"):
            out["expires_at"] = int(f[b"x"])
    except (ValueError, UnicodeDecodeError) as exc:
        out["value"] = f.get(b"v")
        out["error"] = f"undecodable entry: {exc}"
    return out


def message_dict(msg: Message) -> dict[str, Any]:
    return {
        "topic": msg.topic,
        "partition": msg.partition,
        "id": msg.id,
        "timestamp": msg.timestamp,
        "key": msg.key,
        "headers": dict(msg.headers),
        "value": msg.value,
    }


def line(m: dict[str, Any], json_mode: bool) -> str:
    """One line per message: JSON, or tab-separated partition, id, key, headers, value."""
    if json_mode:
        return dumps(m)
    value = m["value"]
    shown = text(value) if isinstance(value, bytes) else dumps(value)
    headers = ",".join(f"{k}={v}" for k, v in m["headers"].items()) or "-"
    key = text(m["key"]) if m["key"] is not None else "-"
    return f"{m['partition']}\t{m['id']}\t{key}\t{headers}\t{shown}"


@click.command(short_help="Print a topic's messages, like kcat -C.")
@click.argument("topic")
@click.option(
    "--group", "-g", metavar="G", help="Consume as a member of group G (acks what it prints)."
)
@click.option(
    "--from-beginning", is_flag=True, help="Start at the oldest entry (new groups / no group)."
)
@click.option(
    "--max", "max_messages", type=click.IntRange(min=1), metavar="N", help="Stop after N messages."
)
@click.option("--follow", "-f", is_flag=True, help="Keep waiting for new messages (Ctrl-C stops).")
@click.option(
    "--idle-timeout",
    type=float,
    default=2.0,
    callback=check_idle_timeout,
    show_default=True,
    help="With --group and without --follow: stop after this long without a message.",
)
@json_option
@pass_env
def consume(
    env: Env,
    topic: str,
    group: str | None,
    from_beginning: bool,
    max_messages: int | None,
    follow: bool,
    idle_timeout: float,
) -> None:
    """Print TOPIC's messages: partition, id, key, headers, value (one JSON object each with --json).

    Without --group nothing is created or acked: it reads from the end (or the oldest
    entry with --from-beginning) and, without --follow, stops at the end.
    """
    out = Printer(env.json, max_messages)
    ok = False
    try:
        if group is None:
            env.run(_read(env, topic, from_beginning, follow, out))
        else:
            env.run(_as_member(env, topic, group, from_beginning, follow, idle_timeout, out))
        ok = True
    finally:
        if not env.json and (ok or out.count):  # a failure is the error line alone
            click.echo(f"consumed {out.count} messages", err=True)


class Printer:
    """Writes messages to stdout; ``full`` once ``--max`` is reached or the reader went away."""

    def __init__(self, json_mode: bool, limit: int | None) -> None:
        self.json, self.limit, self.count = json_mode, limit, 0
        self.closed = False

    @property
    def full(self) -> bool:
        return self.closed or (self.limit is not None and self.count >= self.limit)

    def emit(self, m: dict[str, Any]) -> None:
        try:
            sys.stdout.write(line(m, self.json) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:  # `consume … | head`: stop quietly, like cat does
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            self.closed = True
            return
        self.count += 1


async def _as_member(
    env: Env,
    topic: str,
    group: str,
    from_beginning: bool,
    follow: bool,
    idle_timeout: float,
    out: Printer,
) -> None:
    async with env.admin() as admin:
        await admin.describe_topic(topic)  # unknown topic: one clear error, no waiting
        consumer = Consumer(
            topic,
            group=group,
            url=env.url,
            namespace=env.namespace,
            start="earliest" if from_beginning else "latest",
            heartbeat_interval=0.5,
        )
        async with consumer:  # leaving acks the last message printed
            idle = 0.0
            while not out.full:
                try:
                    msg = await asyncio.wait_for(consumer.getone(), POLL_S * 2)
                except TimeoutError:
                    idle += POLL_S * 2
                    if not follow and (idle >= idle_timeout or await _caught_up(admin, consumer)):
                        return
                    continue
                idle = 0.0
                out.emit(message_dict(msg))


async def _caught_up(admin: Admin, consumer: Consumer) -> bool:
    """Every partition this member owns has nothing left to deliver."""
    mine = {tp.partition for tp in consumer.assignment()}
    if not mine:
        return False
    lag = await admin.lag(consumer.topics[0], consumer.group)
    return all(lag.get(p, 0) == 0 for p in mine)


async def _read(env: Env, topic: str, from_beginning: bool, follow: bool, out: Printer) -> None:
    async with env.admin() as admin:
        info = await admin.describe_topic(topic)
        reader = Reader(admin, Keys(env.namespace), topic)
        for p in info.partition_info:
            reader.add(p.partition, None if from_beginning else p.last_id, p.last_id)
        await reader.drain(out)
        if not follow or out.full:
            return
        reader.open_ended()
        loop = asyncio.get_running_loop()
        refreshed = loop.time()
        while not out.full:
            if not await reader.drain(out):
                await asyncio.sleep(POLL_S)
            if loop.time() - refreshed > REFRESH_S:  # the topic may have grown
                refreshed = loop.time()
                grown = await admin.describe_topic(topic)
                for p in grown.partition_info[len(reader.positions) :]:
                    reader.add(p.partition, None, None, open_=True)


class Reader:
    """Per partition: position (last id printed; None: from the start) and end (the last id
    to read; None: no end; "": nothing to read). Reads pages of all partitions in one pipeline."""

    def __init__(self, admin: Admin, keys: Keys, topic: str) -> None:
        self.client = admin.connection.client
        self.keys, self.topic = keys, topic
        self.positions: list[str | None] = []
        self.ends: list[str | None] = []

    def add(
        self, partition: int, after: str | None, end: str | None, *, open_: bool = False
    ) -> None:
        """Read ``partition`` after ``after`` (None: from its start) up to ``end`` inclusive
        (None: the partition was empty, nothing to read), or without end when ``open_``."""
        assert partition == len(self.positions)
        self.positions.append(after)
        self.ends.append(None if open_ else (end or ""))

    def open_ended(self) -> None:
        self.ends = [None] * len(self.ends)

    async def drain(self, out: Printer) -> int:
        """Print everything up to each partition's end, merged in id order. Returns how many."""
        printed = 0
        while not out.full:
            pages = await self._pages()
            entries = list(heapq.merge(*pages, key=lambda e: e[0]))
            for _, partition, eid, fields in entries:
                if out.full:
                    return printed
                out.emit(decode_fields(self.topic, partition, eid, fields))
                self.positions[partition] = eid
                printed += 1
            if not any(len(p) == PAGE for p in pages):
                return printed
        return printed

    async def _pages(self) -> list[list[tuple[tuple[int, int], int, str, Any]]]:
        pipe = self.client.pipeline(transaction=False)
        todo = []
        for p, (after, end) in enumerate(zip(self.positions, self.ends, strict=True)):
            if end is not None and (end == "" or (after is not None and _key(after) >= _key(end))):
                continue  # an empty partition at start, or read up to its end already
            pipe.xrange(
                self.keys.stream(self.topic, p),
                f"({after}" if after else "-",
                end or "+",
                count=PAGE,
            )
            todo.append(p)
        if not todo:
            return []
        pages = []
        for p, raw in zip(todo, await pipe.execute(), strict=True):
            page = []
            for eid_raw, fields in raw or []:
                eid = text(eid_raw) or ""
                page.append((_key(eid), p, eid, fields))
            pages.append(page)
        return pages


def _key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
