"""The Consumer: a member of a consumer group on one or more topics."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Literal

from . import offsets
from . import topics as topics_mod
from .config import DEFAULT_NAMESPACE, ConsumerOptions, check_bool, handler_timeout_of
from .connection import Client, Connection, connect
from .coordinator import Coordinator
from .deadletter import DeadLetterWriter
from .errors import ConfigError, ConsumerStoppedError, FencedError, IllegalStateError, translate
from .fetcher import WATCHED_MIN, WATCHED_MIN_62, Credits, FetchContext, PartitionFetcher
from .handlers import (
    BatchDispatcher,
    EachDispatcher,
    IteratorDispatcher,
    Policy,
    Slot,
    TransactionalDispatcher,
)
from .keys import Keys
from .lanes import ConcurrentDispatcher
from .lifecycle import Lifecycle
from .protocols import BatchHandler, Deserializer, Dispatcher, Handler, Listener
from .retry import Backoff, RetryPolicy
from .stats import ConsumerStats, Histogram
from .structs import Message, TopicPartition
from .transactional import Outputs
from .waiter import IdleWaiter, ShardWaiter

__all__ = ["Consumer"]

log = logging.getLogger(__name__)
# Pooled connections the consume path of one consumer may use at once (see _join).
CONSUME_CONNECTIONS = 8


class Consumer(Lifecycle):
    """A member of consumer group ``group`` on ``topics``.

    Partitions are spread over the group's live members by a coordinator in Redis;
    per partition, messages arrive in order; partitions run concurrently. Example::

        async with Consumer("orders", group="billing", url="redis://localhost:6379") as consumer:
            async for msg in consumer:          # acked when you ask for the next one
                print(msg.key, msg.value)

    or ``await consumer.process(handler)`` / ``await consumer.process_batch(handler)``,
    which ack after the handler returns and retry failures in place (``max_attempts``,
    ``backoff``) before dead-lettering. Delivery is at-least-once.

    In ``async for``, a message counts as handled when you ask for the next one, ack
    it, or leave the loop cleanly (``break``, end of iteration). If the ``async with``
    body raises (any exception, cancellation or Ctrl-C included), the message in hand
    is not acked: the group's next member gets it.

    Acks travel with the partition's next fetch, and are sent within 5 ms when the
    partition has nothing more to read, so an idle consumer holds no unsent acks.

    Every Redis call of the consume path retries connection errors with ``backoff``
    for up to ``request_timeout`` seconds; past that the error surfaces: ``process()``
    (or the iterator) raises it and the partition is given up.

    ``handler_timeout`` bounds one handler call (an attempt past it has failed);
    ``processing_timeout`` is its old name, accepted with a DeprecationWarning.

    ``concurrency=N`` lets ``process()`` run up to N handler calls at once over all
    owned partitions, each message acked when its handler returns; ``ordering`` says
    what stays in order: ``"partition"`` (one at a time per partition), ``"key"`` (the
    same key never twice at once, in partition order; different keys concurrently;
    keyless messages spread) or ``"none"``. A failing message retries in its key's lane
    and blocks only that key. ``max_in_flight`` (10,000) bounds the messages fetched and
    not finished: fetching pauses while that many wait. ``None`` (the default) is one
    handler call per owned partition. Example::

        consumer = Consumer("orders", group="billing", concurrency=200, ordering="key")
        await consumer.process(handle)
    """

    def __init__(
        self,
        *topics: str,
        group: str,
        url: str | None = None,
        redis: Client | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        member_id: str | None = None,
        start: Literal["latest", "earliest"] = "latest",
        batch_size: int = 100,
        heartbeat_interval: float = 1.0,
        session_timeout: float = 10.0,
        rebalance_timeout: float = 30.0,
        max_in_flight: int = 10_000,
        assignor: Literal["round_robin", "sticky"] = "round_robin",
        on_assign: Listener | None = None,
        on_revoke: Listener | None = None,
        on_lost: Listener | None = None,
        deserializer: Deserializer | None = None,
        auto_ack: bool = True,
        max_attempts: int = 5,
        backoff: Backoff | None = None,
        topic_retry: Mapping[str, RetryPolicy] | None = None,
        handler_timeout: float | None = None,
        processing_timeout: float | None = None,
        block: float = 2.0,
        request_timeout: float = 30.0,
        concurrency: int | None = None,
        ordering: Literal["partition", "key", "none"] = "partition",
    ) -> None:
        self._opt = opt = ConsumerOptions(
            keys=Keys(namespace), topics=topics, group=group, member_id=member_id, start=start,
            batch_size=batch_size, heartbeat_interval=heartbeat_interval,
            session_timeout=session_timeout, rebalance_timeout=rebalance_timeout,
            max_in_flight=max_in_flight, assignor=assignor, on_assign=on_assign,
            on_revoke=on_revoke, on_lost=on_lost, deserializer=deserializer, auto_ack=auto_ack,
            max_attempts=max_attempts, backoff=backoff, topic_retry=topic_retry,
            handler_timeout=handler_timeout_of(handler_timeout, processing_timeout),
            block=block, request_timeout=request_timeout, concurrency=concurrency, ordering=ordering,
        )
        self.topics = opt.topics
        self.group = group
        self.member_id = member_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.instance_id = uuid.uuid4().hex
        self._url = url
        self._given = redis
        self._stats = ConsumerStats()
        self._latency = Histogram()
        self._backoff = opt.backoff_or_default
        self._policy = Policy(max_attempts, self._backoff, opt.handler_timeout, dict(opt.topic_retry or {}))
        self._conn: Connection | None = None
        self._coord: Coordinator | None = None
        self._ctx: FetchContext | None = None
        self._queue: asyncio.Queue[Slot | None] = asyncio.Queue()
        # Messages handed out by the iterator and not yet done. With auto_ack, asking for
        # the next message marks every earlier one done (Kafka's poll semantics), so
        # concurrent iterators never stall a partition; with manual acks a message is
        # done as soon as it is handed out (its ack is the user's).
        self._yielded: list[Slot] = []
        self._mode: str | None = None
        self._dispatcher: Dispatcher | None = None
        self._dle: dict[str, bool] = {}
        self._stopped = asyncio.Event()
        self._ended = asyncio.Event()  # stop, a fatal error, or an error to surface
        self._state = "new"
        self._lock = asyncio.Lock()
        self._fatal_error: BaseException | None = None  # the consumer cannot go on
        self._error: BaseException | None = None  # ends the current process() call
        self._inner_stop: asyncio.Task[None] | None = None
        self._waiter: IdleWaiter | ShardWaiter | None = None

    def __repr__(self) -> str:
        return f"<Consumer group={self.group!r} topics={list(self.topics)} member={self.member_id!r} {self._state}>"

    # -- lifecycle --
    async def start(self) -> None:
        """Connect, join the group and claim the assigned partitions."""
        async with self._lock:
            if self._state == "running":
                return
            if self._state == "stopped":
                raise ConsumerStoppedError("this consumer was stopped; create a new one")
            self._conn = await connect(self._url, self._given, retry_for=self._opt.request_timeout)
            try:
                await self._join()
            except BaseException:
                await self._conn.close()
                raise
            self._state = "running"

    async def _join(self) -> None:
        assert self._conn is not None
        client, opt = self._conn.client, self._opt
        missing: set[str] = set()
        for t in self.topics:
            meta = await topics_mod.read_meta(client, opt.keys, t)
            self._dle[t] = bool(meta and meta.config.dead_letter_expired)
            if meta is None:
                log.warning("topic %r does not exist yet; waiting for it to be created", t)
                missing.add(t)
        socket_timeout = _socket_timeout(client)
        block = opt.block if socket_timeout is None else min(opt.block, socket_timeout / 2)
        block_ms = max(1, int(block * 1000))
        # Connections: the consume path (fetches, acks, dead letters, the idle wait's
        # doorbell) uses at most `limit` pooled connections at once, the idle wait one
        # more and the coordinator one (its calls take turns), so heartbeats always find
        # one; and once the consume path has been quiet for a heartbeat interval, the
        # coordinator closes the pool's idle connections but one (per node): an idle
        # consumer holds 2-3 connections however many partitions it owns (docs/scaling.md).
        pool = _pool_size(client)
        limit = max(1, min(CONSUME_CONNECTIONS, pool // 2))
        consume_limit = asyncio.Semaphore(limit)
        if not self._conn.caps.is_cluster:
            self._waiter = IdleWaiter(client, opt.keys.doorbell(self.instance_id), block_ms,  # type: ignore[arg-type]
                                      consume_limit)
            self._waiter.start()
        elif self._conn.caps.version >= (7, 0, 0):  # SPUBLISH / SSUBSCRIBE
            self._waiter = ShardWaiter(client)  # type: ignore[arg-type]
        self._ctx = FetchContext(
            client=client, group=opt.group, consumer=self.member_id,
            token=f"{self.member_id}|{self.instance_id}", batch_size=opt.batch_size,
            block_ms=block_ms, fetch_timeout=opt.session_timeout,
            request_timeout=opt.request_timeout, backoff=self._backoff,
            credits=Credits(opt.max_in_flight), deserializer=opt.deserializer,
            lease_valid=lambda: self._coord is not None and self._coord.lease_valid(),
            on_fenced=lambda tp: self._coord.on_fenced(tp) if self._coord else None,
            on_error=lambda tp, exc: self._coord.on_error(tp, exc) if self._coord else None,
            dead_letters=DeadLetterWriter(client, opt.keys, opt.group, self.member_id,
                                          lambda t: self._dle.get(t, False), self._stats),
            stats=self._stats, limit=consume_limit, waiter=self._waiter,
            transactions=not self._conn.caps.is_cluster,
            watched_min=WATCHED_MIN if self._conn.caps.version >= (7, 0, 0) else WATCHED_MIN_62,
            wait_slots=None if self._waiter is not None else asyncio.Semaphore(max(1, min(32, pool // 4))),
        )
        listeners = {"on_assign": opt.on_assign, "on_revoke": opt.on_revoke, "on_lost": opt.on_lost}
        self._coord = Coordinator(client, opt, self.topics, self.member_id, self.instance_id,
                                  self._ctx, listeners, on_fatal=self._fatal, on_error=self._surface,
                                  native_refresh=self._conn.caps.set_ifeq, trim_pool=self._conn.owned)
        self._coord.born_after_join = missing
        try:
            await self._coord.start()
        except Exception as exc:
            await self._coord.abort()
            raise translate(exc, "joining the group") from None

    def _fatal(self, exc: BaseException) -> None:
        """The coordinator cannot go on (member id taken over, group deleted): end consuming."""
        self._fatal_error = exc
        self._queue.put_nowait(None)
        self._stopped.set()
        self._ended.set()

    def _surface(self, exc: BaseException) -> None:
        """A partition failed past its retries: the running process() call raises ``exc``."""
        if self._error is None:
            self._error = translate(exc, "consuming")
        self._queue.put_nowait(None)
        self._ended.set()

    def _raise_if_failed(self) -> None:
        if self._fatal_error is not None:
            raise self._fatal_error
        exc, self._error = self._error, None
        if not self._stopped.is_set():
            self._ended.clear()
        if exc is not None:
            raise exc

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if e is not None:
            # The body raised (or was cancelled) with messages in hand: they were not
            # handled, so they are not acked; the partition's next owner gets them.
            for slot in self._yielded:
                if not slot.done.done():
                    slot.done.set_result(False)
            self._yielded.clear()
        await self.close()

    async def stop(self) -> None:
        """Graceful stop: finish in-flight, ack, release partitions, leave the group.

        Survivors take the partitions over at their next heartbeat. Idempotent. Called
        from inside a handler, it returns at once and the stop completes once the handler
        has returned (a stop must wait for in-flight handlers, so it cannot wait inline).
        """
        if self._coord is not None and self._coord.in_fetcher_task():
            if self._inner_stop is None:
                self._inner_stop = asyncio.get_running_loop().create_task(self.stop(), name="redcurrent-stop")
            return
        async with self._lock:
            if self._state == "stopped":
                return
            self._state = "stopped"
            for slot in self._yielded:  # the iterators' last messages are done
                self._finish(slot)
            self._yielded.clear()
            try:
                if self._coord is not None:
                    await self._coord.stop(self._opt.request_timeout)
            finally:
                self._queue.put_nowait(None)
                self._stopped.set()
                self._ended.set()
                await self._close_connection()

    async def _close_connection(self) -> None:
        if self._waiter is not None:
            await self._waiter.close()
            self._waiter = None
        if self._conn is not None:
            await self._conn.close()

    async def close(self) -> None:
        """Alias of :meth:`stop`."""
        await self.stop()

    async def abort(self) -> None:
        """Forced stop: nothing more is acked; unacked messages stay pending for the next owner.

        Safe to call while a graceful :meth:`stop` is running (it cuts it short)."""
        self._state = "stopped"
        if self._coord is not None:
            await self._coord.abort()
        self._queue.put_nowait(None)
        self._stopped.set()
        self._ended.set()
        if not self._lock.locked():
            await self._close_connection()  # no graceful stop running that would close it

    # -- consuming --
    def _use(self, mode: str, dispatcher: Dispatcher) -> None:
        if self._state != "running" or self._ctx is None:
            raise ConsumerStoppedError("start the consumer first: 'async with Consumer(...)'")
        if self._mode == mode and mode != "iterator":
            raise IllegalStateError(
                f"{mode}() is already running on this consumer; one call at a time "
                "(run more consumers, or raise max_in_flight, for more concurrency)"
            )
        if self._mode is not None and self._mode != mode:
            raise ConfigError(f"this consumer is already consuming with {self._mode}; use one style")
        if self._mode is None:
            self._mode = mode
            self._dispatcher = dispatcher
            self._ctx.dispatcher = dispatcher
            self._ctx.dispatcher_set.set()

    def _detach(self) -> None:
        """The process() call ended: its handler is never called again, and what it had
        in hand unfinished is not acked (each partition re-reads it for the next call)."""
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            dispatcher.closed = True
        self._mode = None
        if self._ctx is not None:
            self._ctx.dispatcher = None
            self._ctx.dispatcher_set.clear()
        if self._coord is not None and self._state == "running":
            for f in list(self._coord.fetchers.values()):
                f.restart()

    async def _run_dispatcher(self, mode: str, dispatcher: Dispatcher) -> None:
        if not self._opt.auto_ack:
            raise ConfigError(
                f"auto_ack=False means nothing to {mode}(), which acks each message after its "
                "handler returns; use 'async for' for manual acks"
            )
        if self._state == "new":
            await self.start()
        self._raise_if_failed()
        self._use(mode, dispatcher)
        try:
            await self._ended.wait()
            inner = self._inner_stop
            if inner is not None and not inner.done():
                # A handler called stop(): return once that stop is complete, so a caller
                # that then leaves its event loop does not cut the stop's last steps short.
                await asyncio.shield(inner)
            self._raise_if_failed()
        finally:
            if self._dispatcher is dispatcher:
                self._detach()

    async def process(self, handler: Handler, *, transactional: bool = False) -> None:
        """Call ``await handler(msg)`` for every message; ack after it returns.

        Runs until :meth:`stop`. Failures retry in place, then go to the dead-letter
        stream. When this call ends (stopped, cancelled, or raising an error that
        consuming met), ``handler`` is never called again and nothing it had in hand
        unfinished is acked; a later ``process`` call goes on with its own handler.

        ``transactional=True``: consume → produce, exactly once. The handler returns
        the records to write, an iterable of :class:`~redcurrent.Output` (or None);
        each fetched batch's outputs are written together with the acks of their
        inputs by one fenced script, so a consumer that lost the partition writes and
        acks nothing, and a crash before the commit leaves the batch to be handled
        again. An output goes to the input's partition of a topic co-located with the
        input topic (required on a Redis Cluster; on one node another topic is routed
        by the output's key). See docs/exactly-once.md, "Consume → produce"::

            async def bill(msg):
                return [Output("invoices", {"order": msg.value["id"]}, key=msg.key)]

            await consumer.process(bill, transactional=True)
        """
        if not callable(handler):
            raise TypeError("handler must be an async callable taking a Message")
        check_bool(transactional, "transactional")
        opt = self._opt
        dispatcher: Dispatcher
        if transactional:
            dispatcher = await self._transactional(handler)
        elif opt.concurrency is None:
            dispatcher = EachDispatcher(handler, self._policy, self._stats, self._latency)
        else:
            dispatcher = ConcurrentDispatcher(handler, self._policy, self._stats, self._latency,
                                              opt.concurrency, opt.ordering)
        await self._run_dispatcher("process", dispatcher)

    async def _transactional(self, handler: Handler) -> TransactionalDispatcher:
        if self._opt.concurrency is not None:
            raise ConfigError("transactional processing commits each partition's batch in order: "
                              "leave concurrency unset")
        if not self._opt.auto_ack:
            raise ConfigError("transactional processing acks with its commits: leave auto_ack on")
        if self._state == "new":
            await self.start()
        if self._conn is None or self._ctx is None or self._state != "running":
            raise ConsumerStoppedError("start the consumer first: 'async with Consumer(...)'")
        caps = self._conn.caps
        outputs = Outputs(self._conn.client, self._opt.keys, caps.is_cluster, self._ctx.token, self._opt.group,
                          announce=caps.is_cluster and caps.version >= (7, 0, 0))
        return TransactionalDispatcher(handler, outputs, self._policy, self._stats, self._latency)

    async def process_batch(self, handler: BatchHandler) -> None:
        """Call ``await handler(msgs)`` with batches of one partition, in order; ack them together."""
        if not callable(handler):
            raise TypeError("handler must be an async callable taking a list of Message")
        self._refuse_concurrency("process_batch()")
        await self._run_dispatcher("process_batch", BatchDispatcher(handler, self._policy, self._stats, self._latency))

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Message:
        if self._state == "new":
            await self.start()
        if self._state == "stopped" and self._queue.empty():
            raise StopAsyncIteration
        if self._mode is None:
            self._refuse_concurrency("'async for'")
            self._use("iterator", IteratorDispatcher(self._queue, self._opt.auto_ack, self._policy, self._stats, self._latency))
        for done in self._yielded:
            self._finish(done)
        self._yielded.clear()
        while True:
            slot = await self._queue.get()
            if slot is None:
                if self._error is not None or self._fatal_error is not None:
                    self._raise_if_failed()
                if self._state != "stopped":
                    continue  # a wake-up meant for another waiter
                self._queue.put_nowait(None)  # wake every other waiter too
                raise StopAsyncIteration
            if slot.done.done() or slot.fetcher.stopping or slot.gen != slot.fetcher.generation:
                continue  # its partition was revoked, or sought, before we got to it: not ours to hand out
            if slot.msg.expires_at is not None and slot.msg.expires_at <= time.time() * 1000:
                slot.done.set_result(None)  # expired in the queue: never handed out
                continue
            slot.yielded = True
            slot.fetcher.invoking(slot.msg)
            if self._opt.auto_ack:
                self._yielded.append(slot)
            else:
                self._finish(slot)
            return slot.msg

    def _refuse_concurrency(self, style: str) -> None:
        if self._opt.concurrency is not None:
            raise ConfigError(f"concurrency applies to process(handler); {style} hands out one "
                              "partition's messages in order: leave concurrency unset")

    async def getone(self) -> Message:
        """The next message (aiokafka's name for ``await anext(consumer)``)."""
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            raise ConsumerStoppedError("the consumer was stopped") from None

    @staticmethod
    def _finish(slot: Slot | None) -> None:
        if slot is not None and not slot.done.done():
            slot.done.set_result(True)

    # -- acking --
    async def ack(self, msg: Message) -> None:
        """Ack ``msg`` now. Raises FencedError (and acks nothing) if its partition is not ours."""
        await self.ack_many([msg])

    async def ack_many(self, msgs: Iterable[Message]) -> None:
        """Ack several messages (grouped per partition). FencedError if any partition is not ours;
        the messages of partitions we own are acked regardless."""
        if self._state == "new":
            raise ConsumerStoppedError("start the consumer first: 'async with Consumer(...)' (nothing was acked)")
        by_tp: dict[TopicPartition, list[str]] = {}
        for m in msgs:
            if not isinstance(m, Message):
                raise TypeError(f"ack expects Message objects, not {type(m).__name__}")
            by_tp.setdefault(TopicPartition(m.topic, m.partition), []).append(m.id)
        fenced: list[TopicPartition] = []
        coord = self._coord
        for tp, ids in by_tp.items():
            f = coord.fetchers.get(tp) if coord is not None and self._state == "running" else None
            if f is None or f.fenced:
                fenced.append(tp)
                continue
            try:
                await f.ack_now(ids)
            except FencedError:
                fenced.append(tp)
            except Exception as exc:
                raise translate(exc, "ack") from None
            for slot in [s for s in self._yielded if s.fetcher is f and s.msg.id in ids]:
                self._finish(slot)
                self._yielded.remove(slot)
        if fenced:
            names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in fenced)
            raise FencedError(f"not acked: this consumer no longer owns {names}")

    # -- positions --
    async def seek(self, topic: str, partition: int, position: str | dt.datetime) -> None:
        """Start partition ``partition`` of ``topic`` at ``position``: the next message it
        hands out is the first at or after it (an entry id, inclusive, or a ``datetime``:
        the first entry stamped at or after that time). Example::

            await consumer.seek("orders", 0, "1700000000000-0")      # replay from this entry
            await consumer.seek("orders", 0, datetime(2026, 12, 1, tzinfo=UTC))

        The partition must be one this consumer owns (:meth:`assignment`); the change is
        fenced by its owner key, like fetch and ack, and recorded for the group, so a
        member that takes the partition over later reads on from ``position`` too.

        As Kafka's seek, it discards what was fetched: whatever the group had pending on
        the partition is acked (entries before ``position`` count as handled, entries at
        or after it are delivered again, as attempt 1). A message in hand when it runs
        (a handler still working, the one ``async for`` gave you) is not acked when it
        finishes, no more of its batch is handed out, and a later ``ack()`` of a message
        fetched before the seek acks nothing. Works in every consuming style, from inside
        a handler too.

        Raises ConfigError (bad position, or a topic not subscribed), ConsumerStoppedError
        (not started, or stopped), FencedError (partition not owned, or the lease lost).
        """
        target = _seek_target(position)
        fetcher = self._owned([TopicPartition(topic, partition)])[0]
        await self._seek_one(fetcher, target)

    async def seek_to_beginning(self, *partitions: TopicPartition | Iterable[TopicPartition]) -> None:
        """Start each of ``partitions`` (default: every partition owned) at its first entry
        still in the stream. Otherwise as :meth:`seek`."""
        await self._seek_all(_flatten(partitions), "0")

    async def seek_to_end(self, *partitions: TopicPartition | Iterable[TopicPartition]) -> None:
        """Start each of ``partitions`` (default: every partition owned) after its last
        entry: only entries written from now on are handed out. Otherwise as :meth:`seek`."""
        await self._seek_all(_flatten(partitions), "$")

    async def _seek_all(self, partitions: list[TopicPartition], target: str) -> None:
        fetchers = self._owned(partitions or None)
        await asyncio.gather(*(self._seek_one(f, target) for f in fetchers))

    async def _seek_one(self, fetcher: PartitionFetcher, target: str) -> None:
        try:
            await fetcher.seek(target)
        except FencedError:
            raise
        except Exception as exc:
            raise translate(exc, "seek") from None

    def _owned(self, partitions: list[TopicPartition] | None) -> list[PartitionFetcher]:
        """The fetchers of ``partitions`` (None: all owned), checked before anything moves."""
        if self._state != "running" or self._coord is None:
            raise ConsumerStoppedError("start the consumer first: 'async with Consumer(...)' (nothing was sought)")
        coord = self._coord
        if partitions is None:  # every partition owned, leaving out any being revoked right now
            owned = [tp for tp, f in coord.fetchers.items() if not (f.fenced or f.stopping)]
            partitions = sorted(owned, key=lambda tp: (tp.topic, tp.partition))
        unowned: list[TopicPartition] = []
        fetchers: list[PartitionFetcher] = []
        for tp in partitions:
            if tp.topic not in self.topics:
                raise ConfigError(f"this consumer is not subscribed to {tp.topic!r}; it has {list(self.topics)}")
            if isinstance(tp.partition, bool) or not isinstance(tp.partition, int) or tp.partition < 0:
                raise ConfigError(f"partition must be an int >= 0, got {tp.partition!r}")
            f = coord.fetchers.get(tp)
            if f is None or f.fenced or f.stopping:
                unowned.append(tp)
            else:
                fetchers.append(f)
        if unowned or (fetchers and not coord.lease_valid()):
            names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in unowned or partitions)
            why = "does not own" if unowned else "lost its lease on (Redis unreachable)"
            raise FencedError(f"not sought: this consumer {why} {names}; see assignment()")
        return fetchers

    # -- introspection and flow control --
    def assignment(self) -> set[TopicPartition]:
        """The partitions this consumer owns right now."""
        return self._coord.assignment() if self._coord else set()

    def epoch(self, topic: str | None = None) -> int:
        """The group epoch (generation) this consumer last saw for ``topic``."""
        if topic is not None and topic not in self.topics:
            raise ConfigError(f"this consumer is not subscribed to {topic!r}")
        if self._coord is None:
            return 0
        return self._coord.epoch(topic or self.topics[0])

    def pause(self, *partitions: TopicPartition | Iterable[TopicPartition]) -> None:
        """Stop fetching from ``partitions`` (they stay assigned; other partitions go on)."""
        self._set_paused(_flatten(partitions), True)

    def resume(self, *partitions: TopicPartition | Iterable[TopicPartition]) -> None:
        """Fetch from paused ``partitions`` again."""
        self._set_paused(_flatten(partitions), False)

    def _set_paused(self, partitions: list[TopicPartition], paused: bool) -> None:
        if self._coord is None:
            raise IllegalStateError("start the consumer before pausing or resuming partitions")
        for tp in partitions:
            (self._coord.paused.add if paused else self._coord.paused.discard)(tp)
            f = self._coord.fetchers.get(tp)
            if f is not None:
                f.pause() if paused else f.resume()

    def paused(self) -> set[TopicPartition]:
        return set(self._coord.paused) if self._coord else set()

    def stats(self) -> dict[str, int]:
        """Counters: processed, failed, retried, dead_lettered, expired, decode_failures,
        trimmed, rebalances, partitions_lost, heartbeat_errors, fetch_errors, …; a counter
        that never counted is absent (read it with ``.get(name, 0)``)."""
        return self._stats.as_dict()

    def handler_latency(self) -> Histogram:
        """Handler latency histogram (seconds; ``cumulative()``, ``count``, ``sum``)."""
        return self._latency


