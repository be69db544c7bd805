"""Per owned partition: fenced fetch, takeover, in-order dispatch, idle wait.

One :class:`PartitionFetcher` task runs per partition this consumer owns. It reads
with the fenced ``fetch`` script (which also acks the previous batch: one round trip
per batch), hands the batch to the consumer's dispatcher in stream order, and when
the partition is drained waits with a read-only blocking XREAD, which changes no
group state and so needs no fence.

Read order after a claim (design §9): the claim script moved the group's pending
entries to us, so we first re-read our own pending list (from ``0``), then new
entries (``>``). After a fetch that failed without a reply we re-read our own
pending list after the last entry we handled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import scripts
from .errors import DecodeError, FencedError, translate
from .serde import REQUEUE_HEADER, Deserializer, decode_entry
from .structs import Message, TopicPartition

if TYPE_CHECKING:
    from .connection import Client
    from .deadletter import DeadLetterWriter

__all__ = ["Credits", "FetchContext", "PartitionFetcher"]

log = logging.getLogger(__name__)

STRIDE = 8
CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)
_FETCH = scripts.script("fetch")
_RELEASE = scripts.script("release")
_NACK = scripts.script("nack")

# A dispatcher handles one fetched batch in order; it returns the ids it handed out
# (in order) and whether the fetcher should ack them (False: the user acks manually).
Dispatcher = Callable[["PartitionFetcher", list[Message]], Awaitable[tuple[list[str], bool]]]


class Credits:
    """Bounds messages fetched and not yet acked, over all partitions (max_in_flight)."""

    def __init__(self, total: int) -> None:
        self.free = total
        self._event = asyncio.Event()
        self._event.set()

    async def take(self, want: int) -> int:
        while self.free <= 0:
            self._event.clear()
            await self._event.wait()
        got = min(want, self.free)
        self.free -= got
        return got

    def give(self, n: int) -> None:
        if n:
            self.free += n
            self._event.set()


@dataclass(slots=True)
class FetchContext:
    """What every partition fetcher of one consumer shares."""

    client: Client
    group: str
    consumer: str
    token: str
    batch_size: int
    block_ms: int
    fetch_timeout: float
    credits: Credits
    deserializer: Deserializer | None
    lease_valid: Callable[[], bool]
    on_fenced: Callable[[TopicPartition], None]
    dead_letters: DeadLetterWriter
    stats: dict[str, int]
    dispatcher: Dispatcher | None = None
    dispatcher_set: asyncio.Event = field(default_factory=asyncio.Event)


class PartitionFetcher:
    """Fetches and dispatches one partition (private to the consumer)."""

    def __init__(self, ctx: FetchContext, tp: TopicPartition, stream: str, owner: str) -> None:
        self.ctx = ctx
        self.tp = tp
        self.stream = stream
        self.owner = owner
        self.acks: list[str] = []  # handled, to ack on the next fetch or at release
        self.last_handled = "0"
        self._read_id = "0"
        self._idle_at: Any = None  # the last entry id when drained; None while there is work
        self._stopping = False
        self._idle = False
        self._busy = False
        self.stop_event = asyncio.Event()
        self.raw: dict[str, list[Any]] = {}  # entry id -> fetch slots, for dead letters
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._task: asyncio.Task[None] | None = None
        self.fenced = False

    def __repr__(self) -> str:
        return f"<PartitionFetcher {self.tp.topic}[{self.tp.partition}]>"

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def start(self) -> None:
        self._task = asyncio.create_task(
            self._run(), name=f"redcurrent-fetch-{self.tp.topic}-{self.tp.partition}"
        )

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    def pause(self) -> None:
        self._resumed.clear()

    def resume(self) -> None:
        self._resumed.set()

    # -- stopping --
    async def stop(self, timeout: float) -> None:
        """Stop fetching; let the message in hand finish (bounded by ``timeout``)."""
        self._stopping = True
        self.stop_event.set()
        task = self._task
        if task is None or task.done():
            return
        while not self._busy and not task.done():
            # Nothing in hand: cancel now, and again if a library swallowed it.
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            log.warning("%r: in-flight handling exceeded %.1fs; cancelling it", self, timeout)
        while not task.done():  # a cancellation can be swallowed: insist
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)

    def abort(self) -> None:
        """Drop everything without acking (fenced or lost lease)."""
        self._stopping = True
        self.stop_event.set()
        self.acks.clear()
        if self._task is not None:
            self._task.cancel()

    async def release(self) -> bool:
        """Ack what was handled and give the partition up. False if we were fenced."""
        args: list[str] = [self.ctx.token, self.ctx.group, self.ctx.consumer, *self.acks]
        reply = await scripts.run(self.ctx.client, _RELEASE, [self.stream, self.owner], args)
        released = bool(reply[0] == b"OK")
        self.acks.clear()
        return released

    async def note_attempt(self, entry_id: str, attempts: int) -> None:
        """Persist a failed attempt in the pending entry's delivery count (fenced)."""
        args: list[str | int] = [self.ctx.token, self.ctx.group, self.ctx.consumer, entry_id, attempts]
        reply = await scripts.run(self.ctx.client, _NACK, [self.stream, self.owner], args)
        if reply == b"FENCED":
            raise FencedError(f"partition {self.tp.topic}[{self.tp.partition}] is no longer owned")

    async def ack_now(self, ids: list[str]) -> None:
        """Ack ``ids`` at once (manual acks). Raises FencedError if not the owner."""
        reply = await self._fetch_call(0, ">", ids)
        if reply[0] == b"FENCED":
            raise FencedError(f"partition {self.tp.topic}[{self.tp.partition}] is no longer owned")

    # -- the loop --
    async def _run(self) -> None:
        try:
            await self.ctx.dispatcher_set.wait()
            while not self._stopping:
                await self._step()
        except asyncio.CancelledError:
            if not self._stopping:
                raise
        except FencedError:
            self.fenced = True
            self.ctx.on_fenced(self.tp)

    async def _step(self) -> None:
        if not self._resumed.is_set():
            self._idle = True
            await self._resumed.wait()
            self._idle = False
            return
        if not self.ctx.lease_valid():
            # Design §3: past our local lease we hand nothing out; the coordinator
            # will either refresh the lease or take the partition from us.
            await asyncio.sleep(0.05)
            self._read_id = self.last_handled
            self._idle_at = None
            return
        if self._idle_at is not None and not self.acks:
            # Drained: only the read-only blocking read until something new arrives,
            # so an idle partition costs Redis one XREAD per block period, nothing more.
            if await self._wait(self._idle_at):
                self._idle_at = None
            return  # the next step re-checks pause, lease and stop before fetching
        want = await self.ctx.credits.take(self.ctx.batch_size)
        try:
            reply = await self._fetch(want)
        except BaseException:
            self.ctx.credits.give(want)
            raise
        if reply is None:
            self.ctx.credits.give(want)
            return
        n = (len(reply) - 2) // STRIDE
        self.ctx.credits.give(want - n)
        if n == 0:
            if self._read_id != ">":
                self._read_id = ">"
            else:
                self._idle_at = reply[1]
            return
        await self._dispatch(reply, n)

    async def _fetch(self, count: int) -> list[Any] | None:
        acks = self.acks
        self.acks = []
        try:
            reply = await self._fetch_call(count, self._read_id, acks)
        except CONNECTION_ERRORS as exc:
            # Ambiguous: Redis may have run the script. Keep the acks (XACK is
            # idempotent) and re-read our own pending list after what we handled.
            self.acks = acks + self.acks
            self._read_id = self.last_handled
            self.ctx.stats["fetch_errors"] = self.ctx.stats.get("fetch_errors", 0) + 1
            log.warning("%r: fetch failed (%s); re-reading own pending entries", self, translate(exc, "fetch"))
            await asyncio.sleep(0.1)
            return None
        status = reply[0]
        if status == b"OK":
            return list(reply)
        if status == b"FENCED":
            raise FencedError(f"{self.tp} fenced")
        if status == b"NOGROUP":
            await self._recreate_group()
            self.acks = acks + self.acks
            return None
        raise RuntimeError(f"unexpected fetch reply {status!r}")

    async def _fetch_call(self, count: int, read_id: str, acks: list[str]) -> Any:
        c = self.ctx
        async with asyncio.timeout(c.fetch_timeout):
            return await scripts.run(
                c.client, _FETCH, [self.stream, self.owner],
                [c.token, c.group, c.consumer, count, read_id, *acks],
            )

    async def _recreate_group(self) -> None:
        # Design §8: the group vanished (Redis restarted empty or the key was
        # deleted). Recreate it at 0 (at-least-once), say so loudly, never crash-loop.
        log.error("%r: consumer group %r vanished; recreating it at 0", self, self.ctx.group)
        self.ctx.stats["groups_recreated"] = self.ctx.stats.get("groups_recreated", 0) + 1
        try:
            await self.ctx.client.execute_command(
                "XGROUP", "CREATE", self.stream, self.ctx.group, "0", "MKSTREAM"
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._read_id = "0"
        await asyncio.sleep(0.05)

    async def _wait(self, last_id: Any) -> bool:
        """Block (read-only XREAD) until an entry newer than ``last_id`` arrives.

        True when there is something to fetch (or the wait failed: fetch to find out)."""
        self._idle = True
        try:
            async with asyncio.timeout(self.ctx.block_ms / 1000 + self.ctx.fetch_timeout):
                found = await self.ctx.client.xread({self.stream: last_id}, count=1, block=self.ctx.block_ms)
            return bool(found)
        except CONNECTION_ERRORS:
            await asyncio.sleep(0.1)
            return True
        finally:
            self._idle = False

    async def _dispatch(self, reply: list[Any], n: int) -> None:
        c = self.ctx
        topic, partition = self.tp.topic, self.tp.partition
        messages: list[Message] = []
        raw: dict[str, list[Any]] = {}
        now_ms = int(time.time() * 1000)
        for i in range(2, 2 + n * STRIDE, STRIDE):
            slots = reply[i : i + STRIDE]
            try:
                msg = decode_entry(topic, partition, slots, c.deserializer)
            except DecodeError as exc:
                await self._poison(slots, str(exc))
                continue
            if msg.expires_at is not None and msg.expires_at <= now_ms:
                await self._expired(slots, msg)
                continue
            if msg.headers and msg.headers.get(REQUEUE_HEADER, c.group) != c.group:
                # A dead letter requeued for another group: ack it, never handle it.
                c.stats["requeue_skipped"] = c.stats.get("requeue_skipped", 0) + 1
                self.acks.append(msg.id)
                c.credits.give(1)
                continue
            messages.append(msg)
            raw[msg.id] = slots
        self.raw = raw
        if self._read_id != ">":
            last = reply[2 + (n - 1) * STRIDE]
            self._read_id = last.decode() if isinstance(last, bytes) else str(last)
        if not messages:
            return
        if not c.lease_valid():
            c.credits.give(len(messages))
            self._read_id = self.last_handled
            return
        self._busy = True
        try:
            assert c.dispatcher is not None
            done, ack = await c.dispatcher(self, messages)
        finally:
            self._busy = False
        if ack:
            self.acks.extend(done)
        c.credits.give(len(messages))
        if done:
            self.last_handled = done[-1]
        if len(done) < len(messages) and not self._stopping:
            # Stopped early (lease lost): the rest is still pending under our name.
            self._read_id = self.last_handled

    async def _poison(self, slots: list[Any], reason: str) -> None:
        c = self.ctx
        kind = "trimmed" if reason == "trimmed" else "decode_failures"
        c.stats[kind] = c.stats.get(kind, 0) + 1
        entry_id = slots[0].decode()
        log.error("%r: entry %s cannot be handled (%s); dead-lettering it", self, entry_id, reason)
        await c.dead_letters.write_raw(self.tp, self.stream, entry_id, slots, reason, int(slots[1]))
        self.acks.append(entry_id)
        c.credits.give(1)

    async def _expired(self, slots: list[Any], msg: Message) -> None:
        c = self.ctx
        c.stats["expired"] = c.stats.get("expired", 0) + 1
        if c.dead_letters.dead_letter_expired(self.tp.topic):
            await c.dead_letters.write_raw(self.tp, self.stream, msg.id, slots, "expired", msg.attempts)
        self.acks.append(msg.id)
        c.credits.give(1)
