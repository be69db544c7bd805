"""The Consumer: a member of a consumer group on one or more topics."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal

from . import topics as topics_mod
from .config import DEFAULT_NAMESPACE, ConsumerOptions
from .connection import Client, Connection, Lifecycle, connect
from .coordinator import Coordinator, Listener
from .deadletter import DeadLetterWriter
from .errors import ConfigError, ConsumerStoppedError, FencedError, translate
from .fetcher import Credits, FetchContext
from .handlers import BatchDispatcher, EachDispatcher, Histogram, IteratorDispatcher, Policy, Slot
from .keys import Keys, validate_name
from .retry import Backoff, RetryPolicy
from .serde import Deserializer
from .structs import Message, TopicPartition

__all__ = ["Consumer"]

log = logging.getLogger(__name__)


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
        max_in_flight: int = 1000,
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
    ) -> None:
        if not topics:
            raise ConfigError("Consumer needs at least one topic: Consumer('orders', group='billing')")
        for t in topics:
            validate_name(t)
        validate_name(group, "group")
        if member_id is not None:
            _check_member_id(member_id)
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
        if deserializer is not None and not callable(deserializer):
            raise ConfigError("deserializer must be a callable taking bytes")
        for name, fn in (("on_assign", on_assign), ("on_revoke", on_revoke), ("on_lost", on_lost)):
            if fn is not None and not callable(fn):
                raise ConfigError(f"{name} must be a callable taking a list of TopicPartition")
        if topic_retry is not None and not isinstance(topic_retry, Mapping):
            raise ConfigError("topic_retry must map topic names to RetryPolicy")
        self._opt = ConsumerOptions(
            keys=Keys(namespace), group=group, member_id=member_id, start=start,
            batch_size=batch_size, heartbeat_interval=heartbeat_interval,
            session_timeout=session_timeout, rebalance_timeout=rebalance_timeout,
            max_in_flight=max_in_flight, assignor=assignor, auto_ack=auto_ack,
            processing_timeout=handler_timeout if handler_timeout is not None else processing_timeout,
            block=block,
        )
        self.topics = tuple(dict.fromkeys(topics))
        self.group = group
        self.member_id = member_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.instance_id = uuid.uuid4().hex
        self._url = url
        self._given = redis
        self._listeners: dict[str, Listener | None] = {
            "on_assign": on_assign, "on_revoke": on_revoke, "on_lost": on_lost,
        }
        self._deserializer = deserializer
        self._stats: dict[str, int] = {}
        self._latency = Histogram()
        if backoff is not None and not isinstance(backoff, Backoff):
            raise ConfigError("backoff must be a redcurrent.Backoff")
        for t, rp in (topic_retry or {}).items():
            if t not in topics or not isinstance(rp, RetryPolicy):
                raise ConfigError(f"topic_retry maps subscribed topics to RetryPolicy; bad entry {t!r}")
        self._policy = Policy(max_attempts, backoff or Backoff(), self._opt.processing_timeout,
                              self._stats, self._latency, dict(topic_retry or {}))
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
        self._dle: dict[str, bool] = {}
        self._stopped = asyncio.Event()
        self._state = "new"
        self._lock = asyncio.Lock()
        self._error: BaseException | None = None
        self._inner_stop: asyncio.Task[None] | None = None

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
            self._conn = await connect(self._url, self._given)
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
        self._ctx = FetchContext(
            client=client, group=opt.group, consumer=self.member_id,
            token=f"{self.member_id}|{self.instance_id}", batch_size=opt.batch_size,
            block_ms=max(1, int(block * 1000)), fetch_timeout=opt.session_timeout,
            credits=Credits(opt.max_in_flight), deserializer=self._deserializer,
            lease_valid=lambda: self._coord is not None and self._coord.lease_valid(),
            on_fenced=lambda tp: self._coord.on_fenced(tp) if self._coord else None,
            dead_letters=DeadLetterWriter(client, opt.keys, opt.group, self.member_id,
                                          lambda t: self._dle.get(t, False), self._stats),
            stats=self._stats,
        )
        self._coord = Coordinator(client, opt, self.topics, self.member_id, self.instance_id,
                                  self._ctx, self._listeners)
        self._coord._on_fatal = self._fatal
        self._coord.born_after_join = missing
        try:
            await self._coord.start()
        except Exception as exc:
            await self._coord.abort()
            raise translate(exc, "joining the group") from None

    def _fatal(self, exc: BaseException) -> None:
        """The coordinator cannot go on (this member id was taken over): end consuming."""
        self._error = exc
        self._queue.put_nowait(None)
        self._stopped.set()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

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
                    await self._coord.stop()
            finally:
                self._queue.put_nowait(None)
                self._stopped.set()
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
        if not self._lock.locked() and self._conn is not None:
            await self._conn.close()  # no graceful stop running that would close it

    # -- consuming --
    def _use(self, mode: str, dispatcher: Any) -> None:
        if self._state != "running" or self._ctx is None:
            raise ConsumerStoppedError("start the consumer first: 'async with Consumer(...)'")
        if self._mode is not None and self._mode != mode:
            raise ConfigError(f"this consumer is already consuming with {self._mode}; use one style")
        if self._mode is None:
            self._mode = mode
            self._ctx.dispatcher = dispatcher
            self._ctx.dispatcher_set.set()

    async def process(self, handler: Callable[[Message], Awaitable[Any]]) -> None:
        """Call ``await handler(msg)`` for every message; ack after it returns.

        Runs until :meth:`stop`. Failures retry in place, then go to the dead-letter stream.
        """
        if not callable(handler):
            raise TypeError("handler must be an async callable taking a Message")
        if self._state == "new":
            await self.start()
        self._use("process", EachDispatcher(handler, self._policy))
        await self._stopped.wait()
        self._raise_if_failed()

    async def process_batch(self, handler: Callable[[list[Message]], Awaitable[Any]]) -> None:
        """Call ``await handler(msgs)`` with batches of one partition, in order; ack them together."""
        if not callable(handler):
            raise TypeError("handler must be an async callable taking a list of Message")
        if self._state == "new":
            await self.start()
        self._use("process_batch", BatchDispatcher(handler, self._policy))
        await self._stopped.wait()
        self._raise_if_failed()

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Message:
        if self._state == "new":
            await self.start()
        if self._state == "stopped" and self._queue.empty():
            raise StopAsyncIteration
        if self._mode is None:
            self._use("iterator", IteratorDispatcher(self._queue, self._opt.auto_ack, self._stats))
        for done in self._yielded:
            self._finish(done)
        self._yielded.clear()
        while True:
            slot = await self._queue.get()
            if slot is None:
                self._queue.put_nowait(None)  # wake every other waiter too
                self._raise_if_failed()
                raise StopAsyncIteration
            if slot.done.done() or slot.fetcher.stopping:
                continue  # its partition was revoked before we got to it: not ours to hand out
            slot.yielded = True
            if self._opt.auto_ack:
                self._yielded.append(slot)
            else:
                self._finish(slot)
            return slot.msg

    async def getone(self) -> Message:
        """The next message (aiokafka's name for ``await anext(consumer)``)."""
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            raise ConsumerStoppedError("the consumer was stopped") from None

    @staticmethod
    def _finish(slot: Slot | None) -> None:
        if slot is not None and not slot.done.done():
            slot.done.set_result(None)

    # -- acking --
    async def ack(self, msg: Message) -> None:
        """Ack ``msg`` now. Raises FencedError (and acks nothing) if its partition is not ours."""
        await self.ack_many([msg])

    async def ack_many(self, msgs: Iterable[Message]) -> None:
        """Ack several messages (grouped per partition). FencedError if any partition is not ours;
        the messages of partitions we own are acked regardless."""
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
            return
        for tp in partitions:
            (self._coord.paused.add if paused else self._coord.paused.discard)(tp)
            f = self._coord.fetchers.get(tp)
            if f is not None:
                f.pause() if paused else f.resume()

    def paused(self) -> set[TopicPartition]:
        return set(self._coord.paused) if self._coord else set()

    def stats(self) -> dict[str, int]:
        """Counters: processed, failed, retried, dead_lettered, expired, decode_failures,
        trimmed, rebalances, partitions_lost, heartbeat_errors, fetch_errors, …"""
        return dict(self._stats)

    def handler_latency(self) -> Histogram:
        """Handler latency histogram (seconds; ``cumulative()``, ``count``, ``sum``)."""
        return self._latency


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


def _check_member_id(member_id: object) -> None:
    if not isinstance(member_id, str) or not member_id or len(member_id) > 200 or "|" in member_id:
        raise ConfigError(f"member_id must be 1-200 characters without '|', got {member_id!r}")


def _socket_timeout(client: Any) -> float | None:
    try:
        value = client.connection_pool.connection_kwargs.get("socket_timeout")
    except AttributeError:
        return None
    return float(value) if value else None
