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
from typing import Any

import click

from redcurrent import Admin, Consumer, Message, id_key, next_id

from .context import json_option, pass_env
from .env import Env
from .output import dumps, text
from .params import check_idle_timeout

__all__ = ["consume"]

DECODE_ERROR = "rc-decode-error"

PAGE = 500
POLL_S = 0.2
REFRESH_S = 2.0


def message_dict(msg: Message) -> dict[str, Any]:
    out = {
        "topic": msg.topic,
        "partition": msg.partition,
        "id": msg.id,
        "timestamp": msg.timestamp,
        "key": msg.key,
        "headers": dict(msg.headers),
        "value": msg.value,
    }
    if msg.expires_at is not None:
        out["expires_at"] = msg.expires_at
    problem = out["headers"].pop(DECODE_ERROR, None)  # read_partition's mark on an undecodable entry
    if problem is not None:
        out["error"] = problem
    return out


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
        reader = Reader(admin, topic)
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
    to read; None: no end; "": nothing to read). Reads a page of every partition at once
    (``Admin.read_partition``: no group, nothing acked) and prints them merged in id order."""

    def __init__(self, admin: Admin, topic: str) -> None:
        self.admin, self.topic = admin, topic
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
            pages, full = await self._pages()
            entries = heapq.merge(*pages, key=lambda m: id_key(m.id))
            for msg in entries:
                if out.full:
                    return printed
                out.emit(message_dict(msg))
                self.positions[msg.partition] = msg.id
                printed += 1
            if not full:
                return printed
        return printed

    async def _pages(self) -> tuple[list[list[Message]], bool]:
        """A page of each partition with something left to read, cut at its end; and
        whether any page was full (more may follow)."""
        todo = []
        for p, (after, end) in enumerate(zip(self.positions, self.ends, strict=True)):
            if end is not None and (end == "" or (after is not None and id_key(after) >= id_key(end))):
                continue  # an empty partition at start, or read up to its end already
            todo.append(p)
        reads = [
            self.admin.read_partition(self.topic, p, next_id(after) if (after := self.positions[p]) else "earliest",
                                      PAGE)
            for p in todo
        ]
        pages, full = [], False
        for p, page in zip(todo, await asyncio.gather(*reads), strict=True):
            full = full or len(page) == PAGE
            end = self.ends[p]
            if end is not None:
                page = [m for m in page if id_key(m.id) <= id_key(end)]
            pages.append(page)
        return pages, full