async def start_if_new(consumer: Consumer) -> None:
    """Start ``consumer`` unless it was started before (running, or stopped: then its
    first consuming call says so): the first step of :func:`redcurrent.run_consumer`."""
    if consumer._state == "new":
        await consumer.start()


def _flatten(items: tuple[TopicPartition | Iterable[TopicPartition], ...]) -> list[TopicPartition]:
    out: list[TopicPartition] = []
    for item in items:
        if isinstance(item, TopicPartition):
            out.append(item)
        else:
            for tp in item:
                if not isinstance(tp, TopicPartition):
                    raise TypeError(f"expected TopicPartition, got {type(tp).__name__}")
                out.append(tp)
    return out


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _seek_target(position: object) -> str:
    """The group's last-delivered id that makes the next read start at ``position``."""
    if isinstance(position, dt.datetime):
        moment = position if position.tzinfo else position.replace(tzinfo=dt.UTC)
        # Integer arithmetic: a float timestamp * 1000 can land a millisecond early.
        ms = (moment - _EPOCH) // dt.timedelta(milliseconds=1)
        return offsets.id_before(f"{max(0, ms)}-0")
    if isinstance(position, str):
        return offsets.id_before(offsets.check_id(position))
    raise ConfigError(f"seek to an entry id (like '1700000000000-0') or a datetime, not {position!r}; "
                      "seek_to_beginning() and seek_to_end() go to either end")


def _pool_size(client: Client) -> int:
    """The most connections the client may open (per node on a cluster)."""
    for holder in (getattr(client, "connection_pool", None), client):
        size = getattr(holder, "max_connections", None)
        if isinstance(size, int) and size > 0:
            return size
    return 100


def _socket_timeout(client: Client) -> float | None:
    """The client's socket timeout (None on a cluster client, which has no single pool)."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    value = kwargs.get("socket_timeout") if isinstance(kwargs, dict) else None
    return float(value) if value else None
