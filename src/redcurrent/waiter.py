"""Waiting for new entries on idle partitions without a connection per partition.

A drained partition waits with a read-only blocking XREAD (it changes no group state,
so it needs no fence). One connection per idle partition does not scale: a consumer
that owns 1,024 partitions would hold 1,024 connections, exhaust the client's pool
and starve its own heartbeats. So on a single server one :class:`IdleWaiter` per
consumer blocks in ONE XREAD over every idle partition's stream, on one connection
of its own, and wakes the partitions that got something.

A partition that becomes idle while that read is blocked must join it: the waiter
reads a private "doorbell" stream too, and ringing it (one XADD) ends the blocked
read at once so the next read includes the newcomer. Nothing is missed meanwhile:
each stream is read from the last id its partition saw, not from ``$``.

A partition the read woke stays in the following reads, from the id that woke it,
until it waits again: at a steady trickle it drains exactly that entry and waits from
that id, which the read in flight already covers, so no ring and no second read are
needed (two round trips and a write fewer a message). If the stream grows again while
the partition is still busy, the read returns, the partition leaves the reads (so a
busy partition never makes the reads spin) and its next wait returns at once if what
it drained is older than what the read saw.

A partition that waits drained may also hand the waiter a :class:`Prefetch`: its fenced
">" read (with the acks it has not sent). The waiter pipelines one ``fetch_many`` script
call for those right behind the blocking XREAD, on the same connection, so the server
runs it the moment the read returns, and a partition the read woke gets its entries in
that one round trip instead of a wake and then a fetch. A prefetch that read nothing stays
registered (its acks were applied) and rides behind the next read; one that read entries,
or was refused, resolves the partition's wait with the reply (docs/architecture.md §8).

On a cluster a multi-stream XREAD fails with CROSSSLOT (every partition has its own
slot). On Redis 7+ a :class:`ShardWaiter` listens instead to the announcements the produce
script publishes on each partition's shard channel, one SSUBSCRIBE connection per node;
on Redis 6.2 each idle partition blocks on its own, bounded by the fetch context's
``wait_slots``, and partitions that find no free slot poll (docs/architecture.md §8).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import scripts
from .connection import refresh_slots

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster
    from redis.asyncio.cluster import ClusterNode
    from redis.asyncio.connection import AbstractConnection

    from .fetcher import Credits

__all__ = ["IdleWaiter", "Prefetch", "ShardWaiter"]

log = logging.getLogger(__name__)

_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError, ResponseError)
DOORBELL_TTL_MS = 60_000
# The most partitions one read fetches for: the script's cost grows with them (a
# consumer owning 1,000 idle partitions keeps one read; the rest fetch when woken).
PREFETCH_MAX = 32
PREFETCH_RING_S = 0.001  # how long a prefetch waits for the read in flight to end by itself
_FETCH_MANY = scripts.script("fetch_many")


class Prefetch:
    """A partition's fenced ">" read, run by the waiter right behind its idle read.

    Made by the partition (:class:`~redcurrent.fetcher.PartitionFetcher`), which moved
    its unsent ``acks`` into it. The waiter takes up to ``count`` fetch credits for it
    (``taken``) while it is on the wire, never more than half of them all for every
    prefetch together (a busy partition always finds some), and gives them back when it
    read nothing. Once its wait resolves: ``reply`` is the fetch reply (entries read, or
    FENCED/NOGROUP/AGAIN) and ``taken`` credits are the partition's to give back;
    ``error`` is set if the call failed (it may have run: read again); neither means it
    never ran (withdrawn or woken plainly): the acks are the partition's again.
    """

    __slots__ = ("acks", "count", "credits", "due", "error", "fut", "generation", "head", "keys", "linger",
                 "on_wire", "reply", "taken")

    def __init__(self, keys: tuple[str, str, str], head: tuple[str, str, str], acks: list[str],
                 count: int, credits: Credits, generation: int, linger: bool) -> None:
        self.keys = keys  # stream, owner key, gate key
        self.head = head  # token, group, consumer
        self.acks = acks
        self.count = count
        self.credits = credits
        self.taken = 0
        self.generation = generation
        self.linger = linger  # its acks wait at most ACK_LINGER_S for a read to carry them
        self.on_wire = False
        self.due = False  # resolve when the read returns, even if it read nothing (a stop)
        self.reply: list[Any] | None = None
        self.error: BaseException | None = None
        self.fut: asyncio.Future[bool] | None = None


class IdleWaiter:
    """One blocking XREAD over all idle partitions of a consumer (single server only)."""

    def __init__(self, client: Redis, doorbell: str, block_ms: int,
                 limit: asyncio.Semaphore | None = None) -> None:
        self._client = client
        self._limit = limit  # the consume path's bound on pooled connections in use
        self._bell = doorbell
        self._bell_id: bytes | str = "$"
        self._block_ms = block_ms
        self._idle: dict[str, tuple[bytes | str, asyncio.Future[bool]]] = {}
        self._reading: dict[str, bytes | str] = {}  # what the read in flight covers
        self._woken: dict[str, bytes | str] = {}  # woken, still read from the id that woke them
        self._grew: dict[str, bytes] = {}  # ... and seen to grow again before they waited
        self._prefetch: dict[str, Prefetch] = {}  # idle partitions' reads to run behind ours
        self._load = False  # fetch_many is not loaded (NOSCRIPT): load it after this read
        # Streams a prefetch read for after its partition stopped waiting for it (it was
        # on the wire): the entries are pending under our name, so the partition re-reads
        # its pending list before reading new entries again.
        self.dirty: set[str] = set()
        self._blocked = False
        self._read_seq = 0
        self._rang_for = -1  # the read a ring was already sent for
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: AbstractConnection | None = None
        self._ringing: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="redcurrent-idle-wait")

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._ringing) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        self._prefetch.clear()
        for _, fut in self._idle.values():
            if not fut.done():
                fut.set_result(True)
        self._idle.clear()
        self._woken.clear()
        self._grew.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            # A cancelled blocking read leaves the connection mid-reply: never reuse it.
            await conn.disconnect()
            await self._client.connection_pool.release(conn)
        try:
            await self._client.delete(self._bell)
        except _ERRORS:
            pass

    def wait(self, stream: str, last_id: bytes | str, prefetch: Prefetch | None = None) -> asyncio.Future[bool]:
        """A future that resolves True once ``stream`` has an entry after ``last_id``;
        with ``prefetch``, once that read ran and read something (or failed), or the
        partition was woken without it (see :class:`Prefetch`)."""
        self._woken.pop(stream, None)
        grew = self._grew.pop(stream, None)
        known = self._idle.get(stream)
        if known is not None and known[0] == last_id and not known[1].done() and prefetch is None:
            return known[1]
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if prefetch is not None:
            prefetch.fut = fut
        if grew is not None and _after(grew, last_id):
            fut.set_result(True)  # it grew past what the partition drained: fetch again
            return fut
        if known is not None and not known[1].done():
            self._prefetch.pop(stream, None)
            known[1].set_result(True)
        self._idle[stream] = (last_id, fut)
        self._changed.set()
        if self._blocked and self._reading.get(stream) != last_id:
            self._ring()
        elif prefetch is not None and self._blocked:
            # The read in flight covers the stream but does not carry its prefetch: at a
            # steady rate the read returns within a millisecond anyway, and the next
            # one carries it; at a slow trickle, end it soon so the next entry costs one
            # round trip, not a wake and a fetch.
            seq = self._read_seq
            asyncio.get_running_loop().call_later(PREFETCH_RING_S, self._ring_for, prefetch, seq)
        if prefetch is not None:
            self._prefetch[stream] = prefetch
        return fut

    def discard(self, stream: str, fut: asyncio.Future[bool]) -> None:
        """The partition stopped waiting (stopped, paused, revoked)."""
        known = self._idle.get(stream)
        if known is not None and known[1] is fut:
            del self._idle[stream]
            self._prefetch.pop(stream, None)
            if self._reading.get(stream) == known[0]:
                # Still ours, and likely to wait from there again soon (a wait of a few
                # ms, made while acks were unsent): the reads keep covering it meanwhile.
                self._woken[stream] = known[0]

    def withdraw(self, prefetch: Prefetch) -> bool:
        """Take back a prefetch that is not on the wire: its wait resolves with no reply
        (the acks and credits are the partition's again). False if it is on the wire:
        its reply will come (:meth:`hurry` makes it come soon)."""
        if prefetch.on_wire:
            return False
        stream = prefetch.keys[0]
        if self._prefetch.get(stream) is prefetch:
            del self._prefetch[stream]
            known = self._idle.get(stream)
            if known is not None and known[1] is prefetch.fut:
                self.discard(stream, known[1])
        if prefetch.fut is not None and not prefetch.fut.done():
            prefetch.fut.set_result(True)
        return True

    def hurry(self, prefetch: Prefetch | None = None) -> None:
        """End the read in flight now (its prefetches run, their acks are applied);
        ``prefetch`` then resolves even if it read nothing."""
        if prefetch is not None:
            prefetch.due = True
        if self._blocked:
            self._ring()

    def forget(self, stream: str) -> None:
        """The partition is no longer ours (nothing to unsubscribe here)."""
        self._prefetch.pop(stream, None)
        known = self._idle.pop(stream, None)
        if known is not None and not known[1].done():
            known[1].set_result(True)
        self._woken.pop(stream, None)
        self._grew.pop(stream, None)

    def _ring_for(self, prefetch: Prefetch, seq: int) -> None:
        if (self._blocked and self._read_seq == seq and not prefetch.on_wire
                and self._prefetch.get(prefetch.keys[0]) is prefetch):
            self._ring()

    def _ring(self) -> None:
        if self._rang_for == self._read_seq:
            return  # one ring ends this read; the next read includes every newcomer
        self._rang_for = self._read_seq
        task = asyncio.get_running_loop().create_task(self._ring_once())
        self._ringing.add(task)
        task.add_done_callback(self._ringing.discard)

    async def _ring_once(self) -> None:
        try:
            # Within the consume path's connection bound: a ring is one more pooled call.
            async with self._limit if self._limit is not None else contextlib.nullcontext():
                pipe = self._client.pipeline(transaction=False)
                pipe.xadd(self._bell, {"r": "1"}, maxlen=1, approximate=False)
                pipe.pexpire(self._bell, DOORBELL_TTL_MS)
                await pipe.execute()
        except _ERRORS as exc:  # the read ends by its own timeout instead
            log.debug("idle-wait doorbell failed: %s", exc)

    async def _run(self) -> None:
        while True:
            if not self._idle and not self._woken:
                self._changed.clear()
                await self._changed.wait()
                continue
            self._changed.clear()
            self._reading = {s: last for s, (last, _) in self._idle.items()}
            for s, woke_at in self._woken.items():
                self._reading.setdefault(s, woke_at)
            self._read_seq += 1
            batch = self._batch()
            self._blocked = True  # from here a newcomer rings: the read may already be sent
            try:
                reply, fetched = await self._read(self._reading, batch)
            except asyncio.CancelledError:
                self._settle(batch, None, asyncio.CancelledError())
                raise
            except Exception as exc:
                self._settle(batch, None, exc)
                # Wake everyone: each partition fetches to find out, then waits again.
                # Never let this task die: idle partitions would wait for it forever.
                (log.debug if isinstance(exc, _ERRORS) else log.exception)(
                    "idle wait failed (%s); waking the idle partitions", exc)
                self._wake(list(self._idle))
                await asyncio.sleep(0.1)
                continue
            finally:
                self._blocked = False
            fetched_for, found_none = self._settle(batch, fetched, None)
            woken = []
            for raw_stream, entries in reply or ():
                stream = raw_stream.decode() if isinstance(raw_stream, bytes) else str(raw_stream)
                if not entries:
                    continue
                if stream == self._bell:
                    self._bell_id = entries[-1][0]
                elif stream in fetched_for:
                    continue  # its prefetch answered for it
                elif stream in self._idle:
                    if stream in self._reading and self._reading[stream] != self._idle[stream][0] \
                            and not _after(entries[-1][0], self._idle[stream][0]):
                        continue  # read from before what it drained since: it stays idle
                    if stream in found_none:
                        # Its prefetch ran and found nothing new for the group (it waits
                        # from before the group's position): read on from this entry.
                        self._idle[stream] = (entries[-1][0], self._idle[stream][1])
                        continue
                    woken.append(stream)
                    self._woken[stream] = entries[-1][0]
                elif self._woken.pop(stream, None) is not None:
                    self._grew[stream] = entries[-1][0]  # busy: out of the reads until it waits
            if woken:
                self._wake(woken)
            if woken or fetched_for:
                # Let the woken partitions send their fetches (a message is waiting on
                # each) before this task spends its turn sending the next read.
                for _ in range(3):
                    await asyncio.sleep(0)

    def _batch(self) -> list[Prefetch]:
        """The prefetches to run behind this read (they are on the wire until it returns)."""
        batch: list[Prefetch] = []
        budget = -1
        for stream, p in self._prefetch.items():
            known = self._idle.get(stream)
            if known is None or known[1] is not p.fut or p.fut.done():
                continue
            if budget < 0:
                budget = max(0, p.credits.free - p.credits.total // 2)
            p.taken = p.credits.try_take(min(p.count, budget)) if budget else 0
            if not p.taken:
                break  # no credits to spare: the rest are only woken by the read
            budget -= p.taken
            p.on_wire = True
            batch.append(p)
            if len(batch) == PREFETCH_MAX:
                break
        return batch

    def _settle(self, batch: list[Prefetch], replies: list[Any] | None,
                error: BaseException | None) -> tuple[set[str], set[str]]:
        """Act on the prefetches' replies (or the read's failure): resolve the ones that
        read or were refused, keep the ones that found nothing (their acks are applied).
        Returns the streams whose prefetch resolved with a reply, and those whose
        prefetch found nothing."""
        resolved, found_none = set(), set()
        for j, p in enumerate(batch):
            p.on_wire = False
            stream = p.keys[0]
            r = replies[j] if replies is not None and j < len(replies) else None
            if replies is not None and isinstance(r, list) and r and r[0] == b"OK" and not r[2] and not p.due:
                p.acks = []  # applied; nothing new: it stays registered, behind the next read
                p.credits.give(p.taken)
                p.taken = 0
                found_none.add(stream)
                continue
            if self._prefetch.get(stream) is not p and isinstance(r, list) and r and r[0] == b"OK" and r[2]:
                # Nobody waits for this one any more (stopped, paused, revoked, replaced
                # meanwhile): what it read is pending under our name. Whoever waits on
                # the stream now fetches, and re-reads its pending list first.
                self.dirty.add(stream)
                self._wake([stream])
            if replies is not None and isinstance(r, list):
                p.reply = r
                resolved.add(stream)
                if r and r[0] == b"OK" and r[2]:
                    self._woken[stream] = r[2][-1][0]  # stays in the reads from there (see above)
            elif replies is None or not isinstance(r, NoScriptError):
                # The call failed: it may have run (read again); or the reply is not one
                p.error = error if error is not None else ResponseError(f"fetch_many replied {r!r}")
            else:  # NOSCRIPT: it never ran (the next read loads it); the partition fetches alone
                p.credits.give(p.taken)
                p.taken = 0
            if self._prefetch.get(stream) is p:
                del self._prefetch[stream]
                known = self._idle.get(stream)
                if known is not None and known[1] is p.fut:
                    del self._idle[stream]
            if p.fut is not None and not p.fut.done():
                p.fut.set_result(True)
        return resolved, found_none

    def _wake(self, streams: list[str]) -> None:
        for s in streams:
            self._prefetch.pop(s, None)  # woken without it: it never ran
            known = self._idle.pop(s, None)
            if known is not None and not known[1].done():
                known[1].set_result(True)

    async def _read(self, streams: dict[str, bytes | str], batch: list[Prefetch]) -> tuple[Any, list[Any] | None]:
        """The blocking read and, pipelined behind it, the prefetches' ``fetch_many``:
        (the read's reply, the script's replies or None without prefetches)."""
        conn = self._conn
        if conn is None:
            conn = self._conn = await self._client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
            if self._bell_id == "$":
                # "$" would miss a ring sent before the first read: start from the tail now
                # (on this connection: the waiter holds one connection, never two).
                try:
                    await conn.send_command("XREVRANGE", self._bell, "+", "-", "COUNT", 1)
                    async with asyncio.timeout(5.0):
                        last = await conn.read_response()
                except BaseException:
                    self._conn = None
                    await conn.disconnect()
                    await self._client.connection_pool.release(conn)
                    raise
                self._bell_id = last[0][0] if last and last[0][0] else "0-0"
        args: list[Any] = ["XREAD", "COUNT", 1, "BLOCK", self._block_ms, "STREAMS", self._bell, *streams,
                           self._bell_id, *streams.values()]
        try:
            if not batch:
                await conn.send_command(*args)
                async with asyncio.timeout(self._block_ms / 1000 + 5.0):
                    return await conn.read_response(), None
            keys: list[str] = []
            argv: list[Any] = list(batch[0].head)
            for p in batch:
                keys += p.keys
                argv += (p.taken, ",".join(p.acks), streams[p.keys[0]])
            await conn.send_packed_command(conn.pack_commands(
                [args, ("EVALSHA", _FETCH_MANY.sha, len(keys), *keys, *argv)]))
            async with asyncio.timeout(self._block_ms / 1000 + 5.0):
                reply = await conn.read_response()
                try:
                    fetched = await conn.read_response()
                except NoScriptError as exc:
                    fetched = [exc] * len(batch)
                    self._load = True
            if self._load:
                self._load = False
                await self._client.script_load(_FETCH_MANY.source)
            return reply, fetched
        except BaseException:
            # Mid-reply or broken: drop this connection, the next read takes a fresh one.
            self._conn = None
            await conn.disconnect()
            await self._client.connection_pool.release(conn)
            raise


def _after(a: bytes | str, b: bytes | str) -> bool:
    """Whether stream entry id ``a`` is after ``b``."""
    return _id(a) > _id(b)


def _id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


PING_S = 5.0  # a shard subscription's link is checked this often when no message arrives
LINK_RETRY_S = 0.1  # after a shard subscription's link failed, its partitions wake this much later


class ShardWaiter:
    """Cluster, Redis 7+: one ``SSUBSCRIBE`` connection per node wakes every idle
    partition of that node, however many (docs/architecture.md §8).

    The produce script announces each batch it writes with ``SPUBLISH`` on a shard
    channel named like the partition's stream (so in the stream's slot, on its node).
    A partition subscribes the first time it goes idle and stays subscribed while it is
    owned (:meth:`forget` on release); each announcement wakes it if it waits, or makes
    its next wait return at once if it was busy fetching. A new subscription, a lost
    link and a moved slot all wake the partitions concerned: they fetch to find out, so
    nothing written before the subscription took effect is missed.
    """

    def __init__(self, client: RedisCluster) -> None:
        self._client = client
        self._shards: dict[str, _Shard] = {}  # node name -> its subscription connection
        self._on: dict[str, _Shard] = {}  # stream -> the shard it is subscribed on
        self._seq: dict[str, int] = {}  # announcements received per stream
        self._seen: dict[str, int] = {}  # ... as of the stream's last wake
        self._waiting: dict[str, asyncio.Future[bool]] = {}
        self.dirty: set[str] = set()  # (never: no prefetches here; see IdleWaiter)

    def start(self) -> None:
        return None

    async def close(self) -> None:
        shards, self._shards = list(self._shards.values()), {}
        await asyncio.gather(*(s.close() for s in shards), return_exceptions=True)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_result(True)
        self._waiting.clear()
        self._on.clear()

    def wait(self, stream: str, last_id: bytes | str) -> asyncio.Future[bool]:
        """A future that resolves True once ``stream`` may have an entry after ``last_id``."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        old = self._waiting.pop(stream, None)
        if old is not None and not old.done():
            old.set_result(True)
        shard = self._on.get(stream)
        if shard is None:
            self._subscribe(stream)  # its confirmation wakes us: fetch once more then
        elif stream in shard.confirmed and self._seq.get(stream, 0) != self._seen.get(stream, 0):
            self._seen[stream] = self._seq.get(stream, 0)  # announced while we fetched
            fut.set_result(True)
            return fut
        self._waiting[stream] = fut
        return fut

    def discard(self, stream: str, fut: asyncio.Future[bool]) -> None:
        if self._waiting.get(stream) is fut:
            del self._waiting[stream]

    def forget(self, stream: str) -> None:
        """The partition is no longer ours: stop listening to it."""
        self._wake(stream)
        shard = self._on.pop(stream, None)
        self._seq.pop(stream, None)
        self._seen.pop(stream, None)
        if shard is not None:
            shard.unsubscribe(stream)

    def _subscribe(self, stream: str) -> None:
        try:
            node = self._client.nodes_manager.get_node_from_slot(self._client.keyslot(stream))
        except Exception as exc:  # an uncovered slot: the fetch finds out, then waits again
            log.debug("shard wait: no node for %s: %s", stream, exc)
            asyncio.get_running_loop().call_later(0.1, self._wake, stream)
            return
        shard = self._shards.get(node.name)
        if shard is None or shard.dead:
            shard = self._shards[node.name] = _Shard(self, node)
        self._on[stream] = shard
        shard.subscribe(stream)

    def _wake(self, stream: str) -> None:
        self._seen[stream] = self._seq.get(stream, 0)
        fut = self._waiting.pop(stream, None)
        if fut is not None and not fut.done():
            fut.set_result(True)

    # called by _Shard
    def _confirmed(self, stream: str) -> None:
        self._wake(stream)

    def _announced(self, stream: str) -> None:
        self._seq[stream] = self._seq.get(stream, 0) + 1
        if stream in self._waiting:
            self._wake(stream)

    def _dropped(self, shard: _Shard, streams: list[str]) -> None:
        """The link failed, or the server dropped subscriptions (their slot moved): wake
        them; each one's next wait subscribes again on the node the slot map names."""
        if any(self._on.get(s) is shard for s in streams):
            refresh_slots(self._client, background=True)
        for s in streams:
            if self._on.get(s) is shard:
                del self._on[s]
            self._wake(s)


