"""Linger batching for the producer: one produce-script call per partition batch.

``send`` appends an encoded record to the open batch of its partition and gets a
future. A single sender task drains every batch into one pipeline of EVALSHA calls
(one per partition batch; on a cluster redis-py groups them per node), then resolves
the futures. While a pipeline is in flight new records accumulate, so batches grow
with load (Kafka's linger.ms / batch.size). One pipeline at a time keeps per-partition
order, and the idempotent sequence makes a retried pipeline write each batch once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import scripts
from .config import ProducerOptions, seconds_to_ms
from .connection import Connection
from .errors import AmbiguousWriteError, ProducerClosedError, RedcurrentError, translate
from .structs import RecordMetadata

__all__ = ["Accumulator", "Waiter"]

log = logging.getLogger(__name__)

_CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)
_PRODUCE = scripts.script("produce")


@dataclass(slots=True)
class Waiter:
    """A future waiting for ``count`` records of a batch from ``start`` on."""

    future: asyncio.Future[Any]
    start: int
    count: int


@dataclass(slots=True)
class _Batch:
    topic: str
    partition: int
    args: list[bytes] = field(default_factory=list)  # framed records, joined at send
    futures: list[asyncio.Future[RecordMetadata] | None] = field(default_factory=list)  # per record (send)
    waiters: list[Waiter] = field(default_factory=list)  # ranges of records (send_batch)
    size: int = 0
    seq: int = 0
    created: float = field(default_factory=time.monotonic)


class Accumulator:
    """Buffers encoded records per partition and sends them in batches (private)."""

    def __init__(
        self,
        conn: Connection,
        options: ProducerOptions,
        topic_config: Callable[[str], tuple[int | None, int | None]],
    ) -> None:
        self._conn = conn
        self._opt = options
        self._topic_config = topic_config  # topic -> (maxlen, retention_ms)
        self._open: dict[tuple[str, int], _Batch] = {}
        self._ready: list[_Batch] = []
        self._seq: dict[tuple[str, int], int] = {}
        self._producer_id = uuid.uuid4().hex if options.idempotent else ""
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._outstanding = 0
        self._flush_now = False
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.stats: dict[str, int] = {"sent": 0, "bytes": 0, "errors": 0, "batches": 0, "retries": 0}
        self.on_version: Callable[[str, int], None] | None = None  # growth notification

    @property
    def producer_id(self) -> str:
        return self._producer_id

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="redcurrent-producer-sender")

    def append(
        self, topic: str, partition: int, record: tuple[bytes, ...], nbytes: int
    ) -> asyncio.Future[RecordMetadata]:
        """Queue one framed record; the future resolves to its metadata."""
        if self._closed:
            raise ProducerClosedError("the producer is closed")
        batch = self._open.get((topic, partition))
        if batch is None or batch.size + nbytes > self._opt.batch_bytes:
            batch = self._batch_for(topic, partition, nbytes)
        fut: asyncio.Future[RecordMetadata] = self._loop.create_future()
        batch.futures.append(fut)
        batch.args.extend(record)
        batch.size += nbytes
        if self._outstanding == 0:
            self._drained.clear()
        self._outstanding += 1
        if len(batch.futures) >= self._opt.batch_size:
            self._seal((topic, partition), batch)
            self._flush_now = True
            self._wakeup.set()
        elif not self._wakeup.is_set():
            self._wakeup.set()
        return fut

    def append_many(
        self, topic: str, partition: int, records: list[tuple[tuple[bytes, ...], int]]
    ) -> list[asyncio.Future[list[RecordMetadata]]]:
        """Queue records of one partition; one future per batch they land in."""
        if self._closed:
            raise ProducerClosedError("the producer is closed")
        loop = self._loop
        futures: list[asyncio.Future[list[RecordMetadata]]] = []
        key = (topic, partition)
        max_count, max_bytes = self._opt.batch_size, self._opt.batch_bytes
        i, n = 0, len(records)
        if self._outstanding == 0:
            self._drained.clear()
        self._outstanding += n
        while i < n:
            batch = self._open.get(key)
            if batch is None:
                batch = self._open[key] = _Batch(topic, partition)
            waiter = Waiter(loop.create_future(), len(batch.futures), 0)
            batch.waiters.append(waiter)
            futures.append(waiter.future)
            room = max_count - len(batch.futures)
            size, args = batch.size, batch.args
            start = i
            while i < n and i - start < room:
                record, nbytes = records[i]
                if size + nbytes > max_bytes and (i > start or batch.futures):
                    break
                args.extend(record)
                size += nbytes
                i += 1
            batch.size = size
            batch.futures.extend([None] * (i - start))
            waiter.count = i - start
            if i < n or len(batch.futures) >= max_count:
                self._seal(key, batch)
        self._flush_now = True
        self._wakeup.set()
        return futures

    def _batch_for(self, topic: str, partition: int, nbytes: int) -> _Batch:
        key = (topic, partition)
        batch = self._open.get(key)
        if batch is None:
            batch = self._open[key] = _Batch(topic, partition)
        elif batch.size + nbytes > self._opt.batch_bytes and batch.futures:
            self._seal(key, batch)
            batch = self._open[key] = _Batch(topic, partition)
        return batch

    def _seal(self, key: tuple[str, int], batch: _Batch) -> None:
        del self._open[key]
        self._ready.append(batch)

    async def flush(self) -> None:
        """Send everything buffered now and wait until it is stored (or failed)."""
        if self._outstanding:
            self._flush_now = True
            self._wakeup.set()
            await self._drained.wait()

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._fail_all(RedcurrentError("producer closed before the record was sent"))

    # -- sender --
    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._flush_now:
                await self._linger()
            self._flush_now = False
            batches = self._drain()
            if batches:
                try:
                    await self._send(batches)
                except Exception as exc:  # never leave a caller waiting on a dead sender
                    log.exception("producer sender failed")
                    self._fail(batches, translate(exc, "produce"))
                self._flush_now = bool(self._open or self._ready)
                if self._flush_now:
                    self._wakeup.set()

    async def _linger(self) -> None:
        """Wait for more records, at most ``linger`` from the first one (Kafka's linger.ms),
        and no longer once a loop iteration passes without a new record: every task
        that was ready to send has then sent, and waiting more only adds latency."""
        deadline = time.monotonic() + self._opt.linger
        seen = -1
        while self._outstanding != seen and not self._flush_now:
            seen = self._outstanding
            await asyncio.sleep(0)
            if time.monotonic() >= deadline:
                return

    def _drain(self) -> list[_Batch]:
        # At most one batch per partition per pipeline: the sequence key remembers the
        # last batch only, so a retried pipeline must not carry two for one partition.
        batches: list[_Batch] = []
        later: list[_Batch] = []
        taken: set[tuple[str, int]] = set()
        for b in self._ready:
            key = (b.topic, b.partition)
            (later if key in taken else batches).append(b)
            taken.add(key)
        for key, b in list(self._open.items()):
            if key in taken:
                continue  # stays open behind the sealed batch of its partition
            batches.append(b)
            del self._open[key]
        self._ready = later
        for b in batches:
            key = (b.topic, b.partition)
            b.seq = self._seq.get(key, 0) + 1
            self._seq[key] = b.seq + len(b.futures) - 1
        return batches

    def _calls(self, batches: list[_Batch]) -> list[scripts.Call]:
        keys = self._opt.keys
        now_ms = int(time.time() * 1000)
        window_ms = seconds_to_ms(self._opt.idempotence_window)
        calls = []
        pid = self._producer_id
        for b in batches:
            maxlen, retention_ms = self._topic_config(b.topic)
            minid = f"{now_ms - retention_ms}-0" if retention_ms else ""
            head: list[bytes | str | int] = [
                str(maxlen) if maxlen else "", minid, pid, b.seq, window_ms
            ]
            stream_keys = [
                keys.stream(b.topic, b.partition),
                keys.producer_seq(b.topic, b.partition, pid or "-"),
                keys.topic_version(b.topic, b.partition),
            ]
            calls.append(scripts.Call(_PRODUCE, stream_keys, [*head, b"".join(b.args)]))
        return calls

    async def _send(self, batches: list[_Batch]) -> None:
        calls = self._calls(batches)
        deadline = min(b.created for b in batches) + self._opt.request_timeout
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    results = await self._execute(calls)
                break
            except _CONNECTION_ERRORS as exc:
                if not self._producer_id:
                    self._fail(batches, AmbiguousWriteError(
                        "connection lost while sending; the records may or may not be stored "
                        f"({translate(exc, 'produce')})"
                    ))
                    return
                if time.monotonic() >= deadline:
                    self._fail(batches, translate(exc, "produce: gave up after request_timeout"))
                    return
                attempt += 1
                self.stats["retries"] += 1
                delay = min(1.0, self._opt.retry_backoff * 2 ** min(attempt, 6))
                log.warning("produce failed (%s); retry %d in %.2fs", type(exc).__name__, attempt, delay)
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
        for batch, result in zip(batches, results, strict=True):
            self._resolve(batch, result)

    async def _execute(self, calls: list[scripts.Call]) -> list[Any]:
        if self._opt.acks != "replica":
            return await scripts.execute_calls(self._conn.client, calls)
        # acks="replica": WAIT on the same connection, right after the writes.
        wait_ms = seconds_to_ms(min(5.0, self._opt.request_timeout / 2))
        results = await scripts.execute_calls(self._conn.client, calls, wait_replicas=1, wait_ms=wait_ms)
        confirmed = results.pop()
        if isinstance(confirmed, Exception) or int(confirmed) < 1:
            # The primary has the records; no replica confirmed them in time. Retrying
            # is safe (the idempotent sequence answers DUP and WAIT runs again).
            raise RedisTimeoutError(f"no replica confirmed the write within {wait_ms} ms")
        return results

    def _resolve(self, batch: _Batch, result: Any) -> None:
        if isinstance(result, Exception) or result[0] == b"STALE":
            err = (
                translate(result, "produce")
                if isinstance(result, Exception)
                else RedcurrentError("produce: stale producer sequence; nothing was written")
            )
            self._fail([batch], err)
            return
        ids = [i.decode() for i in result[1]]
        topic, partition = batch.topic, batch.partition
        if len(result) > 2 and result[2] and self.on_version is not None:
            self.on_version(topic, int(result[2]))
        self.stats["sent"] += len(batch.futures)
        self.stats["bytes"] += batch.size
        self.stats["batches"] += 1
        # The record's timestamp is its entry id's time: Redis's clock at append. One
        # script call's ids nearly always share their ms, so it is parsed once.
        ms_text, ms = "", 0
        stamps = []
        for eid in ids:
            head = eid[: eid.index("-")]
            if head != ms_text:
                ms_text, ms = head, int(head)
            stamps.append(ms)
        for i, fut in enumerate(batch.futures):
            if fut is not None and not fut.done():
                fut.set_result(RecordMetadata(topic, partition, ids[i], stamps[i]))
        for w in batch.waiters:
            if not w.future.done():
                w.future.set_result([
                    RecordMetadata(topic, partition, ids[i], stamps[i]) for i in range(w.start, w.start + w.count)
                ])
        self._done(len(batch.futures))

    def _fail(self, batches: list[_Batch], exc: BaseException) -> None:
        for b in batches:
            self.stats["errors"] += len(b.futures)
            for fut in b.futures:
                if fut is not None and not fut.done():
                    fut.set_exception(exc)
            for w in b.waiters:
                if not w.future.done():
                    w.future.set_exception(exc)
            self._done(len(b.futures))

    def _fail_all(self, exc: BaseException) -> None:
        self._fail(self._ready + list(self._open.values()), exc)
        self._ready, self._open = [], {}

    def _done(self, n: int) -> None:
        self._outstanding -= n
        if self._outstanding <= 0:
            self._outstanding = 0
            self._drained.set()
