"""Share groups: queue semantics on a topic (Kafka's share groups, KIP-932), per message.

Share group G is the Redis consumer group ``share:G`` (``keys.share_group_name``) on every
partition stream of the topic, so it is independent of a consumer group named G. Members
are not assigned partitions: each reads every partition, and holds each message it
acquires under an **acquisition lock**. The lock is the pending entry itself: pending to
this member, with the delivery count the member was handed, idle for less than
``lock_timeout`` by Redis's clock (docs/architecture.md §4: Redis's clock decides expiry).

* Acquire (``share_fetch.lua``, one call per partition, pipelined per node): XAUTOCLAIM
  the entries idle for ``lock_timeout`` or more (their lock expired, or they were
  released), counting each as a delivery, then XREADGROUP ``>`` for new ones. Works on
  Redis 6.2.
* Settle (``share_settle.lua``): accept (XACK), renew (XCLAIM to me, JUSTID: idle 0, the
  count stays), release (XCLAIM to the consumer name ``~released`` with an idle past
  any lock: the next acquisition, by any member, takes it), each only if the lock still holds, atomically. A stale holder, whether or not
  another member took the message since, changes nothing and gets ``FencedError``.
* Dead letters (reject, delivery attempts exhausted, decode errors, trimmed entries) go
  to the group's dead-letter stream ``ns:{T}:dlq:G`` (:mod:`redcurrent.deadletter`): the
  lock is renewed, the dead letter written, then the entry accepted, as the consumer
  does (docs/architecture.md §7: a duplicate dead letter is possible, a lost message not).

Order is not kept: members and partitions interleave freely (docs/guides/share-groups.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from . import scripts
from . import topics as topics_mod
from .config import DEFAULT_NAMESPACE, positive, positive_int, seconds_to_ms
from .connection import Client, Connection, connect, transient_error
from .deadletter import DeadLetterWriter
from .errors import (
    ConfigError,
    ConsumerStoppedError,
    DecodeError,
    FencedError,
    IllegalStateError,
    RedcurrentConnectionError,
    RedcurrentError,
    translate,
)
from .keys import SHARE_RELEASED, Keys, share_group_name, validate_name
from .lifecycle import Lifecycle
from .protocols import Deserializer, Handler
from .replies import parse_share_fetch, parse_share_leave, parse_share_settle
from .retry import Backoff, DeadLetter
from .serde import REQUEUE_HEADER, decode_fields, entry_slots
from .stats import ConsumerStats
from .structs import Message, TopicPartition

__all__ = ["EXHAUSTED", "REJECTED", "Outcome", "ShareConsumer"]

log = logging.getLogger(__name__)

Outcome = Literal["accept", "release", "reject"]
REJECTED = "rejected"  # dead-letter reason of acknowledge(msg, "reject")
EXHAUSTED = "delivery attempts exhausted"  # dead-letter reason past max_delivery_attempts
_FETCH = scripts.script("share_fetch")
_SETTLE = scripts.script("share_settle")
_LEAVE = scripts.script("share_leave")
_POLL_MIN_S, _POLL_MAX_S = 0.005, 0.1  # idle polling: nothing blocks inside a script
_META_EVERY_S = 2.0  # how often partition growth is looked for
_RETRY_FOR_S = 30.0  # connection errors while acquiring are retried this long (the Consumer's request_timeout)
_HAND_OUT_SHARE = 0.9  # a buffered message is handed out only within this share of its lock


@dataclass(slots=True)
class _Held:
    """A message this member acquired: what a dead letter needs, and when its lock began
    (the monotonic time the acquiring call was sent: never later than Redis's)."""

    tp: TopicPartition
    fields: list[bytes] | None
    attempts: int
    since: float


class ShareConsumer(Lifecycle):
    """A member of share group ``group`` on ``topics``: any number of members read every
    partition, and each message is held by one member at a time under an acquisition
    lock of ``lock_timeout`` seconds. Example::

        async with ShareConsumer("orders", group="mailers", url=url) as sc:
            async for msg in sc:                      # acquired by this member
                await send_mail(msg.value)
                await sc.acknowledge(msg)             # "accept" (default), "release", "reject"

    Asking for the next message does not acknowledge the previous one: it stays with
    this member until acknowledged or until its lock expires, then any member may
    acquire it again (``msg.attempts`` is its delivery count, from 1). Once the lock
    has expired, :meth:`acknowledge` and :meth:`renew` raise ``FencedError`` and change
    nothing. A message delivered ``max_delivery_attempts`` times and not accepted is
    dead-lettered (reason ``"delivery attempts exhausted"``). Order is not kept.

    A new share group starts at ``start`` ("latest" or "earliest"). :meth:`process`
    runs a handler per message: accept when it returns, release after the consumer's
    default :class:`Backoff` when it raises, reject when it raises :class:`DeadLetter`.
    """

    def __init__(
        self,
        *topics: str,
        group: str,
        url: str | None = None,
        redis: Client | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        start: Literal["latest", "earliest"] = "latest",
        lock_timeout: float = 30.0,
        max_delivery_attempts: int = 5,
        batch_size: int = 100,
        deserializer: Deserializer | None = None,
    ) -> None:
        if not topics:
            raise ConfigError("ShareConsumer needs at least one topic: ShareConsumer('orders', group='mailers')")
        self.topics = tuple(dict.fromkeys(validate_name(t) for t in topics))
        self.group = validate_name(group, "group")
        if start not in ("latest", "earliest"):
            raise ConfigError(f"start must be 'latest' or 'earliest', got {start!r}")
        if deserializer is not None and not callable(deserializer):
            raise ConfigError("deserializer must be a callable taking bytes")
        self.lock_timeout = positive(lock_timeout, "lock_timeout")
        self.max_delivery_attempts = positive_int(max_delivery_attempts, "max_delivery_attempts")
        self._batch_size = positive_int(batch_size, "batch_size")
        self.member_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._keys = Keys(namespace)
        self._rgroup = share_group_name(self.group)
        self._lock_ms = max(1, seconds_to_ms(self.lock_timeout))
        self._start = start
        self._deserializer = deserializer
        self._url, self._given = url, redis
        self._conn: Connection | None = None
        self._dead_letters: DeadLetterWriter | None = None
        self._stats = ConsumerStats()
        self._locks_lost = 0
        self._backoff = Backoff()  # the Consumer's default backoff
        self._partitions: list[TopicPartition] = []
        self._born: dict[str, int] = {}  # partitions each topic had when this member started
        self._cursors: dict[TopicPartition, bytes | str] = {}
        self._dle: dict[str, bool] = {}
        self._meta_at = 0.0
        self._buffer: deque[Message] = deque()  # acquired, not handed out yet
        self._held: dict[tuple[str, int, str], _Held] = {}  # acquired, not settled
        self._state = "new"
        self._lifecycle = asyncio.Lock()
        self._wake = asyncio.Event()  # stop() ends an idle poll or a backoff at once
        self._idle = asyncio.Event()  # no process() call is in the middle of a message
        self._idle.set()
        self._processing: asyncio.Task[object] | None = None
        self._inner_stop: asyncio.Task[None] | None = None
        self._failing_since: float | None = None  # when acquiring began to fail

    def __repr__(self) -> str:
        return f"<ShareConsumer group={self.group!r} topics={list(self.topics)} member={self.member_id!r} {self._state}>"

    # -- lifecycle --
    async def start(self) -> None:
        """Connect, and create the share group on every partition (at ``start``) if it is new."""
        async with self._lifecycle:
            if self._state == "running":
                return
            if self._state == "stopped":
                raise ConsumerStoppedError("this share consumer was stopped; create a new one")
            self._conn = await connect(self._url, self._given)
            try:
                await self._refresh_partitions()
            except BaseException:
                await self._conn.close()
                raise
            self._dead_letters = DeadLetterWriter(self._conn.client, self._keys, self.group, self.member_id,
                                                  lambda t: self._dle.get(t, False), self._stats)
            self._state = "running"

    async def stop(self) -> None:
        """Stop: the message a :meth:`process` handler has in hand is settled first; every
        message acquired and not settled is released (one never handed out keeps its
        delivery count); this member's name is forgotten where it holds nothing.
        Idempotent; from inside a handler it returns at once and completes after it."""
        self._wake.set()
        if self._state == "stopped":
            return
        self._state = "stopping" if self._state == "running" else self._state
        if self._processing is not None and self._processing is asyncio.current_task():
            if self._inner_stop is None:
                self._inner_stop = asyncio.get_running_loop().create_task(self._shutdown(), name="redcurrent-share-stop")
            return
        await self._shutdown()

    async def close(self) -> None:
        """Alias of :meth:`stop`."""
        await self.stop()

    async def _shutdown(self) -> None:
        await self._idle.wait()
        async with self._lifecycle:
            if self._conn is None or self._state == "stopped":
                self._state = "stopped"
                return
            self._state = "stopped"
            try:
                await self._release_all()
                await self._leave()
            except Exception as exc:  # their locks expire: others acquire them after lock_timeout
                log.warning("share group %s: stopping without releasing everything: %s", self.group, exc)
            finally:
                await self._conn.close()

    async def _release_all(self) -> None:
        buffered = {(m.topic, m.partition, m.id) for m in self._buffer}
        self._buffer.clear()
        calls = [self._settle_call(h.tp, key[2], h.attempts, "return" if key in buffered else "release")
                 for key, h in self._held.items()]
        self._held.clear()
        if calls:
            await scripts.execute_calls(self._client, calls)  # FENCED: it was no longer ours

    async def _leave(self) -> None:
        calls = [scripts.Call(_LEAVE, [self._keys.stream(tp.topic, tp.partition)], [self._rgroup, self.member_id])
                 for tp in self._partitions]
        for reply in await scripts.execute_calls(self._client, calls) if calls else []:
            if not isinstance(reply, BaseException):
                parse_share_leave(reply)

    @property
    def _client(self) -> Client:
        if self._conn is None:
            raise ConsumerStoppedError("start the share consumer first: 'async with ShareConsumer(...)'")
        return self._conn.client

    # -- partitions --
    async def _refresh_partitions(self) -> None:
        """Read the topics' partition counts; create the group on partitions new to this member."""
        self._meta_at = time.monotonic()
        parts: list[TopicPartition] = []
        for t in self.topics:
            meta = await topics_mod.read_meta(self._client, self._keys, t)
            count = meta.partitions if meta is not None else 0
            self._dle[t] = bool(meta and meta.config.dead_letter_expired)
            # Partitions born after this member started are read from 0 (docs/architecture.md §10);
            # so are those added while no member ran: alter_partitions creates the group on
            # them at 0, as it knows the share group from this set.
            if t not in self._born:
                await self._client.sadd(self._keys.share_groups(t), self.group)
            self._born.setdefault(t, count)
            parts += [TopicPartition(t, p) for p in range(count)]
        new = [tp for tp in parts if tp not in self._cursors]
        if new:
            calls = [self._fetch_call(tp, 0) for tp in new]
            for tp, reply in zip(new, await scripts.execute_calls(self._client, calls), strict=True):
                if isinstance(reply, BaseException):
                    raise translate(reply, f"creating share group {self.group!r} on {tp.topic}[{tp.partition}]")
                self._cursors[tp] = b"0-0"
        self._partitions = parts

    def _fetch_call(self, tp: TopicPartition, count: int) -> scripts.Call:
        start = "$" if self._start == "latest" and tp.partition < self._born.get(tp.topic, 0) else "0"
        return scripts.Call(_FETCH, [self._keys.stream(tp.topic, tp.partition)],
                            [self._rgroup, self.member_id, count, self._lock_ms,
                             self._cursors.get(tp, b"0-0"), start])

    def _settle_call(self, tp: TopicPartition, entry_id: str, attempts: int, op: str) -> scripts.Call:
        return scripts.Call(_SETTLE, [self._keys.stream(tp.topic, tp.partition)],
                            [self._rgroup, self.member_id, entry_id, attempts, self._lock_ms, op,
                             SHARE_RELEASED])

    # -- acquiring --
    async def _fetch(self, errors: list[RedcurrentError]) -> int:
        """One acquisition round over every partition; how many entries were acquired.
        A partition whose call failed adds its error to ``errors``."""
        if time.monotonic() - self._meta_at >= _META_EVERY_S:
            await self._refresh_partitions()
        parts = self._partitions
        if not parts:
            return 0
        sent = time.monotonic()
        self._forget_expired(sent)
        per = max(1, self._batch_size // len(parts))
        try:
            replies = await scripts.execute_calls(self._client, [self._fetch_call(tp, per) for tp in parts])
        except Exception as exc:
            raise transient_error(exc, "acquiring messages") from None
        acquired = 0
        for tp, reply in zip(parts, replies, strict=True):
            if isinstance(reply, BaseException):  # the other partitions' entries are handled first
                errors.append(transient_error(reply, f"acquiring messages of {tp.topic}[{tp.partition}]"))
                continue
            fetched = parse_share_fetch(reply, tp)
            self._cursors[tp] = fetched.cursor
            for raw_id in fetched.deleted:  # trimmed while pending, already dropped (Redis 7+)
                self._stats.trimmed += 1
                await self._write_dead_letter(tp, raw_id.decode(), None, "trimmed", 0, None)
            for (raw_id, fields), count in zip(fetched.entries, fetched.counts, strict=True):
                acquired += 1
                await self._admit(tp, raw_id, fields, int(count), sent)
        return acquired

    def _forget_expired(self, now: float) -> None:
        # Handed-out messages whose lock has passed are no longer ours to release at stop.
        buffered = {(m.topic, m.partition, m.id) for m in self._buffer}
        for key in [k for k, h in self._held.items() if now - h.since >= self.lock_timeout and k not in buffered]:
            del self._held[key]

    async def _admit(self, tp: TopicPartition, raw_id: bytes, fields: list[bytes] | None, count: int,
                     since: float) -> None:
        """Buffer an acquired entry, or settle it here: exhausted, trimmed, undecodable,
        expired, or a dead letter requeued for another group."""
        eid = raw_id.decode()
        self._held[(tp.topic, tp.partition, eid)] = _Held(tp, fields, count, since)
        try:
            if count > self.max_delivery_attempts:  # its last delivery's lock expired
                await self._dead_letter(tp, eid, count, EXHAUSTED, count - 1, None)
                return
            if fields is None:  # deleted while pending (Redis 6.2 reports it this way)
                self._stats.trimmed += 1
                await self._dead_letter(tp, eid, count, "trimmed", count, None)
                return
            try:
                msg = decode_fields(tp.topic, tp.partition, raw_id, count, fields, self._deserializer)
            except DecodeError as exc:
                self._stats.decode_failures += 1
                await self._dead_letter(tp, eid, count, "decode_error", count, exc)
                return
            if msg.expires_at is not None and msg.expires_at <= time.time() * 1000:
                self._stats.expired += 1
                if self._dle.get(tp.topic):
                    await self._dead_letter(tp, eid, count, "expired", count, None)
                else:
                    await self._settle(tp, eid, count, "accept")
                return
            meant_for = msg.headers.get(REQUEUE_HEADER)
            if meant_for is not None and meant_for != self.group:
                self._stats.requeue_skipped += 1
                await self._settle(tp, eid, count, "accept")
                return
        except FencedError:  # the lock passed while we settled it: another member has it
            self._locks_lost += 1
            return
        self._buffer.append(msg)

    # -- the iterator --
    def __aiter__(self) -> ShareConsumer:
        return self

    async def __anext__(self) -> Message:
        if self._state == "new":
            await self.start()
        delay, failures = _POLL_MIN_S, 0
        while True:
            if self._state != "running":
                raise StopAsyncIteration
            while self._buffer:
                msg = self._buffer.popleft()
                held = self._held.get((msg.topic, msg.partition, msg.id))
                if held is None:
                    continue
                if time.monotonic() - held.since < self.lock_timeout * _HAND_OUT_SHARE:
                    return msg
                # Its lock (nearly) expired while it waited here: let another member have it.
                del self._held[(msg.topic, msg.partition, msg.id)]
                self._locks_lost += 1
            errors: list[RedcurrentError] = []
            try:
                acquired = await self._fetch(errors)
            except RedcurrentConnectionError as exc:
                acquired, errors = 0, [exc]
            if errors:
                failing = self._failing_since = self._failing_since or time.monotonic()
                self._stats.fetch_errors += 1
                failures += 1
                if time.monotonic() - failing > _RETRY_FOR_S or not isinstance(errors[0], RedcurrentConnectionError):
                    self._failing_since = None
                    raise errors[0]
                log.warning("share group %s: %s; retrying", self.group, errors[0])
            else:
                self._failing_since, failures = None, 0
            if acquired:
                delay = _POLL_MIN_S
                continue
            await self._pause(self._backoff.delay(failures) if errors else delay)
            delay = min(delay * 2, _POLL_MAX_S)

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if :meth:`stop` is called."""
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

    # -- settling --
    async def acknowledge(self, msg: Message, outcome: Outcome = "accept") -> None:
        """Settle ``msg``, which this member acquired:

        * ``"accept"``: done;
        * ``"release"``: available again at once to any member (its delivery count
          grows when it is acquired again); at ``max_delivery_attempts`` it is
          dead-lettered instead (``"delivery attempts exhausted"``);
        * ``"reject"``: dead-lettered with reason ``"rejected"``.

        Raises ``FencedError`` and changes nothing if its lock has expired (whether or
        not another member acquired it since). Example: ``await sc.acknowledge(msg, "release")``.
        """
        if outcome not in ("accept", "release", "reject"):
            raise ConfigError(f"outcome must be 'accept', 'release' or 'reject', got {outcome!r}")
        await self._outcome(msg, outcome, None)

    async def renew(self, msg: Message) -> None:
        """Extend the lock on ``msg`` by ``lock_timeout`` from now. Raises ``FencedError``
        and changes nothing if its lock has already expired."""
        since = time.monotonic()
        await self._settle(*self._where(msg), "renew")
        held = self._held.get((msg.topic, msg.partition, msg.id))
        if held is not None:
            held.since = since

    def _where(self, msg: Message) -> tuple[TopicPartition, str, int]:
        if not isinstance(msg, Message):
            raise TypeError(f"expected a Message, not {type(msg).__name__}")
        if self._state not in ("running", "stopping"):
            raise ConsumerStoppedError("this share consumer is not running; nothing was changed")
        return TopicPartition(msg.topic, msg.partition), msg.id, msg.attempts

    async def _outcome(self, msg: Message, outcome: Outcome, error: BaseException | None) -> None:
        tp, eid, count = self._where(msg)
        try:
            if outcome == "accept":
                await self._settle(tp, eid, count, "accept")
            elif outcome == "reject":
                await self._dead_letter(tp, eid, count, REJECTED, count, error)
            elif count >= self.max_delivery_attempts:
                await self._dead_letter(tp, eid, count, EXHAUSTED, count, error)
            else:
                await self._settle(tp, eid, count, "release")
        finally:  # settled, or fenced: not ours either way
            self._held.pop((tp.topic, tp.partition, eid), None)

    async def _settle(self, tp: TopicPartition, entry_id: str, attempts: int, op: str) -> None:
        call = self._settle_call(tp, entry_id, attempts, op)
        try:
            reply = await scripts.run(self._client, call.script, call.keys, call.args)
        except Exception as exc:
            raise translate(exc, f"share group {op}") from None
        parse_share_settle(reply, tp, entry_id)

    async def _dead_letter(self, tp: TopicPartition, entry_id: str, count: int, reason: str, attempts: int,
                           error: BaseException | None) -> None:
        """Renew the lock (FencedError: nothing written), write the dead letter, accept."""
        await self._settle(tp, entry_id, count, "renew")
        held = self._held.get((tp.topic, tp.partition, entry_id))
        await self._write_dead_letter(tp, entry_id, held.fields if held else None, reason, attempts, error)
        await self._settle(tp, entry_id, count, "accept")

    async def _write_dead_letter(self, tp: TopicPartition, entry_id: str, fields: list[bytes] | None,
                                 reason: str, attempts: int, error: BaseException | None) -> None:
        assert self._dead_letters is not None
        entry = entry_slots(entry_id.encode(), attempts, fields) if fields is not None else None
        try:
            await self._dead_letters.write(tp, self._keys.stream(tp.topic, tp.partition), entry_id, entry,
                                           reason, attempts, error)
        except Exception as exc:
            raise translate(exc, "writing a dead letter") from None

    # -- process --
    async def process(self, handler: Handler) -> None:
        """Call ``await handler(msg)`` for every message this member acquires, one at a
        time, until :meth:`stop`: accept when it returns; when it raises, wait the
        Consumer's default :class:`Backoff` for that attempt, then release (or
        dead-letter once ``max_delivery_attempts`` is reached); reject when it raises
        :class:`DeadLetter`. A message whose lock expired meanwhile is counted
        (``stats()["locks_lost"]``) and left to the member that holds it now. Run more
        members (tasks or processes) for more throughput."""
        if not callable(handler):
            raise TypeError("handler must be an async callable taking a Message")
        if self._state not in ("new", "running"):
            raise ConsumerStoppedError("this share consumer was stopped; create a new one")
        if self._processing is not None:
            raise IllegalStateError("process() is already running on this share consumer; one call at a time")
        self._processing = asyncio.current_task()
        try:
            async for msg in self:
                self._idle.clear()
                try:
                    await self._handle(handler, msg)
                finally:
                    self._idle.set()
        finally:
            self._processing = None

    async def _handle(self, handler: Handler, msg: Message) -> None:
        try:
            try:
                await handler(msg)
            except DeadLetter as exc:
                self._stats.failed += 1
                await self._outcome(msg, "reject", exc)
            except Exception as exc:
                self._stats.failed += 1
                log.info("share group %s: handler failed on %s[%d] %s (delivery %d): %r",
                         self.group, msg.topic, msg.partition, msg.id, msg.attempts, exc)
                await self._pause(self._backoff.delay(msg.attempts))
                await self._outcome(msg, "release", exc)
            else:
                await self._outcome(msg, "accept", None)
                self._stats.processed += 1
        except RedcurrentConnectionError as exc:  # not settled: its lock expires, it comes back
            self._stats.redis_errors += 1
            log.warning("share group %s: %s[%d] %s not settled: %s", self.group, msg.topic, msg.partition,
                        msg.id, exc)
        except FencedError:
            self._locks_lost += 1
            log.warning("share group %s: the lock on %s[%d] %s expired before it was settled; "
                        "another member may handle it again (raise lock_timeout, or renew())",
                        self.group, msg.topic, msg.partition, msg.id)

    # -- introspection --
    def partitions(self) -> Sequence[TopicPartition]:
        """Every partition this member reads (all of its topics')."""
        return tuple(self._partitions)

    def stats(self) -> dict[str, int]:
        """Counters: processed, failed, dead_lettered, expired, decode_failures, trimmed,
        requeue_skipped, locks_lost (messages whose lock passed before they were settled);
        a counter that never counted is absent."""
        out = self._stats.as_dict()
        if self._locks_lost:
            out["locks_lost"] = self._locks_lost
        return out
