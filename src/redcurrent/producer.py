"""The Producer: keyed, batched, idempotent sends to partitioned topics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any, Literal

import mmh3
import orjson
from msgspec.structs import astuple

from . import scripts, topics, tracing
from .accumulator import _DEDUP_LEN, DEDUP_FLAG, Accumulator, Framed, Group
from .config import DEFAULT_NAMESPACE, MiB, ProducerOptions, check_ttl_ms
from .connection import Client, Connection, connect
from .errors import (
    ConfigError,
    InvalidPartitionsError,
    MessageTooLargeError,
    ProducerClosedError,
    RedcurrentError,
    UnknownTopicError,
    translate,
)
from .keys import Keys, validate_name
from .lifecycle import Lifecycle
from .partitioner import StickyPartitioner, partition_for_key
from .replies import parse_producer_init, parse_producer_register
from .serde import (
    CODEC_CODES,
    KEY_TYPE_CODES,
    PAIR_FORMATS,
    PAIR_HEADER,
    PAIR_VERSION,
    RECORD_HEADER,
    Serializer,
    encode_headers,
    encode_key,
    encode_value,
    pair_codes,
)
from .structs import Record, RecordMetadata
from .transaction import Transaction

__all__ = ["Producer"]

_murmur = mmh3.hash  # murmur3_32, bound once: this runs per record
# A JSON null in framed records (a None, or a NaN or infinity orjson wrote as one). The
# regex engine finds it in JSON text in 0.6 of the time `in` takes (many "l"s to skip).
_find_null = re.compile(b"null").search
_EPOCH = scripts.script("producer_epoch")
_FENCE = scripts.script("fence_producer")
MAX_DEDUP_KEY_BYTES = 1024


def dedup_bytes(dedup_key: object) -> bytes:
    """A dedup key's bytes: a str of 1 to 1024 bytes in UTF-8 (TypeError, ConfigError)."""
    if type(dedup_key) is not str:
        raise TypeError(f"dedup_key must be a str, not {type(dedup_key).__name__}")
    try:
        raw = dedup_key.encode()
    except UnicodeEncodeError:
        raise ConfigError(f"dedup_key {dedup_key!r} is not valid UTF-8 text") from None
    if not 1 <= len(raw) <= MAX_DEDUP_KEY_BYTES:
        raise ConfigError(f"dedup_key must be 1 to {MAX_DEDUP_KEY_BYTES} bytes in UTF-8, got {len(raw)}")
    return raw

log = logging.getLogger(__name__)


