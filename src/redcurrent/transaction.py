"""Producer transactions: records of several partitions and topics written by one script
call, all or nothing (docs/exactly-once.md)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.asyncio import RedisCluster

from . import scripts
from .accumulator import _CONNECTION_ERRORS, _FATAL, _NOT_RUN, _PRODUCE, WAKE, _never_sent
from .config import IDEMPOTENCE_WINDOW_MS, seconds_to_ms
from .connection import refresh_slots, transient
from .errors import (
    AmbiguousWriteError,
    FencedError,
    NotEnoughReplicasError,
    PartitionMissingError,
    ProducerClosedError,
    RedcurrentConnectionError,
    RedcurrentError,
    StaleRouteError,
    TransactionAbortedError,
    TransactionError,
    redact,
    translate,
)
from .offsets import id_ms
from .replies import Produced, parse_produce
from .structs import Record, RecordMetadata

if TYPE_CHECKING:
    from .producer import Producer

__all__ = ["Transaction"]


@dataclass(slots=True)
class _Part:
    """A transaction's records of one partition (one batch of the commit's script call)."""

    parts: list[bytes] = field(default_factory=list)  # framed records, three parts each
    futures: list[asyncio.Future[RecordMetadata]] = field(default_factory=list)
    version: int = 0  # the topic metadata version they were routed with
    dedup: bool = False


class Transaction:
    """Records to write atomically: made by ``async with producer.transaction() as tx``.

    :meth:`send` and :meth:`send_batch` only collect records (and route them, looking up
    a topic if needed); nothing is written until the block ends. Then one script call
    writes all of them, across partitions and topics, or none: no consumer ever sees a
    part. An exception inside the block aborts: nothing is written, the futures are
    cancelled, and the exception propagates.

    On Redis Cluster one script runs in one hash slot: the commit raises
    :class:`TransactionError` (naming the slots) before writing anything unless every
    record's partition is in one slot (co-located topics, same partition number).
    """

    def __init__(self, producer: Producer) -> None:
        self._producer = producer
        self._parts: dict[tuple[str, int], _Part] = {}
        self._state = "open"  # then "committing", "committed" or "aborted"

    def __repr__(self) -> str:
        return f"<Transaction {self._state} records={sum(len(p.futures) for p in self._parts.values())}>"

    def _check_open(self) -> None:
        if self._state != "open":
            raise TransactionError(f"the transaction is {self._state}: start a new one")

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
    ) -> asyncio.Future[RecordMetadata]:
        """Add one record (parameters as :meth:`Producer.send`); the future resolves to
        its metadata when the transaction commits."""
        self._check_open()
        [future] = await self._add(topic, [Record(value, key, headers, partition, ttl, dedup_key)])
        return future

    async def send_batch(self, topic: str, records: Iterable[Record | Any]) -> list[asyncio.Future[RecordMetadata]]:
        """Add many records (as :meth:`Producer.send_batch`); one future per record, in order."""
        self._check_open()
        if isinstance(records, str | bytes | bytearray | Mapping) or not isinstance(records, Iterable):
            raise TypeError(f"records must be an iterable of Record or values, not {type(records).__name__}")
        return await self._add(topic, [r if isinstance(r, Record) else Record(r) for r in records])

    async def _add(self, topic: str, records: list[Record]) -> list[asyncio.Future[RecordMetadata]]:
        from .producer import dedup_bytes

        p = self._producer
        for rec in records:  # bad input fails before the topic may be auto-created
            p._check_partition(rec.partition)
        _acc, n = await p._ready_for(topic)
        self._check_open()  # the block may have ended while we looked the topic up
        framed = []
        for rec in records:  # every record validated before any is added
            dk = None if rec.dedup_key is None else dedup_bytes(rec.dedup_key)
            record, _nbytes = p._encode(topic, rec.value, rec.key, rec.headers, rec.ttl, dk)
            route = rec.key if rec.key is not None or dk is None else dk
            q = p._choose(topic, n, route, rec.partition, record[1] if rec.key is not None else dk)
            framed.append((q, record, dk is not None))
        loop = asyncio.get_running_loop()
        version = p._route_version(topic)
        futures = []
        for q, record, dedup in framed:
            part = self._parts.get((topic, q))
            if part is None:
                part = self._parts[(topic, q)] = _Part(version=version)
            part.parts += record
            part.dedup |= dedup
            fut: asyncio.Future[RecordMetadata] = loop.create_future()
            part.futures.append(fut)
            futures.append(fut)
        return futures

    def _abort(self) -> None:
        """The block raised: nothing is written, every future is cancelled."""
        self._state = "aborted"
        for part in self._parts.values():
            for fut in part.futures:
                fut.cancel()

    def _fail(self, exc: BaseException) -> None:
        self._state = "aborted"
        for part in self._parts.values():
            for fut in part.futures:
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # the commit raises it: no "never retrieved" warning

    async def _commit(self) -> None:
        self._check_open()
        self._state = "committing"
        try:
            async with self._producer._tx_lock:  # one commit at a time: sequences in order
                await self._commit_locked()
        except Exception as exc:
            self._fail(exc)
            raise
        except BaseException:  # cancelled while committing: it may or may not be stored
            self._abort()
            raise
        self._state = "committed"

    async def _commit_locked(self) -> None:
        p = self._producer
        if not self._parts:
            return
        acc, _n = await p._ready_for(next(iter(self._parts))[0])
        if acc.fenced is not None:
            raise acc.fenced
        conn = p._conn
        assert conn is not None
        items = list(self._parts.items())
        pid = f"{acc.producer_id}:tx" if acc.producer_id else ""
        call_keys: list[str] = []
        call_args: list[bytes | str | int] = [pid, IDEMPOTENCE_WINDOW_MS, acc.epoch, "T"]
        now_ms = int(time.time() * 1000)
        seqs = {}
        for (topic, q), part in items:
            seqs[(topic, q)] = p._tx_seq.get((topic, q), 0) + 1
            acc.add_batch(call_keys, call_args, topic, q, pid, seqs[(topic, q)], part.version, part.dedup,
                          b"".join(part.parts), now_ms)
        client = conn.client
        if isinstance(client, RedisCluster):
            slots: dict[int, set[str]] = {}
            for i, k in enumerate(call_keys):  # every key's slot, computed, never assumed
                topic, q = items[i // 6][0]
                slots.setdefault(client.keyslot(k), set()).add(f"{topic}[{q}]")
            if len(slots) > 1:
                where = "; ".join(f"slot {s}: {', '.join(sorted(ks))}" for s, ks in sorted(slots.items()))
                raise TransactionError(
                    f"a transaction on Redis Cluster must stay in one hash slot, but its "
                    f"{len(items)} partition(s) are in {len(slots)} slots ({where}); nothing was "
                    "written. Use co-located topics (Admin.create_topic(..., colocate_with=...)) "
                    "and the same partition number (docs/exactly-once.md)"
                )
        if acc.register is not None:
            await acc.registered([k for k, _ in items])
        for tp, seq in seqs.items():  # used, stored or not: a retry resends the same ones
            p._tx_seq[tp] = seq + len(self._parts[tp].futures) - 1
        if conn.caps.is_cluster and conn.caps.version >= (7, 0, 0):
            call_args.append(WAKE)  # idle consumers on a cluster wait on the shard channel
        results = await self._run(scripts.Call(_PRODUCE, call_keys, call_args), len(items), bool(pid))
        self._settle(items, results)

    async def _run(self, call: scripts.Call, batches: int, idempotent: bool) -> list[Produced | RedcurrentError]:
        """Run the commit's one call until it answers, retrying it (same sequences: stored
        once) on connection errors within delivery_timeout."""
        p = self._producer
        opt = p._opt
        assert p._conn is not None
        client = p._conn.client
        wait = opt.acks == "replica"
        wait_ms = seconds_to_ms(min(5.0, opt.request_timeout / 2))
        deadline = time.monotonic() + opt.delivery_timeout
        maybe_sent, confirmed, cause, attempt = False, -1, "", 0
        while True:
            budget = max(0.05, min(opt.request_timeout, deadline - time.monotonic()))
            try:
                async with asyncio.timeout(budget):
                    done = await scripts.execute(client, [call], wait_replicas=int(wait), wait_ms=wait_ms if wait else 0)
                result = done.results[0]
                if isinstance(result, BaseException):
                    raise result
                replies = parse_produce(result, batches)
                if not wait or done.confirmed[0] >= 1:
                    return replies
                if any(isinstance(r, RedcurrentError) for r in replies):
                    return replies  # refused: nothing written, nothing to confirm
                confirmed, cause = done.confirmed[0], "too few replicas confirmed"
            except RedcurrentError:
                raise
            except Exception as exc:
                if isinstance(exc, _FATAL) or not (isinstance(exc, _CONNECTION_ERRORS + _NOT_RUN) or transient(exc)):
                    raise translate(exc, "committing a transaction") from None
                refresh_slots(client, background=True)
                cause = "no reply within request_timeout" if isinstance(exc, TimeoutError) and not str(exc) \
                    else redact(f"{type(exc).__name__}: {exc}")
                maybe_sent = maybe_sent or not _never_sent(exc)
            if p._closed:
                raise ProducerClosedError("the producer was closed during the commit") if not maybe_sent else \
                    AmbiguousWriteError("the producer was closed during the commit: it may or may not be stored")
            if time.monotonic() >= deadline or (not idempotent and (maybe_sent or confirmed >= 0)):
                raise self._give_up(maybe_sent, confirmed, cause, idempotent)
            attempt += 1
            await asyncio.sleep(min(1.0, opt.retry_backoff * 2 ** min(attempt, 6)) * (0.5 + random.random() / 2))

    def _give_up(self, maybe_sent: bool, confirmed: int, cause: str, idempotent: bool) -> RedcurrentError:
        why = f"retried for delivery_timeout={self._producer._opt.delivery_timeout}s" if idempotent \
            else "not retried: idempotence is off"
        if confirmed >= 0:
            return NotEnoughReplicasError(
                f"commit: the primary stored the transaction, but {confirmed} replica(s) confirmed "
                f"({why}). Running it again as a new transaction would store it twice."
            )
        if maybe_sent:
            return AmbiguousWriteError(
                f"commit: gave up ({why}; last: {cause}): the transaction may or may not be stored "
                "(all of it or none). Running it again as a new transaction may store it twice, "
                "except records with a dedup_key, which are returned, not written again."
            )
        return RedcurrentConnectionError(
            f"commit: gave up ({why}): Redis unreachable ({cause}); nothing was stored; retry later"
        )

    def _settle(self, items: list[tuple[tuple[str, int], _Part]], results: list[Produced | RedcurrentError]) -> None:
        p = self._producer
        errors = [(k, r) for (k, _), r in zip(items, results, strict=True)
                  if isinstance(r, RedcurrentError) and not isinstance(r, TransactionAbortedError)]
        if errors:
            (topic, q), exc = errors[0]
            acc = p._acc
            if isinstance(exc, FencedError):
                fenced = FencedError(f"commit (topic {topic!r} partition {q}): {exc}")
                if acc is not None:
                    acc.fenced = fenced
                raise fenced
            err: RedcurrentError
            if isinstance(exc, PartitionMissingError):
                err = PartitionMissingError(
                    f"commit: topic {topic!r} has no partition {q} (deleted, or the server lost its "
                    "data); nothing of the transaction was written")
                p._meta.pop(topic, None)
                p._partitions.pop(topic, None)  # the next send or transaction looks it up again
            elif isinstance(exc, StaleRouteError):
                err = StaleRouteError(
                    f"commit: topic {topic!r} grew with preserve_key_order after these records were "
                    "routed; nothing of the transaction was written: run it again", exc.floor)
                err.retriable = True
                p._partitions.pop(topic, None)  # the next transaction reads the topic again
            else:
                err = type(exc)(f"commit (topic {topic!r} partition {q}): {exc}")
            raise err
        for ((topic, q), part), r in zip(items, results, strict=True):
            assert isinstance(r, Produced)
            if p._acc is not None and p._acc.on_version is not None:
                p._acc.on_version(topic, r.version)
            ids = r.ids.decode().split(",")
            for fut, i in zip(part.futures, ids, strict=True):
                if not fut.done():
                    fut.set_result(RecordMetadata(topic, q, i, id_ms(i)))