class _Shard:
    """One node's subscription connection: a reader task, and a writer that sends
    (un)subscriptions as they are asked for."""

    def __init__(self, owner: ShardWaiter, node: ClusterNode) -> None:
        self._owner = owner
        self._node = node
        self.wanted: set[str] = set()
        self.confirmed: set[str] = set()
        self._inflight: deque[tuple[str, str]] = deque()  # (command, channel) awaiting a reply
        self._outbox: list[tuple[str, str]] = []
        self._kick = asyncio.Event()
        self._conn: AbstractConnection | None = None
        self.dead = False
        self._closing = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name="redcurrent-shard-wait")

    def subscribe(self, stream: str) -> None:
        self.wanted.add(stream)
        self._outbox.append(("SSUBSCRIBE", stream))
        self._kick.set()

    def unsubscribe(self, stream: str) -> None:
        self.wanted.discard(stream)
        self.confirmed.discard(stream)
        self._outbox.append(("SUNSUBSCRIBE", stream))
        self._kick.set()

    async def close(self) -> None:
        self.dead = True
        self._closing = True
        await _cancel(self._task)

    async def _run(self) -> None:
        conn = self._node.acquire_connection()
        self._conn = conn
        writer: asyncio.Task[None] | None = None
        try:
            await conn.connect()  # type: ignore[no-untyped-call]
            writer = asyncio.get_running_loop().create_task(self._write(conn))
            await self._read(conn)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("shard wait on %s failed (%s); waking its partitions", self._node.name, exc)
        finally:
            self.dead = True
            if writer is not None:
                await _cancel(writer)
            # A subscribed connection is never reused for commands.
            await conn.disconnect()
            self._node.release(conn)
            if not self._closing:
                # The link failed (the node may be gone): wake its partitions a little
                # later, so a dead node is not asked again in a tight loop.
                wanted = list(self.wanted)
                asyncio.get_running_loop().call_later(LINK_RETRY_S, self._owner._dropped, self, wanted)

    async def _write(self, conn: AbstractConnection) -> None:
        while not self.dead:
            await self._kick.wait()
            self._kick.clear()
            batch, self._outbox = self._outbox, []
            for command, channel in batch:
                if command == "SUNSUBSCRIBE" and channel in self.wanted:
                    continue  # wanted again meanwhile
                if command == "SSUBSCRIBE" and channel not in self.wanted:
                    continue
                self._inflight.append((command, channel))
                await conn.send_command(command, channel)

    async def _read(self, conn: AbstractConnection) -> None:
        pinged = False
        while not self.dead:
            try:
                msg = await conn.read_response(timeout=PING_S)
            except ResponseError as exc:  # a refused (un)subscription: MOVED, ...
                command, channel = self._inflight.popleft() if self._inflight else ("", "")
                log.debug("shard wait: %s %s refused: %s", command, channel, exc)
                if channel in self.wanted:
                    self.wanted.discard(channel)
                    self._owner._dropped(self, [channel])
                continue
            if msg is None:
                if pinged:
                    raise RedisTimeoutError(f"no reply from {self._node.name} within {2 * PING_S}s")
                pinged = True
                self._inflight.append(("PING", ""))
                await conn.send_command("PING")
                continue
            pinged = False
            kind, channel = _push(msg)
            if kind == "smessage":
                self._owner._announced(channel)
            elif kind == "ssubscribe":
                if self._inflight:
                    self._inflight.popleft()
                if channel in self.wanted:
                    self.confirmed.add(channel)
                    self._owner._confirmed(channel)
            elif kind == "sunsubscribe":
                if self._inflight and self._inflight[0] == ("SUNSUBSCRIBE", channel):
                    self._inflight.popleft()
                elif channel in self.wanted:  # the server dropped it: its slot moved
                    self.wanted.discard(channel)
                    self.confirmed.discard(channel)
                    self._owner._dropped(self, [channel])
            elif kind == "pong" and self._inflight:
                self._inflight.popleft()


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait until it ends, cancelling again if needed: on Python 3.11
    redis-py's own timeouts can swallow a cancellation that lands inside a command."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    if not task.cancelled() and task.exception() is not None:
        log.debug("shard wait task ended with %r", task.exception())


def _push(msg: Any) -> tuple[str, str]:
    """(kind, channel) of a subscription push message; ("pong", "") for a PING's reply."""
    if isinstance(msg, list | tuple) and len(msg) >= 2:
        kind, channel = msg[0], msg[1]
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        channel = channel.decode() if isinstance(channel, bytes) else str(channel)
        return kind.lower(), channel
    return "pong", ""