class Producer(Lifecycle):
    """Sends keyed messages to topics; concurrent sends coalesce into few round trips.

    Example::

        async with Producer("redis://localhost:6379") as producer:
            meta = await producer.send("orders", {"id": 42}, key="customer-7")
            print(meta.partition, meta.id)

    ``key`` picks the partition (``murmur3_32(key) % partitions``), so all messages of
    one key keep their order. Idempotence is on by default: a batch retried after a
    lost reply is stored once. ``acks="leader"`` (default) confirms once the Redis
    primary has the write; with asynchronous replication a failover can still lose it.
    ``acks="replica"`` also waits for one replica (WAIT) before confirming.

    Timeouts (Kafka's names in parentheses): ``request_timeout`` bounds one attempt
    (request.timeout.ms); ``delivery_timeout`` bounds a send as a whole, retries included
    (delivery.timeout.ms). Within it the producer resends a batch itself, with the same
    producer id and sequence, so Redis stores it once. When it gives up, the error says
    what is known: :class:`AmbiguousWriteError` if an attempt may have been stored (a
    plain resend may duplicate it), :class:`NotEnoughReplicasError` if the primary stored
    it but too few replicas confirmed, a retriable :class:`RedcurrentConnectionError` only
    if no attempt reached Redis. Between attempts it waits from ``retry_backoff``
    seconds up (retry.backoff.ms), doubling each time, at most 1 s.

    Batching: records of one partition wait at most ``linger`` seconds (linger.ms) to
    share a batch, which closes at ``batch_size`` records or ``batch_bytes`` bytes of
    framed records (batch.size), whichever comes first; a record larger than
    ``batch_bytes`` (up to ``max_message_bytes``) goes in a batch of its own.

    Exactly once (docs/exactly-once.md): ``dedup_key`` on :meth:`send` (and on
    :class:`Record`) stores a record once within the topic's ``dedup_window``, whoever sends
    it; ``transactional_id`` gives the producer a durable identity: starting an instance
    fences older ones with the same id (their sends and commits raise :class:`FencedError`
    and write nothing), and a batch a crashed instance may have stored, sent again as the
    new instance's first batch to that partition, is stored once; :meth:`transaction`
    writes records of several partitions and topics all or nothing.

    Topics: a topic this producer has never seen is created on first use when
    ``auto_create_topics`` is on, with ``default_partitions`` partitions (1 unless
    given). A topic it knew that disappears (deleted, or the server restarted without its
    data) is never recreated: sends raise :class:`UnknownTopicError` until an operator
    creates it again, then work again. A record is written only into a partition its
    topic has (checked atomically by the produce script).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        redis: Client | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        linger: float = 0.005,
        batch_size: int = 500,
        batch_bytes: int = MiB,
        max_message_bytes: int = MiB,
        idempotent: bool = True,
        auto_create_topics: bool = True,
        default_partitions: int = 1,
        serializer: Serializer | None = None,
        request_timeout: float = 30.0,
        delivery_timeout: float = 120.0,
        retry_backoff: float = 0.05,
        metadata_max_age: float = 0.5,
        acks: Literal["leader", "replica"] = "leader",
        transactional_id: str | None = None,
    ) -> None:
        if transactional_id is not None:
            validate_name(transactional_id, "transactional_id")
            if not idempotent:
                raise ConfigError("a transactional_id needs idempotent=True")
        self._tid = transactional_id
        self._tx_lock = asyncio.Lock()
        self._tx_seq: dict[tuple[str, int], int] = {}
        self._url = url
        self._given = redis
        self._opt = ProducerOptions(
            keys=Keys(namespace),
            linger=linger,
            batch_size=batch_size,
            batch_bytes=batch_bytes,
            max_message_bytes=max_message_bytes,
            idempotent=idempotent,
            auto_create_topics=auto_create_topics,
            default_partitions=default_partitions,
            serializer=serializer,
            request_timeout=request_timeout,
            delivery_timeout=delivery_timeout,
            retry_backoff=retry_backoff,
            metadata_max_age=metadata_max_age,
            acks=acks,
        )
        self._serializer = serializer
        self._conn: Connection | None = None
        self._acc: Accumulator | None = None
        self._meta: dict[str, topics.TopicMeta] = {}
        self._partitions: dict[str, int] = {}
        self._known: set[str] = set()  # topics this producer has seen: never auto-created again
        self._sticky = StickyPartitioner(batch_size)
        self._refresher: asyncio.Task[None] | None = None
        self._closed = False
        self._start_lock = asyncio.Lock()
        self._resolving: dict[str, tuple[asyncio.Future[int], int]] = {}  # topic -> (lookup, its number)
        self._lookups = 0
        self._refresh_now: asyncio.Future[None] | None = None
        self._entering_count = 0  # sends between their call and the accumulator (see flush)
        self._entered = asyncio.Event()
        self._entered.set()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._acc else "new"
        return f"<Producer namespace={self._opt.keys.namespace!r} {state}>"

    async def start(self) -> None:
        """Connect and start the sender. ``async with`` calls it; ``send`` does too if needed."""
        async with self._start_lock:
            if self._closed:
                raise ProducerClosedError("the producer is closed")
            if self._acc is not None:
                return
            # acks="replica" works on a cluster too: each node's pipeline ends with WAIT.
            conn = await connect(self._url, self._given, retry_for=self._opt.request_timeout)
            if self._closed:  # close() ran while we connected: start nothing
                await conn.close()
                raise ProducerClosedError("the producer was closed while it was starting")
            acc = Accumulator(conn, self._opt, self._topic_config)
            if self._tid is not None:
                try:
                    await self._init_transactional(conn, acc, self._tid)
                except BaseException:
                    await conn.close()
                    raise
            self._conn = conn
            self._acc = acc
            self._acc.on_version = self._version_seen
            self._acc.on_missing = self._topic_missing
            self._acc.repartition = self._repartition
            self._acc.route_version = self._route_version
            self._acc.on_stale = self._route_refused
            self._acc.start()
            self._refresher = asyncio.create_task(self._refresh_loop(), name="redcurrent-metadata")

    @property
    def producer_id(self) -> str:
        """This producer's idempotence id ("" when idempotence is off)."""
        return self._acc.producer_id if self._acc else ""

    @property
    def transactional_id(self) -> str | None:
        """The durable identity given at construction (None: none)."""
        return self._tid

    async def _init_transactional(self, conn: Connection, acc: Accumulator, tid: str) -> None:
        """A new instance of ``tid``: bump its epoch, then raise every partition it ever
        wrote to to the new epoch, so an older instance still running (a zombie) can no
        longer write anywhere (docs/exactly-once.md). Its partitions registered later are
        refused at registration (the epoch moved), so none escapes."""
        keys, client = self._opt.keys, conn.client
        pid = f"t:{tid}"
        try:
            reply = await scripts.run(client, _EPOCH, [keys.producer_epoch(tid), keys.producer_partitions(tid)], ["init"])
            epoch, parts = parse_producer_init(reply)
            # A co-located topic's partition keys carry its anchor's tag: learn each
            # topic's anchor before building its fence keys (a deleted topic needs none).
            for t in {t for t, _ in parts}:
                await topics.read_meta(client, keys, t)
            calls = [scripts.Call(_FENCE, [keys.producer_fence(t, p, pid), keys.topic_version(t, p)], [epoch])
                     for t, p in parts]
            for result in await scripts.execute_calls(client, calls) if calls else []:
                if isinstance(result, BaseException):
                    raise result
        except RedcurrentError:
            raise
        except Exception as exc:
            raise translate(exc, f"starting the producer of transactional_id {tid!r}") from None
        acc.set_identity(pid, epoch)

        async def register(new: list[tuple[str, int]]) -> None:
            """Retried on connection errors for up to delivery_timeout (adding to a set
            twice is harmless); nothing is written to a partition before it succeeds."""
            members = [f"{t}:{p}" for t, p in new]
            deadline, delay = time.monotonic() + self._opt.delivery_timeout, self._opt.retry_backoff
            while True:
                try:
                    async with asyncio.timeout(self._opt.request_timeout):
                        reply = await scripts.run(client, _EPOCH, [keys.producer_epoch(tid),
                                                                   keys.producer_partitions(tid)],
                                                  ["register", epoch, *members])
                    break
                except Exception as exc:
                    err = translate(exc, f"registering partitions of transactional_id {tid!r}")
                    if not err.retriable or time.monotonic() + delay >= deadline or self._closed:
                        raise RedcurrentError(f"{err}; nothing was written") from None
                    await asyncio.sleep(delay)
                    delay = min(1.0, delay * 2)
            parse_producer_register(reply, tid)

        acc.register = register
        log.info("producer with transactional_id %s started at epoch %d (fenced %d partition(s))", tid, epoch,
                 len(parts))

    @staticmethod
    def _check_partition(partition: object) -> None:
        if partition is not None and (isinstance(partition, bool) or not isinstance(partition, int)):
            raise TypeError(f"partition must be an int, not {type(partition).__name__}")
        if isinstance(partition, int) and partition < 0:
            raise InvalidPartitionsError(f"partition {partition} is out of range: partitions are numbered from 0")

    async def send(
        self,
        topic: str,
        value: Any,
        *,
        key: str | bytes | None = None,
        headers: Mapping[str, str] | None = None,
        partition: int | None = None,
        ttl: float | None = None,
        dedup_key: str | None = None,
    ) -> RecordMetadata:
        """Send one message; returns where it was stored once Redis has it.

        ``dedup_key``: within the topic's ``dedup_window`` (``Admin.create_topic``,
        default 600 s), a second send with the same dedup key to the same partition
        writes nothing and returns the first one's metadata (same partition and id), from
        any producer, process or restart; the check is atomic with the write. Without a
        ``key`` the record is routed by its dedup key, so its copies meet in one
        partition (docs/exactly-once.md).

        Cancelling the task awaiting ``send`` does not withdraw the record once it is
        queued (as in Kafka): it is still stored, exactly once, and :meth:`flush` waits
        for it. It is queued before ``send`` first yields, except on the first send to a
        topic this producer has not looked up yet: cancelled during that lookup, the
        record is not sent.

        With OpenTelemetry configured, each send is a ``publish <topic>`` span whose
        context travels to the consumer in the message's headers (see ``redcurrent.tracing``).
        """
        if tracing.active():
            if headers is not None:
                encode_headers(headers)  # bad headers fail as they would untraced
            span = tracing.publish_span(topic, headers, partition)
            try:
                meta = await self._send(topic, value, key, span.headers, partition, ttl, dedup_key)
            except BaseException as exc:
                span.failed(exc)
                raise
            span.sent(meta)
            return meta
        return await self._send(topic, value, key, headers, partition, ttl, dedup_key)

    async def _send(
        self,
        topic: str,
        value: Any,
        key: str | bytes | None,
        headers: Mapping[str, str] | None,
        partition: int | None,
        ttl: float | None,
        dedup_key: str | None = None,
    ) -> RecordMetadata:
        acc = self._acc
        n = self._partitions.get(topic)
        dk = None if dedup_key is None else dedup_bytes(dedup_key)
        record, nbytes = self._encode(topic, value, key, headers, ttl, dk)  # bad input fails first
        if acc is None or self._closed or n is None:  # starting, or the topic's first send
            self._check_partition(partition)
            with self._entering():  # flush() waits for this send to be queued
                acc, n = await self._ready_for(topic)
                if ttl is None:
                    record = self._with_topic_ttl(topic, record)
                stored = self._append(acc, topic, n, key, partition, record, nbytes, dk)
            return await stored
        return await self._append(acc, topic, n, key, partition, record, nbytes, dk)

    def _append(
        self, acc: Accumulator, topic: str, n: int, key: object, partition: int | None, record: Framed, nbytes: int,
        dk: bytes | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        if dk is not None:  # routed by its key, else by its dedup key
            route = record[1] if key is not None else dk
            return acc.append(topic, self._choose(topic, n, route, partition, route), record, nbytes,
                              partition is not None, True)
        if partition is None:
            return acc.append(topic, self._choose(topic, n, key, None, record[1]), record, nbytes)
        return acc.append(topic, self._choose(topic, n, key, partition), record, nbytes, True)

    async def _ready_for(self, topic: str) -> tuple[Accumulator, int]:
        """Started, and ``topic``'s partition count known (looked up or auto-created)."""
        if self._acc is None or self._closed:
            await self.start()
        assert self._acc is not None
        n = self._partitions.get(topic)
        if n is None:
            n = await self._resolve(topic)
        return self._acc, n

    @contextlib.contextmanager
    def _entering(self) -> Iterator[None]:
        """A send on its way to the accumulator (connecting, or looking its topic up)."""
        if not self._entering_count:
            self._entered.clear()
        self._entering_count += 1
        try:
            yield
        finally:
            self._entering_count -= 1
            if not self._entering_count:
                self._entered.set()

    async def send_batch(
        self, topic: str, records: Iterable[Record | Any]
    ) -> list[RecordMetadata]:
        """Send many messages at once; results in input order.

        A record is a :class:`Record` or a bare value (no key). Every record is
        validated and encoded before anything is written.
        """
        if isinstance(records, str | bytes | bytearray | Mapping) or not isinstance(records, Iterable):
            raise TypeError(f"records must be an iterable of Record or values, not {type(records).__name__}")
        records = records if isinstance(records, list) else list(records)
        if tracing.active() and records:
            return await self._send_batch_traced(topic, records)
        return await self._send_batch(topic, records)

    async def _send_batch_traced(self, topic: str, records: list[Any]) -> list[RecordMetadata]:
        """send_batch with one ``publish`` span per record, its context in the record's headers."""
        records = [r if isinstance(r, Record) else Record(r) for r in records]
        for rec in records:
            if rec.headers is not None:
                encode_headers(rec.headers)  # bad headers fail as they would untraced
        spans = [tracing.publish_span(topic, r.headers, r.partition) for r in records]
        traced = [r._replace(headers=span.headers) for r, span in zip(records, spans, strict=True)]
        try:
            metas = await self._send_batch(topic, traced)
        except BaseException as exc:
            for span in spans:
                span.failed(exc)
            raise
        for span, meta in zip(spans, metas, strict=True):
            span.sent(meta)
        return metas

    async def _send_batch(self, topic: str, records: list[Any]) -> list[RecordMetadata]:
        acc = self._acc
        n = self._partitions.get(topic)
        if acc is None or self._closed or n is None:  # validate and encode all before the topic may be auto-created
            records = [r if isinstance(r, Record) else Record(r) for r in records]
            encoded = []
            for rec in records:
                self._check_partition(rec.partition)
                dk = None if rec.dedup_key is None else dedup_bytes(rec.dedup_key)
                encoded.append(self._encode(topic, rec.value, rec.key, rec.headers, rec.ttl, dk))
            with self._entering():  # flush() waits for these sends to be queued
                acc, n = await self._ready_for(topic)
                encoded = [e if r.ttl is not None else (self._with_topic_ttl(topic, e[0]), e[1])
                           for r, e in zip(records, encoded, strict=True)]
                groups, order = self._frame_all(topic, n, records, encoded)
                futures = [acc.append_many(topic, p, group) for p, group in groups.items()]
        else:
            groups, order = self._frame_all(topic, n, records, None)
            # Everything is validated and encoded: only now is anything queued.
            futures = [acc.append_many(topic, p, group) for p, group in groups.items()]
        done: dict[int, Iterator[RecordMetadata]] = {}
        for p, futs in zip(groups, futures, strict=True):
            if len(futs) == 1:
                done[p] = iter(await futs[0])
            else:
                done[p] = iter([m for f in futs for m in await f])
        return list(map(next, map(done.__getitem__, order)))

    def _frame_all(
        self, topic: str, n: int, records: list[Any], encoded: list[tuple[Framed, int]] | None
    ) -> tuple[dict[int, Group], list[int]]:
        """Frame ``records`` (encoded already, or not) and pick their partitions:
        partition -> its records (see :class:`Group`), and each record's partition in
        input order. Hot path: the common record (a dict value, a str key, nothing else)
        is framed inline."""
        groups: dict[int, Group] = {}
        order: list[int] = []
        meta = self._meta.get(topic)
        fast = encoded is None and self._serializer is None and not (meta and meta.config.ttl_ms)
        dumps, pack, murmur, max_bytes = orjson.dumps, PAIR_HEADER.pack, _murmur, self._opt.max_message_bytes
        encode, choose = self._encode, self._choose
        inline = False
        for i, rec in enumerate(records):
            if isinstance(rec, Record):
                value, key = rec.value, rec.key
                if fast and type(key) is str and type(value) is dict and rec.dedup_key is None \
                        and rec.headers is None and rec.ttl is None and rec.partition is None:
                    # The common record, framed inline: its fields read one by one, no tuple.
                    try:
                        data, kb = dumps(value), key.encode()
                    except (TypeError, ValueError):  # the careful path below says what is wrong
                        pass
                    else:
                        nv, nk = len(data), len(kb)
                        if nv + nk <= max_bytes:
                            p = murmur(kb, 0, False) % n
                            group = groups.get(p)
                            if group is None:
                                group = groups[p] = Group([], [], [])
                            group.parts += pack(PAIR_VERSION, 3 + nk, nv, b"2js"), kb, data
                            group.sizes.append(nv + nk)
                            order.append(p)
                            inline = True
                            continue
                value, key, headers, partition, ttl, dedup_key = astuple(rec)
            else:
                value, key, headers, partition, ttl, dedup_key = rec, None, None, None, None, None
            if dedup_key is not None:  # routed by its key, else by its dedup key
                framed, nbytes, p, fresh = self._frame_dedup(topic, n, value, key, headers, partition, ttl, dedup_key,
                                                             fast, None if encoded is None else encoded[i])
                inline |= fresh
                group = groups.get(p)
                if group is None:
                    group = groups[p] = Group([], [], [])
                group.dedup = True
                if partition is not None:
                    group.pinned.append(len(group.sizes))
                group.parts += framed
                group.sizes.append(nbytes)
                order.append(p)
                continue
            framed, nbytes = encode(topic, value, key, headers, ttl) if encoded is None else encoded[i]
            p = choose(topic, n, key, partition, framed[1])
            group = groups.get(p)
            if group is None:
                group = groups[p] = Group([], [], [])
            if partition is not None:
                group.pinned.append(len(group.sizes))
            group.parts += framed
            group.sizes.append(nbytes)
            order.append(p)
        if inline:
            self._check_finite(groups, order, records)
        return groups, order

    def _frame_dedup(
        self, topic: str, n: int, value: Any, key: Any, headers: Any, partition: int | None, ttl: float | None,
        dedup_key: str, fast: bool, encoded: tuple[Framed, int] | None,
    ) -> tuple[Framed, int, int, bool]:
        """_frame_all for a record with a dedup key: framed, its size, its partition (by its
        key, else by its dedup key), and whether it was framed inline (see _check_finite)."""
        dk = dedup_bytes(dedup_key)
        if fast and type(key) is str and type(value) is dict and headers is None and ttl is None and partition is None:
            try:  # the common keyed record, framed inline
                data, kb = orjson.dumps(value), key.encode()
            except (TypeError, ValueError):  # the careful path below says what is wrong
                pass
            else:
                nbytes = len(data) + len(kb)
                if nbytes <= self._opt.max_message_bytes:
                    header = RECORD_HEADER.pack(1 | DEDUP_FLAG, 0, len(kb), len(data), 0, 0)
                    framed = (header, kb, data + _DEDUP_LEN.pack(len(dk)) + dk)
                    return framed, nbytes + len(dk), int(_murmur(kb, 0, False)) % n, True
        framed, nbytes = self._encode(topic, value, key, headers, ttl, dk) if encoded is None else encoded
        route = key if key is not None else dk
        return framed, nbytes, self._choose(topic, n, route, partition, framed[1] if key is not None else dk), False

    @staticmethod
    def _check_finite(groups: dict[int, Group], order: list[int], records: list[Any]) -> None:
        """orjson writes NaN and infinities as null: refuse a record framed inline whose
        value holds one. One search per partition's records finds no "null" at all in
        the common case; only then is each record looked at."""
        for p, group in groups.items():
            if _find_null(b"".join(group.parts)) is None:
                continue
            positions = [i for i, q in enumerate(order) if q == p]
            for i, data in zip(positions, group.parts[2::3], strict=True):
                if b"null" in data:
                    value = records[i].value if isinstance(records[i], Record) else records[i]
                    encode_value(value, None)  # SerializationError for NaN or infinity

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """Write records atomically: ``async with producer.transaction() as tx:``, then
        ``fut = await tx.send(topic, value, key=...)`` or ``await tx.send_batch(...)``.

        When the block ends, one script call writes every record, across partitions and
        topics, all or nothing: no consumer sees a part. The futures resolve to
        :class:`RecordMetadata` then. An exception inside the block aborts: nothing is
        written, the futures are cancelled, the exception propagates. A failed commit
        raises (nothing written, or, after lost replies, :class:`AmbiguousWriteError`) and
        sets the futures to its error; a task cancelled during the commit cancels the
        futures, and (as after a lost reply) the transaction may or may not be stored. With
        a ``transactional_id``, a commit of a fenced producer raises :class:`FencedError`
        and writes nothing.

        On Redis Cluster every record must land in one hash slot (co-located topics, one
        partition number); otherwise the commit raises :class:`TransactionError` and
        writes nothing. Commits of one producer run one at a time; a transaction and
        plain sends of the same producer are not ordered with each other
        (docs/exactly-once.md).
        """
        tx = Transaction(self)
        try:
            yield tx
        except BaseException:
            tx._abort()
            raise
        await tx._commit()

    async def flush(self) -> None:
        """Wait until every message sent so far is stored (or has failed), including
        sends still connecting or looking their topic up when flush was called."""
        while self._entering_count:
            await self._entered.wait()
        if self._acc is not None:
            await self._acc.flush()

    async def close(self) -> None:
        """Flush, then release the connection. Idempotent."""
        if self._closed:
            return
        # Sends still connecting or looking their topic up are not waited for: they fail
        # with ProducerClosedError and write nothing (as a send blocked on metadata does
        # in Kafka). Everything already queued is flushed.
        self._closed = True
        if self._acc is not None:
            # Every record gives up by itself within delivery_timeout; the bound is a safety net.
            limit = self._opt.delivery_timeout + self._opt.request_timeout
            try:
                await asyncio.wait_for(self._acc.flush(), limit)
            except TimeoutError:
                log.warning("producer closed with unsent records after %ss", limit)
            await self._acc.close()
        for task in (self._refresher, self._refresh_now):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._conn is not None:
            await self._conn.close()

    def stats(self) -> dict[str, int]:
        """Counters: sent (records stored), bytes, errors (records failed), batches, retries."""
        return dict(self._acc.stats) if self._acc else {"sent": 0, "bytes": 0, "errors": 0, "batches": 0, "retries": 0,
                                                          "rerouted": 0}

    async def partitions_for(self, topic: str) -> int:
        """The partition count this producer uses for ``topic`` (auto-creating it if allowed)."""
        if self._acc is None:
            await self.start()
        return self._partitions.get(topic) or await self._resolve(topic)

    # -- internals --
    def _encode(
        self, topic: str, value: Any, key: object, headers: Mapping[str, str] | None, ttl: float | None,
        dk: bytes | None = None,
    ) -> tuple[Framed, int]:
        """Validate and frame one record for the produce script (hot path: keep it lean):
        its three parts (header, key, value + headers + expiry [+ dedup key]) and its
        size. ``dk``: the dedup key's bytes (see :func:`dedup_bytes`)."""
        if type(value) is bytes:
            codec, data = 1, value
        else:
            name, data = encode_value(value, self._serializer)
            codec = CODEC_CODES[name]
        if key is None:
            kt, kb = 0, b""
        elif type(key) is str:
            try:
                kt, kb = 1, key.encode()
            except UnicodeEncodeError:  # a lone surrogate: the typed error, nothing written
                encode_key(key)
                raise
        else:
            name, kb = encode_key(key)  # bytes, or TypeError for anything else
            kt = KEY_TYPE_CODES[name]
        hb = encode_headers(headers) if headers is not None else b""
        nbytes = len(data) + len(kb) + len(hb)
        if nbytes > self._opt.max_message_bytes:
            raise MessageTooLargeError(
                f"message of {nbytes} bytes exceeds max_message_bytes={self._opt.max_message_bytes}; "
                "shrink it or raise max_message_bytes"
            )
        expiry = b""
        if ttl is not None:
            expiry = b"%d" % (int(time.time() * 1000) + check_ttl_ms(ttl))
        else:
            meta = self._meta.get(topic)
            if meta is not None and meta.config.ttl_ms:
                expiry = b"%d" % (int(time.time() * 1000) + meta.config.ttl_ms)
        if dk is not None:
            header = RECORD_HEADER.pack(kt | DEDUP_FLAG, codec, len(kb), len(data), len(hb), len(expiry))
            return (header, kb, data + hb + expiry + _DEDUP_LEN.pack(len(dk)) + dk), nbytes + len(dk)
        if hb or expiry:
            header = RECORD_HEADER.pack(kt, codec, len(kb), len(data), len(hb), len(expiry))
            return (header, kb, data + hb + expiry), nbytes
        # no headers, no expiry: one field (format 2, docs/message-format.md)
        return (PAIR_HEADER.pack(PAIR_VERSION, 3 + len(kb), len(data), PAIR_FORMATS[codec * 3 + kt]), kb, data), nbytes

    def _with_topic_ttl(self, topic: str, record: Framed) -> Framed:
        """Add the topic's default expiry to a record framed before its metadata was known."""
        meta = self._meta.get(topic)
        if meta is None or not meta.config.ttl_ms:
            return record
        header, kb, rest = record
        if header[0] == PAIR_VERSION:  # format 2 has no expiry: it becomes format 1
            codec, kt = pair_codes(header)
            vlen, hlen, xlen = len(rest), 0, 0
        else:
            kt, codec, _klen, vlen, hlen, xlen = RECORD_HEADER.unpack(header)
        expiry = b"%d" % (int(time.time() * 1000) + meta.config.ttl_ms)
        header = RECORD_HEADER.pack(kt, codec, len(kb), vlen, hlen, len(expiry))
        return header, kb, rest[: vlen + hlen] + expiry + rest[vlen + hlen + xlen :]  # the dedup key's frame stays

    def _repartition(self, topic: str, n: int, kb: bytes | None) -> int:
        """A partition for a record moved off one its recreated topic lacks."""
        return self._sticky.partition(topic, n) if kb is None else int(_murmur(kb, 0, False)) % n

    def _choose(self, topic: str, n: int, key: object, partition: int | None, kb: bytes | None = None) -> int:
        if partition is not None:
            if isinstance(partition, bool) or not isinstance(partition, int):
                raise TypeError(f"partition must be an int, not {type(partition).__name__}")
            if not 0 <= partition < n:
                raise InvalidPartitionsError(
                    f"partition {partition} is out of range: topic {topic!r} has {n} partitions (0..{n - 1})"
                )
            return partition
        if key is None:
            return self._sticky.partition(topic, n)
        if kb is not None:  # the key's bytes, already encoded by _encode
            return int(_murmur(kb, 0, False)) % n
        return partition_for_key(key, n)  # type: ignore[arg-type]

    async def _resolve(self, topic: str) -> int:
        """First send to ``topic``: read (or auto-create) its metadata, once for all callers."""
        validate_name(topic)
        ticket = self._lookups  # lookups numbered above it started after this call
        pending, number = self._shared_lookup(topic, -1)
        try:
            return await asyncio.shield(pending)
        except UnknownTopicError:
            if number > ticket:
                raise
            # The lookup we joined read Redis before this call: the topic may exist by
            # now (an operator recreated it), so ask once more, after this call.
            pending, _ = self._shared_lookup(topic, ticket)
            return await asyncio.shield(pending)

    def _shared_lookup(self, topic: str, newer_than: int) -> tuple[asyncio.Future[int], int]:
        """The running lookup of ``topic`` numbered above ``newer_than``, or a new one."""
        entry = self._resolving.get(topic)
        if entry is None or entry[0].done() or entry[1] <= newer_than:
            self._lookups += 1
            future = asyncio.ensure_future(self._lookup(topic))
            entry = self._resolving[topic] = (future, self._lookups)

            def finished(f: asyncio.Future[int]) -> None:
                if self._resolving.get(topic, (None, 0))[0] is f:
                    del self._resolving[topic]

            future.add_done_callback(finished)
        return entry

    async def _lookup(self, topic: str) -> int:
        assert self._conn is not None
        client, keys = self._conn.client, self._opt.keys
        try:
            meta = await topics.read_meta(client, keys, topic)
            if meta is None:
                if topic in self._known:  # never recreate a topic we knew
                    raise UnknownTopicError(self._gone(topic))
                if not self._opt.auto_create_topics:
                    raise UnknownTopicError(
                        f"unknown topic {topic!r}: create it with Admin.create_topic or "
                        "turn auto_create_topics on"
                    )
                meta = await topics.create_topic(
                    client, keys, topic, self._opt.default_partitions, exist_ok=True
                )
        except (UnknownTopicError, ValueError, TypeError):
            raise
        except Exception as exc:
            if self._closed:  # close() released the connection under us
                raise ProducerClosedError(
                    f"the producer was closed while looking up topic {topic!r}; nothing was written"
                ) from None
            raise translate(exc, f"reading metadata of topic {topic!r}") from None
        self._remember(meta)
        return meta.partitions

    @staticmethod
    def _gone(topic: str) -> str:
        return (
            f"topic {topic!r} no longer exists: it was deleted, or the Redis server lost its data "
            "(restarted without persistence, or failed over to an empty replica). These records "
            "are not stored. This producer does not recreate a topic it knew: an operator must "
            "recreate it (Admin.create_topic), and sends work again once it exists"
        )

    async def _topic_missing(self, topic: str) -> int:
        """A produce script found no marker for a partition of ``topic``: read the topic
        again. Gone: forget it and raise UnknownTopicError. Still there: repair missing
        markers (a topic made by an older version) and return its partition count."""
        assert self._conn is not None
        client, keys = self._conn.client, self._opt.keys
        meta = await topics.read_meta(client, keys, topic)
        if meta is None:
            self._forget(topic)
            raise UnknownTopicError(self._gone(topic))
        self._remember(meta)
        await topics.repair_markers(client, keys, meta)
        return meta.partitions

    def _route_version(self, topic: str) -> int:
        """The metadata version records of ``topic`` are routed with now."""
        meta = self._meta.get(topic)
        return meta.version if meta is not None else 0

    async def _route_refused(self, topic: str, floor: int) -> int:
        """A partition refused a batch routed before a growth with preserve_key_order
        (its barrier's version is ``floor``): read the topic until the metadata has that
        growth and return the partition count to route with. The growth closes every
        partition before it bumps the metadata, so for a moment the metadata may still
        be older: read it again, briefly (docs/architecture.md §10)."""
        assert self._conn is not None
        delay = 0.005
        while True:
            meta = await topics.read_meta(self._conn.client, self._opt.keys, topic)
            if meta is None:
                self._forget(topic)
                raise UnknownTopicError(self._gone(topic))
            self._remember(meta)
            if meta.version >= floor:
                return meta.partitions
            await asyncio.sleep(delay)
            delay = min(0.1, delay * 2)

    def _forget(self, topic: str) -> None:
        """The topic vanished: the next send looks it up again (and never recreates it)."""
        if self._partitions.pop(topic, None) is not None:
            log.error("%s", self._gone(topic))
        self._meta.pop(topic, None)
        if self._acc is not None:  # a recreated topic has no fences: register its partitions again
            self._acc.unregister(topic)

    def _remember(self, meta: topics.TopicMeta) -> None:
        self._known.add(meta.name)
        known = self._meta.get(meta.name)
        if known is not None and known.created_at != meta.created_at and self._acc is not None:
            self._acc.unregister(meta.name)  # recreated: no fences there; register it again
        old = self._partitions.get(meta.name)
        if old is not None and old != meta.partitions:
            log.info("topic %s now has %d partitions (was %d)", meta.name, meta.partitions, old)
        self._meta[meta.name] = meta
        self._partitions[meta.name] = meta.partitions

    def _topic_config(self, topic: str) -> tuple[int | None, int | None, int]:
        meta = self._meta.get(topic)
        if meta is None:
            return None, None, topics.DEFAULT_DEDUP_WINDOW_MS
        return meta.config.maxlen, meta.config.retention_ms, meta.config.dedup_window_ms

    async def _refresh_loop(self) -> None:
        """Periodic metadata refresh: growth and config changes reach us within max age."""
        # Not "while True": close() cancels this task, and a cancellation that lands inside
        # redis-py can be absorbed there (seen with a paused server); the flag still ends it.
        while not self._closed:
            await asyncio.sleep(self._opt.metadata_max_age)
            if not self._meta or self._conn is None:
                continue
            try:
                await self._refresh_once()
            except Exception as exc:  # the next round tries again; sends do not depend on it
                log.debug("metadata refresh failed: %s", translate(exc, "metadata refresh"))

    def _version_seen(self, topic: str, version: int) -> None:
        """A produce reply carried the topic's metadata version: refresh now if it is newer."""
        meta = self._meta.get(topic)
        if meta is not None and version > meta.version and self._refresh_now is None:
            self._refresh_now = asyncio.ensure_future(self._refresh_soon())

    async def _refresh_soon(self) -> None:
        try:
            await self._refresh_once()
        except Exception as exc:  # the periodic refresh is the fallback
            log.debug("metadata refresh failed: %s", translate(exc, "metadata refresh"))
        finally:
            self._refresh_now = None

    async def _refresh_once(self) -> None:
        assert self._conn is not None
        names = list(self._meta)
        pipe = self._conn.client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self._opt.keys.meta(name))
        for name, raw in zip(names, await pipe.execute(), strict=True):
            meta = topics.learned(self._opt.keys, topics.parse_meta(name, raw))
            known = self._meta.get(name)
            if meta is None:  # gone: the next send looks it up again, and fails
                self._forget(name)
            elif known is None or (meta.version, meta.created_at) != (known.version, known.created_at):
                self._remember(meta)
