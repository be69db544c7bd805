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

On a cluster a multi-stream XREAD fails with CROSSSLOT (every partition has its own
slot), so each idle partition blocks on its own, bounded by :class:`WaitSlots`;
partitions that find no free slot poll instead (docs/architecture.md §8 "Idle wait").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.connection import AbstractConnection

__all__ = ["IdleWaiter"]

log = logging.getLogger(__name__)

_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError, ResponseError)
DOORBELL_TTL_MS = 60_000


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
        for _, fut in self._idle.values():
            if not fut.done():
                fut.set_result(True)
        self._idle.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            # A cancelled blocking read leaves the connection mid-reply: never reuse it.
            await conn.disconnect()
            await self._client.connection_pool.release(conn)
        try:
            await self._client.delete(self._bell)
        except _ERRORS:
            pass

    def wait(self, stream: str, last_id: bytes | str) -> asyncio.Future[bool]:
        """A future that resolves True once ``stream`` has an entry after ``last_id``."""
        known = self._idle.get(stream)
        if known is not None and known[0] == last_id and not known[1].done():
            return known[1]
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if known is not None and not known[1].done():
            known[1].set_result(True)
        self._idle[stream] = (last_id, fut)
        self._changed.set()
        if self._blocked and self._reading.get(stream) != last_id:
            self._ring()
        return fut

    def discard(self, stream: str, fut: asyncio.Future[bool]) -> None:
        """The partition stopped waiting (stopped, paused, revoked)."""
        known = self._idle.get(stream)
        if known is not None and known[1] is fut:
            del self._idle[stream]

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
            if not self._idle:
                self._changed.clear()
                await self._changed.wait()
                continue
            self._changed.clear()
            self._reading = {s: last for s, (last, _) in self._idle.items()}
            self._read_seq += 1
            self._blocked = True  # from here a newcomer rings: the read may already be sent
            try:
                reply = await self._read(self._reading)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Wake everyone: each partition fetches to find out, then waits again.
                # Never let this task die: idle partitions would wait for it forever.
                (log.debug if isinstance(exc, _ERRORS) else log.exception)(
                    "idle wait failed (%s); waking the idle partitions", exc)
                self._wake(list(self._idle))
                await asyncio.sleep(0.1)
                continue
            finally:
                self._blocked = False
            woken = []
            for raw_stream, entries in reply or ():
                stream = raw_stream.decode() if isinstance(raw_stream, bytes) else str(raw_stream)
                if stream == self._bell:
                    if entries:
                        self._bell_id = entries[-1][0]
                    continue
                woken.append(stream)
            self._wake(woken)

    def _wake(self, streams: list[str]) -> None:
        for s in streams:
            known = self._idle.pop(s, None)
            if known is not None and not known[1].done():
                known[1].set_result(True)

    async def _read(self, streams: dict[str, bytes | str]) -> Any:
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
            await conn.send_command(*args)
            async with asyncio.timeout(self._block_ms / 1000 + 5.0):
                return await conn.read_response()
        except BaseException:
            # Mid-reply or broken: drop this connection, the next read takes a fresh one.
            self._conn = None
            await conn.disconnect()
            await self._client.connection_pool.release(conn)
            raise
