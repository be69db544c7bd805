"""Batching for the producer: few produce-script calls however many records.

``send`` appends an encoded record to the open batch of its partition and gets a
future; ``send_batch`` appends many at once. A sender task drains the batches into a
request: on a single server one script call carries several partitions' batches, on a
cluster one call per partition batch (redis-py groups them per node). A request goes
out at once when none is outstanding, so a lone send costs one round trip; while one
is outstanding new records accumulate, at most ``linger``, so batches grow with load
(Kafka's linger.ms / batch.size). A partition has at most one batch in flight, which
keeps its order, and the idempotent sequence makes a retried request write each batch
once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from redis.asyncio import RedisCluster
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ClusterDownError,
    MaxConnectionsError,
    ReadOnlyError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import scripts
from .config import IDEMPOTENCE_WINDOW_MS, ProducerOptions, seconds_to_ms
from .connection import Connection, cluster_transient, refresh_slots, transient
from .errors import (
    AmbiguousWriteError,
    FencedError,
    InvalidPartitionsError,
    NotEnoughReplicasError,
    PartitionMissingError,
    ProducerClosedError,
    RedcurrentConnectionError,
    RedcurrentError,
    StaleRouteError,
    StaleSequenceError,
    UnknownTopicError,
    redact,
    translate,
)
from .offsets import id_ms
from .replies import Produced, parse_produce
from .serde import PAIR_HEADER, PAIR_VERSION, RECORD_HEADER
from .structs import RecordMetadata

__all__ = ["Accumulator", "Framed", "Group", "Waiter"]

log = logging.getLogger(__name__)

_CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)
# Refusals that mean the command did not run (loading, a replica, a slot moving): a
# resend cannot store anything twice.
_NOT_RUN = (BusyLoadingError, ReadOnlyError, TryAgainError, ClusterDownError, MaxConnectionsError)
_FATAL = (AuthenticationError, AuthorizationError)
_PRODUCE = scripts.script("produce")
WAKE = "w"  # produce's optional last argument: SPUBLISH each written batch (cluster, Redis 7+)
_MIN_ATTEMPT_S = 0.05
_MAX_MISSING = 3  # NOTOPIC replies a batch may get for a partition the metadata names
# One script call carries at most this many records / bytes (several partitions' batches
# on a single server): a script holds the server while it runs.
_CALL_RECORDS = 2000
_CALL_BYTES = 2 * 1024 * 1024
_new_tuple = tuple.__new__


# A framed record: its header, its key, and its value (+ headers + expiry): a format-2
# record's 12-byte PAIR_HEADER, or a format-1 record's 15-byte RECORD_HEADER giving the
# lengths (see lua/produce.lua).
Framed = tuple[bytes, bytes, bytes]


@dataclass(slots=True)
class Group:
    """Framed records bound for one partition, as send_batch hands them over."""

    parts: list[bytes]  # three per record (see Framed), back to back
    sizes: list[int]  # each record's size in bytes (key + value + headers)
    pinned: list[int]  # positions of records whose partition the caller chose
    dedup: bool = False  # a record has a dedup key (the produce script's slower loop)


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
    args: list[bytes] = field(default_factory=list)  # framed records, 3 parts each, joined at send
    futures: list[asyncio.Future[RecordMetadata] | None] = field(default_factory=list)  # per record (send)
    waiters: list[Waiter] = field(default_factory=list)  # ranges of records (send_batch)
    size: int = 0
    seq: int = 0
    created: float = field(default_factory=time.monotonic)
    pinned: list[int] = field(default_factory=list)  # records sent with an explicit partition
    maybe_sent: bool = False  # an attempt went out and its reply was lost: it may be stored
    confirmed: int = -1  # acks="replica": the primary stored it, this many replicas confirmed
    cause: str = ""  # why the last attempt failed
    missing: int = 0  # NOTOPIC replies so far
    done: bool = False
    version: int = 0  # the topic metadata version its records were routed with
    floor: int = 0  # STALE_ROUTE: the oldest routing version its partition accepts
    dedup: bool = False  # a record has a dedup key


DEDUP_FLAG = 0x80  # in a framed record's key-type byte: a dedup key follows (lua/produce.lua)
_DEDUP_LEN = struct.Struct(">H")


def split_records(blob: bytes) -> list[tuple[bytes, bytes, bytes, bytes, bytes]]:
    """The framed records of a batch (see lua/produce.lua), as (header, key, value,
    headers, tail) parts: the tail is the expiry, then the dedup key's frame if any.
    A format-2 frame (PAIR_HEADER) has no headers and no tail."""
    out = []
    pos, size, pair_size, end = 0, RECORD_HEADER.size, PAIR_HEADER.size, len(blob)
    while pos < end:
        if blob[pos] == PAIR_VERSION:
            header = blob[pos : pos + pair_size]
            _, nlen, vlen, _fmt = PAIR_HEADER.unpack(header)
            k = pos + pair_size
            v = k + nlen - 3
            pos = v + vlen
            out.append((header, blob[k:v], blob[v:pos], b"", b""))
            continue
        header = blob[pos : pos + size]
        kt, _codec, klen, vlen, hlen, xlen = RECORD_HEADER.unpack(header)
        k = pos + size
        v = k + klen
        h = v + vlen
        x = h + hlen
        pos = x + xlen
        if kt & DEDUP_FLAG:
            pos += 2 + _DEDUP_LEN.unpack_from(blob, pos)[0]
        out.append((header, blob[k:v], blob[v:h], blob[h:x], blob[x:pos]))
    return out


def route_bytes(header: bytes, kb: bytes, tail: bytes) -> bytes | None:
    """What a split record is routed by: its key, else its dedup key, else nothing."""
    kt = header[0]
    if kt == PAIR_VERSION:
        return None if header[-1] == ord("n") else kb
    if kt & ~DEDUP_FLAG:
        return kb
    if kt & DEDUP_FLAG:
        xlen = header[-1]
        return tail[xlen + 2 :]
    return None


def _never_sent(exc: BaseException) -> bool:
    """The attempt failed before the command could reach Redis (connecting failed, or
    Redis refused it unrun), so it cannot have been stored."""
    if isinstance(exc, _NOT_RUN) or cluster_transient(exc):
        return True
    return isinstance(exc, RedisConnectionError | RedisTimeoutError) and "connecting to" in str(exc)


def _chain(src: asyncio.Future[RecordMetadata], dst: asyncio.Future[RecordMetadata]) -> None:
    """Complete ``dst`` as ``src`` completes (a record moved to another batch)."""

    def copy(f: asyncio.Future[RecordMetadata]) -> None:
        exc = f.exception()
        if dst.done():
            return
        if exc is not None:
            dst.set_exception(exc)
        else:
            dst.set_result(f.result())

    src.add_done_callback(copy)


def _gather_into(srcs: list[asyncio.Future[RecordMetadata]], dst: asyncio.Future[Any]) -> None:
    """Complete ``dst`` with the list of results of ``srcs`` (or the first error)."""
    left = [len(srcs)]

    def one(_f: asyncio.Future[RecordMetadata]) -> None:
        left[0] -= 1
        if left[0]:
            return
        errors = [e for e in (f.exception() for f in srcs) if e is not None]
        if dst.done():
            return
        if errors:
            dst.set_exception(errors[0])
        else:
            dst.set_result([f.result() for f in srcs])

    for f in srcs:
        f.add_done_callback(one)


class Accumulator:
    """Buffers encoded records per partition and sends them in batches (private)."""

    def __init__(
        self,
        conn: Connection,
        options: ProducerOptions,
        topic_config: Callable[[str], tuple[int | None, int | None, int]],
    ) -> None:
        self._conn = conn
        self._opt = options
        self._topic_config = topic_config  # topic -> (maxlen, retention_ms, dedup_window_ms)
        self._open: dict[tuple[str, int], _Batch] = {}
        self._ready: list[_Batch] = []
        self._inflight: list[_Batch] = []  # batches of the requests outstanding
        self._busy: set[tuple[str, int]] = set()  # partitions with a batch in flight
        self._requests: set[asyncio.Task[None]] = set()
        self._seq: dict[tuple[str, int], int] = {}
        self._producer_id = uuid.uuid4().hex if options.idempotent else ""
        self.epoch = ""  # a transactional producer's epoch (see Producer.start)
        # Set once a newer instance of this transactional_id fenced this producer: every
        # later send fails with it, writing nothing.
        self.fenced: FencedError | None = None
        # A transactional producer records each partition in its registry before its first
        # write there (so a newer instance fences it); raises FencedError if one started.
        self.register: Callable[[list[tuple[str, int]]], Awaitable[None]] | None = None
        self._registered: set[tuple[str, int]] = set()
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._outstanding = 0
        self._flush_now = False
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.stats: dict[str, int] = {"sent": 0, "bytes": 0, "errors": 0, "batches": 0, "retries": 0,
                                      "rerouted": 0}
        self.on_version: Callable[[str, int], None] | None = None  # growth notification
        # A partition had no marker: the producer re-reads the topic and returns its
        # partition count, or raises UnknownTopicError if the topic is gone.
        self.on_missing: Callable[[str], Awaitable[int]] | None = None
        # (topic, partitions, key bytes or None) -> partition, for records moved off a
        # partition a recreated topic no longer has.
        self.repartition: Callable[[str, int, bytes | None], int] | None = None
        # topic -> the metadata version records are routed with now (their partition count's)
        self.route_version: Callable[[str], int] = lambda _topic: 0
        # A partition refused a batch routed before a growth with preserve_key_order: the
        # producer reads the topic until it has that version (the int) and returns its
        # partition count, or raises.
        self.on_stale: Callable[[str, int], Awaitable[int]] | None = None

    @property
    def producer_id(self) -> str:
        return self._producer_id

    def set_identity(self, producer_id: str, epoch: int) -> None:
        """A transactional producer: its durable id and this instance's epoch."""
        self._producer_id, self.epoch = producer_id, str(epoch)

    def unregister(self, topic: str) -> None:
        """``topic`` was deleted or recreated (its partitions' fences went with it): a
        transactional producer registers its partitions again before writing there, so a
        newer instance's epoch still refuses it."""
        self._registered = {k for k in self._registered if k[0] != topic}

    async def registered(self, keys: list[tuple[str, int]]) -> None:
        """Record partitions in a transactional producer's registry before the first
        write there (raises FencedError once a newer instance started)."""
        if self.register is None:
            return
        new = [k for k in dict.fromkeys(keys) if k not in self._registered]
        if new:
            try:
                await self.register(new)
            except FencedError as exc:
                self.fenced = exc
                raise
            self._registered.update(new)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="redcurrent-producer-sender")

    def append(
        self, topic: str, partition: int, record: Framed, nbytes: int, pinned: bool = False, dedup: bool = False
    ) -> asyncio.Future[RecordMetadata]:
        """Queue one framed record; the future resolves to its metadata.

        ``pinned``: the caller chose the partition (it is never moved to another one).
        ``dedup``: the record carries a dedup key."""
        if self._closed:
            raise ProducerClosedError("the producer is closed")
        if self.fenced is not None:
            raise self.fenced
        batch = self._open.get((topic, partition))
        if batch is None or batch.size + nbytes > self._opt.batch_bytes:
            batch = self._batch_for(topic, partition, nbytes)
        fut: asyncio.Future[RecordMetadata] = self._loop.create_future()
        if pinned:
            batch.pinned.append(len(batch.futures))
        if dedup:
            batch.dedup = True
        batch.futures.append(fut)
        batch.args += record
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

    def append_many(self, topic: str, partition: int, group: Group) -> list[asyncio.Future[list[RecordMetadata]]]:
        """Queue the records of ``group`` (all of one partition); one future per batch
        they land in."""
        if self._closed:
            raise ProducerClosedError("the producer is closed")
        if self.fenced is not None:
            raise self.fenced
        futures: list[asyncio.Future[list[RecordMetadata]]] = []
        key = (topic, partition)
        max_count, max_bytes = self._opt.batch_size, self._opt.batch_bytes
        parts, sizes, pinned = group.parts, group.sizes, group.pinned
        n = len(sizes)
        if self._outstanding == 0:
            self._drained.clear()
        self._outstanding += n
        i = 0
        while i < n:
            batch = self._open.get(key)
            if batch is None:
                batch = self._open[key] = _Batch(topic, partition, version=self.route_version(topic))
            base = len(batch.futures)
            start, room = i, max_count - base
            if i == 0 and n <= room and batch.size + (total := sum(sizes)) <= max_bytes:
                i, size = n, batch.size + total  # all of them fit: no per-record loop
                batch.args += parts
            else:
                size = batch.size
                while i < n and i - start < room:
                    if size + sizes[i] > max_bytes and (i > start or batch.futures):
                        break
                    size += sizes[i]
                    i += 1
                batch.args += parts[3 * start : 3 * i]
            batch.size = size
            if group.dedup:
                batch.dedup = True
            waiter = Waiter(self._loop.create_future(), base, i - start)
            batch.waiters.append(waiter)
            futures.append(waiter.future)
            if pinned:
                batch.pinned.extend(base + j - start for j in pinned if start <= j < i)
            batch.futures += [None] * (i - start)
            if i < n or len(batch.futures) >= max_count:
                self._seal(key, batch)
        self._flush_now = True
        self._wakeup.set()
        return futures

    def _batch_for(self, topic: str, partition: int, nbytes: int) -> _Batch:
        key = (topic, partition)
        batch = self._open.get(key)
        if batch is None:
            batch = self._open[key] = _Batch(topic, partition, version=self.route_version(topic))
        elif batch.size + nbytes > self._opt.batch_bytes and batch.futures:
            self._seal(key, batch)
            batch = self._open[key] = _Batch(topic, partition, version=self.route_version(topic))
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
        self._wakeup.set()  # the sender ends by the flag even if redis-py absorbs the cancel
        tasks = [t for t in (self._task, *self._requests) if t is not None]
        for t in tasks:
            t.cancel()
        if tasks:
            # A cancellation that lands inside redis-py can be absorbed there; the retry
            # loops end by the closed flag, and close() waits for them no longer than one
            # request: whatever is still in flight then is failed as ambiguous below.
            await asyncio.wait(tasks, timeout=self._opt.request_timeout + 1.0)
        self._task = None
        self._fail_all(ProducerClosedError("the producer was closed before the record was sent; nothing was written"))
        self._fail(self._inflight, AmbiguousWriteError(
            "the producer was closed while the records were being sent: they may or may not be "
            "stored, and a plain resend may store them twice"
        ))
        self._inflight = []

    # -- sender --
    async def _run(self) -> None:
        """Send what is buffered: at once when no request is outstanding (latency by
        default); while one is, records wait for it, at most ``linger`` (Kafka's
        linger.ms), so batches grow with load. A partition has at most one batch in
        flight: its order and its idempotent sequence depend on it."""
        while not self._closed:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._requests and not self._flush_now:
                await asyncio.wait(self._requests, timeout=self._opt.linger)
            self._flush_now = False
            batches = self._drain()
            if batches:
                request = asyncio.create_task(self._request(batches), name="redcurrent-produce")
                self._requests.add(request)

    async def _request(self, batches: list[_Batch]) -> None:
        keys = [(b.topic, b.partition) for b in batches]
        self._busy.update(keys)
        self._inflight += batches  # close() fails what a cancelled send leaves here
        try:
            if self.fenced is not None:
                self._fail(batches, self.fenced)
                return
            if self.register is not None:
                try:
                    await self.registered(keys)
                except FencedError as exc:
                    self._fail(batches, exc)
                    return
            await self._send(batches)
        except Exception as exc:  # never leave a caller waiting on a dead sender
            log.exception("producer sender failed")
            self._fail(batches, translate(exc, "produce"))
        finally:
            self._busy.difference_update(keys)
            self._inflight = [b for b in self._inflight if not b.done]
            self._requests.discard(asyncio.current_task())
            if self._open or self._ready:
                self._flush_now = not self._requests  # nothing else outstanding: at once
                self._wakeup.set()

    def _drain(self) -> list[_Batch]:
        # At most one batch per partition per pipeline: the sequence key remembers the
        # last batch only, so a retried pipeline must not carry two for one partition.
        batches: list[_Batch] = []
        later: list[_Batch] = []
        taken = set(self._busy)  # a partition with a batch in flight waits for it
        oldest = self._oldest_routes()
        for b in self._ready:
            key = (b.topic, b.partition)
            (later if key in taken or b.version > oldest.get(b.topic, b.version) else batches).append(b)
            taken.add(key)
        for key, b in list(self._open.items()):
            if key in taken or b.version > oldest.get(b.topic, b.version):
                continue  # stays open behind the sealed batch of its partition
            batches.append(b)
            del self._open[key]
        self._ready = later
        for b in batches:
            key = (b.topic, b.partition)
            b.seq = self._seq.get(key, 0) + 1
            self._seq[key] = b.seq + len(b.futures) - 1
        return batches

    def _oldest_routes(self) -> dict[str, int]:
        """Per topic, the oldest routing version among batches not yet stored. Only those
        go out: records routed with a newer partition count wait until every record routed
        with the older one is stored or re-routed ahead of them, so a key's records keep
        their order across a growth (docs/architecture.md §10). One pass over batches,
        never records; all batches share one version except around a metadata change."""
        oldest: dict[str, int] = {}
        for group in (self._inflight, self._ready, self._open.values()):
            for b in group:
                v = oldest.get(b.topic)
                if (v is None or b.version < v) and not b.done:
                    oldest[b.topic] = b.version
        return oldest

    def _calls(self, batches: list[_Batch]) -> list[tuple[scripts.Call, list[_Batch]]]:
        """The produce-script calls for ``batches``, each with the batches it carries.

        On a single server one call carries several partitions' batches (up to
        ``_CALL_RECORDS`` records or ``_CALL_BYTES``, so one script never holds the
        server long); on a cluster each call stays within one partition's slot."""
        now_ms = int(time.time() * 1000)
        pid = self._producer_id
        one_slot = self._conn.caps.is_cluster
        calls: list[tuple[scripts.Call, list[_Batch]]] = []
        group: list[_Batch] = []
        call_keys: list[str] = []
        call_args: list[bytes | str | int] = []
        records = size = 0
        for b in batches:
            if group and (one_slot or records + len(b.futures) > _CALL_RECORDS or size + b.size > _CALL_BYTES):
                calls.append((scripts.Call(_PRODUCE, call_keys, call_args), group))
                group, call_keys, call_args, records, size = [], [], [], 0, 0
            if not group:
                call_args = [pid, IDEMPOTENCE_WINDOW_MS, self.epoch, ""]
            self.add_batch(call_keys, call_args, b.topic, b.partition, pid, b.seq, b.version, b.dedup,
                           b"".join(b.args), now_ms)
            group.append(b)
            records += len(b.futures)
            size += b.size
        if group:
            calls.append((scripts.Call(_PRODUCE, call_keys, call_args), group))
        if one_slot and self._conn.caps.version >= (7, 0, 0):
            # Announce each write on the partition's shard channel: idle consumers of the
            # partition listen there, one connection per node (docs/architecture.md §8).
            calls = [(scripts.Call(c.script, c.keys, [*c.args, WAKE]), g) for c, g in calls]
        return calls

    def add_batch(self, call_keys: list[str], call_args: list[bytes | str | int], topic: str, partition: int,
                  pid: str, seq: int, version: int, dedup: bool, blob: bytes, now_ms: int) -> None:
        """Add one batch's six keys and six arguments to a produce call (lua/produce.lua)."""
        keys = self._opt.keys
        maxlen, retention_ms, dedup_window_ms = self._topic_config(topic)
        call_keys += (
            keys.stream(topic, partition),
            keys.producer_seq(topic, partition, pid or "-"),
            keys.topic_version(topic, partition),  # the partition's marker
            keys.barrier(topic, partition),  # the oldest routing version it accepts
            keys.producer_fence(topic, partition, pid or "-"),  # transactional producers' fence
            keys.dedup_prefix(topic, partition),
        )
        call_args += (
            str(maxlen) if maxlen else "",
            f"{now_ms - retention_ms}-0" if retention_ms else "",
            seq,
            version,
            dedup_window_ms if dedup else "",
            blob,
        )

    async def _send(self, batches: list[_Batch]) -> None:
        missing = await self._deliver(batches)
        stale = [b for b in missing if b.floor]
        if stale:
            await self._reroute_stale(stale)
        missing = [b for b in missing if not b.floor]
        if missing:
            await self._recover(missing)

    async def _deliver(self, batches: list[_Batch]) -> list[_Batch]:
        """Send ``batches`` until each is stored, fails for good, or passes its
        delivery_timeout (Kafka's delivery.timeout.ms); each attempt is bounded by
        request_timeout. A retry resends the same producer id and sequence, so Redis
        stores a batch once however many attempts reach it. Returns the batches whose
        partition had no marker or refused their route (``floor`` set): nothing written."""
        opt = self._opt
        pending, missing, attempt = batches, [], 0
        while True:
            budget = min(opt.request_timeout, max(b.created for b in pending) + opt.delivery_timeout - time.monotonic())
            results, confirmed = await self._attempt(pending, max(_MIN_ATTEMPT_S, budget))
            retry = []
            for i, (b, result) in enumerate(zip(pending, results, strict=True)):
                if isinstance(result, PartitionMissingError):
                    missing.append(b)
                elif isinstance(result, StaleRouteError):
                    b.floor = result.floor
                    missing.append(b)
                elif isinstance(result, StaleSequenceError):
                    self._fail([b], StaleSequenceError(f"produce to {self._where(b)}: {result}"))
                elif isinstance(result, FencedError):
                    self.fenced = FencedError(f"produce to {self._where(b)}: {result}")
                    self._fail([b], self.fenced)
                elif isinstance(result, BaseException):
                    if self._transient(b, result):
                        retry.append(b)
                    else:
                        self._fail([b], translate(result, f"produce to {self._where(b)}"))
                elif confirmed is not None and confirmed[i] < 1:
                    b.confirmed, b.cause = confirmed[i], "too few replicas confirmed"
                    retry.append(b)
                else:
                    self._resolve(b, result)
            now, pid = time.monotonic(), self._producer_id
            # Past its deadline, or not idempotent and possibly stored: no more attempts.
            stop = [b for b in retry if now >= b.created + opt.delivery_timeout
                    or (not pid and (b.maybe_sent or b.confirmed >= 0))]
            for b in stop:
                replicas = await self._replica_count(b) if b.confirmed >= 0 else "?"
                self._fail([b], self._give_up(b, replicas, idempotent=bool(pid)))
            pending = [b for b in retry if not b.done]
            if not pending or self._closed:  # closing: close() fails what is left as ambiguous
                return missing
            attempt += 1
            self.stats["retries"] += 1
            delay = min(1.0, opt.retry_backoff * 2 ** min(attempt, 6))
            log.warning("produce failed (%s); retry %d in %.2fs", pending[0].cause, attempt, delay)
            await asyncio.sleep(delay * (0.5 + random.random() / 2))

    async def _attempt(self, batches: list[_Batch], budget: float
                       ) -> tuple[list[Produced | BaseException], list[int] | None]:
        """One pipeline of produce calls (one per node on a cluster): a result (or
        exception) per batch, and per batch how many replicas confirmed it
        (acks="replica"; None otherwise)."""
        try:
            async with asyncio.timeout(budget):
                return await self._execute(batches)
        except Exception as exc:
            if not (isinstance(exc, _NOT_RUN) or transient(exc)):
                raise
            refresh_slots(self._conn.client, background=True)  # a failover: find the new primary
            return [exc] * len(batches), None

    async def _execute(self, batches: list[_Batch]) -> tuple[list[Produced | BaseException], list[int] | None]:
        """Run the calls for ``batches``: a reply (or exception) per batch, and per batch
        how many replicas confirmed it (acks="replica"; None otherwise). WAIT runs on the
        connection that carried the writes, right after them: on a cluster, one per node
        that stored a batch (docs/architecture.md §9)."""
        calls = self._calls(batches)
        wait = self._opt.acks == "replica"
        done = await scripts.execute(
            self._conn.client, [c for c, _ in calls], wait_replicas=int(wait), wait_ms=self._wait_ms if wait else 0
        )
        replies: list[Produced | BaseException] = []
        confirmed: list[int] = []
        for (_, group), result, waited in zip(calls, done.results, done.confirmed, strict=True):
            if not isinstance(result, BaseException):
                try:
                    replies += parse_produce(result, len(group))
                except RedcurrentError as exc:
                    result = exc
            if isinstance(result, BaseException):
                replies += [result] * len(group)
            confirmed += [max(0, waited)] * len(group)
        return replies, confirmed if wait else None

    @property
    def _wait_ms(self) -> int:
        return seconds_to_ms(min(5.0, self._opt.request_timeout / 2))

    def _transient(self, b: _Batch, exc: BaseException) -> bool:
        """Worth another attempt? Notes on ``b`` whether this one may have been stored."""
        if isinstance(exc, _FATAL) or not (isinstance(exc, _CONNECTION_ERRORS + _NOT_RUN) or transient(exc)):
            return False
        if isinstance(exc, TimeoutError) and not str(exc):  # our own per-attempt bound
            b.cause = f"no reply within request_timeout={self._opt.request_timeout}s"
        else:
            b.cause = redact(f"{type(exc).__name__}: {exc}")
        if not _never_sent(exc):
            b.maybe_sent = True
        return True

    @staticmethod
    def _where(b: _Batch) -> str:
        return f"topic {b.topic!r} partition {b.partition}"

    def _give_up(self, b: _Batch, replicas: str, idempotent: bool = True) -> RedcurrentError:
        """The error for a batch that will not be retried again, saying whether it may be
        stored. ``replicas``: how many the primary has (for acks="replica" shortfalls)."""
        n, dt = len(b.futures), self._opt.delivery_timeout
        why = f"retried for delivery_timeout={dt}s" if idempotent else "not retried: idempotence is off"
        if b.confirmed >= 0:
            none = " No replica is attached to the primary." if replicas == "0" else ""
            return NotEnoughReplicasError(
                f"produce to {self._where(b)}: the primary stored the {n} record(s), but {b.confirmed} "
                f"of {replicas} replicas confirmed within {self._wait_ms} ms (acks='replica' needs 1; "
                f"{why}).{none} A plain resend would store them twice."
            )
        if b.maybe_sent:
            # Safe to send again only if every record has a dedup key: a resend within the
            # topic's dedup_window then returns the stored record instead of a second one.
            safe = b.dedup and all(r[0][0] & DEDUP_FLAG for r in split_records(b"".join(b.args)))
            err = AmbiguousWriteError(
                f"produce to {self._where(b)}: gave up ({why}; last: {b.cause}); the {n} record(s) "
                "may or may not be stored: an attempt was sent and its reply was lost. " + (
                    "Every record has a dedup_key: sending them again with the same dedup keys within "
                    "the topic's dedup_window is safe (retriable=True): a stored one is returned, not "
                    "written twice." if safe else
                    "A plain resend may store them twice, through this producer or any other "
                    "(retriable=False); give records a dedup_key to make resending safe."
                )
            )
            err.retriable = safe
            return err
        return RedcurrentConnectionError(
            f"produce to {self._where(b)}: gave up ({why}): Redis unreachable ({b.cause}); no "
            "attempt reached Redis, so nothing was stored; retry later"
        )

    async def _replica_count(self, b: _Batch) -> str:
        """Replicas attached to the primary that stored ``b`` (INFO replication; on a
        cluster, the slot map's), for an error message."""
        client = self._conn.client
        if isinstance(client, RedisCluster):
            nodes = client.nodes_manager.slots_cache.get(client.keyslot(self._opt.keys.stream(b.topic, b.partition)))
            return str(len(nodes) - 1) if nodes else "?"
        try:
            async with asyncio.timeout(min(1.0, self._opt.request_timeout)):
                info = await self._conn.client.info("replication")
            return str(int(info.get("connected_slaves", 0)))
        except Exception:  # only a message depends on it
            return "?"

    async def _recover(self, missing: list[_Batch]) -> None:
        """Batches whose partition had no marker (nothing was written): ask the producer
        what the topic is now. Gone: fail them (never recreate it). Still there: retry
        in place (its markers repaired) or move records off a partition it lacks."""
        by_topic: dict[str, list[_Batch]] = {}
        for b in missing:
            by_topic.setdefault(b.topic, []).append(b)
        requeue: list[_Batch] = []
        for topic, batches in by_topic.items():
            assert self.on_missing is not None
            try:
                async with asyncio.timeout(self._opt.request_timeout):
                    n = await self.on_missing(topic)
            except UnknownTopicError as exc:
                self._fail(batches, exc)
                continue
            except Exception as exc:
                err = translate(exc, f"produce to topic {topic!r}: a partition was missing; reading the topic")
                self._fail(batches, RedcurrentError(f"{err}; nothing was written"))
                continue
            for b in batches:
                b.missing += 1
                if b.partition >= n:
                    self._reroute(b, n)
                elif b.missing <= _MAX_MISSING:
                    requeue.append(b)
                else:
                    self._fail([b], RedcurrentError(
                        f"produce to {self._where(b)}: the partition's marker is missing although the "
                        f"topic has {n} partitions; nothing was written"
                    ))
        self._ready[:0] = requeue  # ahead of anything newer for the same partitions

    async def _reroute_stale(self, stale: list[_Batch]) -> None:
        """Batches refused as routed before a growth with preserve_key_order (nothing was
        written): read the topic until its metadata has that growth, then route their
        records again with the new partition count, together with every batch of the
        topic still waiting with the old routing, in their order, ahead of anything
        routed since (docs/architecture.md §10)."""
        by_topic: dict[str, list[_Batch]] = {}
        for b in stale:
            by_topic.setdefault(b.topic, []).append(b)
        front: list[_Batch] = []
        refused = set(map(id, stale))
        for topic, batches in by_topic.items():
            assert self.on_stale is not None
            try:
                async with asyncio.timeout(self._opt.request_timeout):
                    n = await self.on_stale(topic, max(b.floor for b in batches))
            except Exception as exc:
                err = translate(exc, f"produce to topic {topic!r}: re-reading the topic after it grew")
                self._fail(batches, RedcurrentError(f"{err}; nothing was written"))
                continue
            version = self.route_version(topic)
            # Waiting batches routed the old way follow, unless their partition has a batch
            # in flight elsewhere: they are re-routed after it, in their turn.
            busy = {(x.topic, x.partition) for x in self._inflight if not x.done and id(x) not in refused}
            waiting = [b for b in [*self._ready, *self._open.values()]
                       if b.topic == topic and b.version < version and (b.topic, b.partition) not in busy]
            gone = set(map(id, waiting))
            self._ready = [b for b in self._ready if id(b) not in gone]
            self._open = {k: b for k, b in self._open.items() if id(b) not in gone}
            for b in [*batches, *waiting]:
                front += self._split(b, n, version)
            self.stats["rerouted"] += len(batches) + len(waiting)
            log.info("topic %s grew to %d partitions with preserve_key_order: re-routed %d batch(es)",
                     topic, n, len(batches) + len(waiting))
        self._ready[:0] = front

    def _split(self, b: _Batch, n: int, version: int) -> list[_Batch]:
        """Route ``b``'s records again with ``n`` partitions into new batches (keyless and
        pinned records keep their partition), its futures completing with theirs."""
        assert self.repartition is not None
        pinned = set(b.pinned)
        out: dict[int, _Batch] = {}
        moved: list[asyncio.Future[RecordMetadata]] = []
        for i, (header, kb, data, hb, expiry) in enumerate(split_records(b"".join(b.args))):
            rb = route_bytes(header, kb, expiry)
            q = self.repartition(b.topic, n, rb) if rb is not None and i not in pinned else b.partition
            nb = out.get(q)
            if nb is None:
                nb = out[q] = _Batch(b.topic, q, version=version, created=b.created)
            if header[0] & DEDUP_FLAG:
                nb.dedup = True
            fut: asyncio.Future[RecordMetadata] = self._loop.create_future()
            if i in pinned:
                nb.pinned.append(len(nb.futures))
            nb.futures.append(fut)
            nb.args += (header, kb, data + hb + expiry)
            nb.size += len(kb) + len(data) + len(hb)
            moved.append(fut)
        for old, new in zip(b.futures, moved, strict=True):
            if old is not None:
                _chain(new, old)
        for w in b.waiters:
            if w.count:
                _gather_into(moved[w.start : w.start + w.count], w.future)
            elif not w.future.done():
                w.future.set_result([])
        b.done = True  # its records now belong to the new batches (same outstanding count)
        return list(out.values())

    def _reroute(self, b: _Batch, n: int) -> None:
        """Move a batch's records off a partition the (recreated) topic no longer has."""
        if self._closed:
            self._fail([b], ProducerClosedError("the producer is closed; nothing was written"))
            return
        drop = set(b.pinned)  # the caller chose the partition: out of range now
        for w in b.waiters:
            if any(w.start <= j < w.start + w.count for j in b.pinned):
                drop.update(range(w.start, w.start + w.count))  # send_batch fails as a whole
        err = InvalidPartitionsError(
            f"partition {b.partition} is out of range: topic {b.topic!r} now has {n} partitions "
            "(it was deleted and recreated); nothing was written"
        )
        assert self.repartition is not None
        moved: list[asyncio.Future[RecordMetadata] | None] = []
        for i, (header, kb, data, hb, expiry) in enumerate(split_records(b"".join(b.args))):
            if i in drop:
                moved.append(None)
                continue
            q = self.repartition(b.topic, n, route_bytes(header, kb, expiry))
            moved.append(self.append(b.topic, q, (header, kb, data + hb + expiry), len(kb) + len(data) + len(hb),
                                     dedup=bool(header[0] & DEDUP_FLAG)))
        log.info("moved %d record(s) of %s: the topic now has %d partitions", len(b.futures), self._where(b), n)
        for fut, new in zip(b.futures, moved, strict=True):
            if fut is None:
                continue
            if new is not None:
                _chain(new, fut)
            elif not fut.done():
                fut.set_exception(err)
        for w in b.waiters:
            part = moved[w.start : w.start + w.count]
            if w.future.done():
                continue
            if any(f is None for f in part):
                w.future.set_exception(err)
            elif not part:
                w.future.set_result([])
            else:
                _gather_into([f for f in part if f is not None], w.future)
        b.done = True
        self._done(len(b.futures))

    def _resolve(self, batch: _Batch, result: Produced) -> None:
        ids = result.ids.decode().split(",")
        topic, partition = batch.topic, batch.partition
        if self.on_version is not None:
            self.on_version(topic, result.version)
        self.stats["sent"] += len(batch.futures)
        self.stats["bytes"] += batch.size
        self.stats["batches"] += 1
        # The record's timestamp is its entry id's time: Redis's clock at append. One
        # script call's ids nearly always share their ms: then it is parsed once.
        first, last = ids[0], ids[-1]
        ms = first[: first.index("-")]
        if last.startswith(ms) and last[len(ms)] == "-":
            stamps: Iterable[int] = repeat(int(ms))
        else:
            stamps = [id_ms(i) for i in ids]
        metas: list[RecordMetadata] = list(
            map(_new_tuple, repeat(RecordMetadata), zip(repeat(topic), repeat(partition), ids, stamps))
        )
        for i, fut in enumerate(batch.futures):
            if fut is not None and not fut.done():
                fut.set_result(metas[i])
        for w in batch.waiters:
            if not w.future.done():
                w.future.set_result(metas if w.count == len(metas) else metas[w.start : w.start + w.count])
        batch.done = True
        self._done(len(batch.futures))

    def _fail(self, batches: list[_Batch], exc: BaseException) -> None:
        for b in batches:
            if b.done:
                continue
            b.done = True
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
