"""``redcurrent produce``: JSON lines (or raw lines) from stdin to a topic, like kcat -P."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
import threading
from collections import Counter
from collections.abc import Callable

import click
import orjson
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from redcurrent import Producer, Record, UnknownTopicError

from .context import json_option, pass_env
from .env import Env
from .output import echo_json, err_console

__all__ = ["produce"]

CHUNK_BYTES = 1 << 16
SEND_BATCH = 1000
QUEUED_CHUNKS = 8


def parse_headers(items: tuple[str, ...]) -> dict[str, str]:
    headers = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--header")
        headers[name] = value
    return headers


class StdinChunks:
    """Complete lines from stdin, read by a thread, handed to the loop a chunk at a time.

    ``os.read`` returns whatever is available, so typed lines go out at once while a big
    file still travels in 64 KB chunks (one ``send_batch`` each). At most QUEUED_CHUNKS
    wait: a slow server slows the reader instead of filling memory.

    The thread never makes a coroutine: one made for a loop that closes before running
    it (the command failed on a bad line while the thread was still reading) is never
    awaited, and Python prints a RuntimeWarning on the way out.
    """

    def __init__(
        self,
        read: Callable[[int], bytes],
        loop: asyncio.AbstractEventLoop,
        on_bytes: Callable[[int], None],
    ) -> None:
        self._read = read
        self._loop = loop
        self._on_bytes = on_bytes
        self._queue: asyncio.Queue[list[bytes] | BaseException | None] = asyncio.Queue()
        self._slots = threading.Semaphore(QUEUED_CHUNKS)  # the bound, taken on the thread
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redcurrent-stdin", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """The command is over: the thread stops handing out chunks."""
        self._closed.set()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    async def get(self) -> list[bytes] | BaseException | None:
        """The next lines, a read error, or None at the end of stdin."""
        item = await self._queue.get()
        self._slots.release()
        return item

    def _put(self, item: list[bytes] | BaseException | None) -> None:
        while not self._slots.acquire(timeout=0.1):
            if self._closed.is_set():
                raise EOFError("the command is over")
        # RuntimeError once the loop is closed; nothing is left behind to await.
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _run(self) -> None:
        try:
            rest = b""
            while chunk := self._read(CHUNK_BYTES):
                self._loop.call_soon_threadsafe(self._on_bytes, len(chunk))
                *lines, rest = (rest + chunk).split(b"\n")
                if lines:
                    self._put(lines)
            self._put([rest] if rest else [])
            self._put(None)
        except BaseException as exc:
            # Either reading failed (hand it to the command) or the command is over and
            # its loop closed (nobody is listening): never print from this thread.
            if not self._closed.is_set():
                with contextlib.suppress(BaseException):
                    self._put(exc)


def _stdin_reader() -> tuple[Callable[[int], bytes], int | None]:
    """A read(n) for stdin and its size when it is a regular file (for the progress bar)."""
    try:
        fd = sys.stdin.fileno()
    except (OSError, ValueError, AttributeError):  # replaced stdin (tests): no descriptor
        return sys.stdin.buffer.read, None
    return (lambda n: os.read(fd, n)), _file_size(fd)


class Encoder:
    """Line -> Record, per the options; raises ClickException naming the line."""

    def __init__(
        self, raw: bool, key: str | None, key_field: str | None, headers: dict[str, str]
    ) -> None:
        self.raw, self.key, self.key_field, self.headers = raw, key, key_field, headers or None

    def record(self, line: bytes, lineno: int) -> Record:
        if self.raw:
            return Record(line, key=self.key, headers=self.headers)
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise click.ClickException(
                f"line {lineno}: not valid JSON ({exc}); use --raw for plain text"
            )
        key = self.key
        if self.key_field is not None:
            if not isinstance(value, dict) or self.key_field not in value:
                raise click.ClickException(
                    f"line {lineno}: no field {self.key_field!r} for --key-field"
                )
            found = value[self.key_field]
            key = found if isinstance(found, str) else orjson.dumps(found).decode()
        return Record(value, key=key, headers=self.headers)


def _file_size(fd: int) -> int | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return max(0, st.st_size - os.lseek(fd, 0, os.SEEK_CUR))


@click.command(short_help="Send stdin lines (JSON or raw) to a topic.")
@click.argument("topic")
@click.option("--key", "-k", metavar="K", help="Key of every message (picks the partition).")
@click.option("--key-field", metavar="F", help="Key from this field of each JSON object.")
@click.option(
    "--header", "-H", "headers", multiple=True, metavar="NAME=VALUE", help="Header; repeatable."
)
@click.option("--raw", is_flag=True, help="Send each line as raw bytes instead of parsing JSON.")
@json_option
@pass_env
def produce(
    env: Env,
    topic: str,
    key: str | None,
    key_field: str | None,
    headers: tuple[str, ...],
    raw: bool,
) -> None:
    """Send one message per line of stdin to TOPIC (JSON by default; blank lines are skipped).

    \b
    echo '{"id": 1, "customer": "c7"}' | redcurrent produce orders --key-field customer
    redcurrent produce logs --raw -H source=nginx < access.log
    """
    if key is not None and key_field is not None:
        raise click.UsageError("give --key or --key-field, not both")
    if raw and key_field is not None:
        raise click.UsageError("--key-field needs JSON input; it cannot be used with --raw")
    encoder = Encoder(raw, key, key_field, parse_headers(headers))
    counts: Counter[int] = Counter()
    ok = False
    try:
        env.run(_produce(env, topic, encoder, counts))
        ok = True
    except UnknownTopicError:
        raise click.ClickException(
            f"unknown topic {topic!r}: create it first with "
            f"'redcurrent topics create {topic} --partitions N'"
        )
    finally:
        if ok or counts:
            _summary(env, topic, counts)


def _summary(env: Env, topic: str, counts: Counter[int]) -> None:
    summary = {
        "topic": topic,
        "sent": sum(counts.values()),
        "partitions": {str(p): n for p, n in sorted(counts.items())},
    }
    if env.json:
        echo_json(summary)
    else:
        per = " ".join(f"{p}:{n}" for p, n in sorted(counts.items())) or "-"
        click.echo(f"sent {summary['sent']} messages to {topic} (per partition {per})", err=True)


async def _produce(env: Env, topic: str, encoder: Encoder, counts: Counter[int]) -> None:
    read, size = _stdin_reader()
    progress = Progress(
        TextColumn("producing"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err_console(),
        transient=True,
        disable=size is None or not sys.stderr.isatty(),
    )
    task = progress.add_task("stdin", total=size)
    reader = StdinChunks(read, asyncio.get_running_loop(), lambda n: progress.advance(task, n))
    async with Producer(env.url, namespace=env.namespace, auto_create_topics=False) as producer:
        await producer.partitions_for(topic)  # unknown topic: fail before reading anything
        reader.start()
        try:
            with progress:
                await _pump(producer, topic, reader, encoder, counts)
        finally:
            reader.close()


async def _pump(
    producer: Producer, topic: str, reader: StdinChunks, encoder: Encoder, counts: Counter[int]
) -> None:
    lineno = 0
    while (chunk := await reader.get()) is not None:
        if isinstance(chunk, BaseException):
            raise chunk
        records: list[Record] = []
        error: click.ClickException | None = None
        for line in chunk:
            lineno += 1
            line = line.rstrip(b"\r")
            if not line.strip():
                continue
            try:
                records.append(encoder.record(line, lineno))
            except click.ClickException as exc:
                error = exc
                break
        for i in range(0, len(records), SEND_BATCH):  # what came before a bad line is sent
            for meta in await producer.send_batch(topic, records[i : i + SEND_BATCH]):
                counts[meta.partition] += 1
        if error is not None:
            raise error
