"""Dispatchers: how a fetched batch reaches user code, with retries and dead letters.

* ``EachDispatcher``  — ``process(handler)``: one message at a time, in order.
* ``BatchDispatcher`` — ``process_batch(handler)``: the whole batch of one partition.
* ``IteratorDispatcher`` — ``async for``: one message at a time through a queue.
* ``TransactionalDispatcher`` — ``process(handler, transactional=True)``: one message
  at a time, in order; the outputs each returns are committed with the acks of the
  batch in one fenced script call (:mod:`redcurrent.transactional`).

Failed attempts retry in place (the partition waits, order is kept) with backoff;
each failure is recorded in the entry's delivery count (fenced), so attempts survive
restarts. After ``max_attempts`` the message is dead-lettered, then acked. Before
every invocation, first or retry, the message's TTL is checked again, and a message
whose count already exceeds ``max_attempts`` (its consumer died on it each time) is
dead-lettered without another try.

A dispatcher serves one ``process()`` call: when that call ends it is ``closed`` and
calls no handler again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import tracing
from .deadletter import reason_for
from .errors import ConfigError, FencedError, TopicError
from .fetcher import LeaseLost, PartitionFetcher
from .protocols import BatchHandler, Handler
from .retry import Backoff, BatchError, DeadLetter, Retry, RetryPolicy
from .stats import ConsumerStats, Histogram
from .structs import Message
from .transactional import Outputs, Pending

__all__ = ["BatchDispatcher", "EachDispatcher", "IteratorDispatcher", "Policy", "TransactionalDispatcher"]

log = logging.getLogger(__name__)

T = TypeVar("T", Message, list[Message])  # what a handler takes: one message, or a batch


@dataclass(frozen=True, slots=True)
class Policy:
    """Retry limits of one consumer: attempts and backoff (per topic, with
    ``topic_retry``), and the time one handler call may take."""

    max_attempts: int
    backoff: Backoff
    handler_timeout: float | None
    overrides: Mapping[str, RetryPolicy] = field(default_factory=dict)

    def for_topic(self, topic: str) -> tuple[int, Backoff]:
        o = self.overrides.get(topic)
        return (o.max_attempts, o.backoff) if o is not None else (self.max_attempts, self.backoff)


class HandlerCancelledError(Exception):
    """The handler raised CancelledError although nobody cancelled it (a library's own
    timeout, say): a failed attempt like any other error, never a stop."""


def _handing_out(fetcher: PartitionFetcher, dispatcher: _Base) -> bool:
    return not dispatcher.closed and not fetcher.stopping and not fetcher.stale and fetcher.ctx.lease_valid()


async def _call(dispatcher: _Base, fn: Callable[[T], Awaitable[object]], arg: T) -> object:
    """The handler's result (what a transactional handler returns is its outputs)."""
    if tracing.active():
        with tracing.consume_span(arg):  # a "process" span around the handler call
            return await _timed_call(dispatcher, fn, arg)
    return await _timed_call(dispatcher, fn, arg)


async def _timed_call(dispatcher: _Base, fn: Callable[[T], Awaitable[object]], arg: T) -> object:
    timeout = dispatcher.handler_timeout
    started = time.perf_counter()
    try:
        if timeout is None:
            return await fn(arg)
        else:
            try:
                async with asyncio.timeout(timeout) as cm:
                    return await fn(arg)
            except TimeoutError as exc:
                if cm.expired():
                    raise TimeoutError(f"handler exceeded handler_timeout={timeout}s") from exc
                raise
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise  # a real cancellation: stop, revoke, or the process() call ended
        raise HandlerCancelledError("the handler raised CancelledError without being cancelled") from None
    finally:
        dispatcher.latency.observe(time.perf_counter() - started)


async def _failed(d: _Base, fetcher: PartitionFetcher, msgs: list[Message], exc: BaseException) -> float:
    """Record a failed attempt of each message (its own count + 1); the delay before the
    next one. The caller dead-letters the messages out of attempts first (``_exhausted``)."""
    attempts = max(m.attempts for m in msgs)
    max_attempts, backoff = d.policy.for_topic(fetcher.tp.topic)
    delay = exc.after if isinstance(exc, Retry) and exc.after is not None else backoff.delay(attempts)
    d.stats.retried += len(msgs)
    log.warning(
        "handler failed on %s[%d] %s (attempt %d of %d): %s: %s; retrying in %.2fs",
        fetcher.tp.topic, fetcher.tp.partition, msgs[0].id, attempts, max_attempts,
        type(exc).__name__, exc, delay,
        extra={"topic": fetcher.tp.topic, "partition": fetcher.tp.partition,
               "entry_id": msgs[0].id, "attempts": attempts},
    )
    for m in msgs:
        await fetcher.note_attempt(m.id, m.attempts + 1)
    return delay


def _exhausted(policy: Policy, fetcher: PartitionFetcher, msg: Message, exc: BaseException) -> bool:
    """No more tries for ``msg`` after this failure: the handler said so, or it had its last."""
    return isinstance(exc, DeadLetter) or msg.attempts >= policy.for_topic(fetcher.tp.topic)[0]


async def _dead_letter(policy: Policy, fetcher: PartitionFetcher, msg: Message, exc: BaseException | None,
                       *, advance: bool = True) -> None:
    await fetcher.dead_letter(msg.id, None, reason_for(exc, policy.handler_timeout), msg.attempts, exc)
    fetcher.finish(msg.id, advance=advance)


async def _ready(d: _Base, fetcher: PartitionFetcher, msg: Message, *, advance: bool = True) -> bool:
    """Checks before an invocation; False if ``msg`` was finished instead (expired, or
    out of attempts because its consumer died while handling it)."""
    if msg.expires_at is not None and msg.expires_at <= time.time() * 1000:
        await fetcher.expired(msg, advance=advance)
        return False
    max_attempts, _ = d.policy.for_topic(fetcher.tp.topic)
    if msg.attempts > max_attempts:
        d.stats.failed += 1
        await _dead_letter(d.policy, fetcher, msg, None, advance=advance)
        return False
    fetcher.invoking(msg)
    return True


async def _sleep_unless_stopped(fetcher: PartitionFetcher, dispatcher: _Base, delay: float) -> bool:
    """Sleep ``delay``; False if the partition is being stopped (or the dispatcher closed) meanwhile."""
    try:
        async with asyncio.timeout(delay):
            await fetcher.stop_event.wait()
        return False
    except TimeoutError:
        return _handing_out(fetcher, dispatcher)


class _Base:
    closed = False
    concurrent = False  # True: __call__ queues the batch and returns (see redcurrent.lanes)

    def __init__(self, policy: Policy, stats: ConsumerStats, latency: Histogram) -> None:
        self.policy = policy
        self.handler_timeout = policy.handler_timeout  # read per call: one attribute away
        self.stats = stats
        self.latency = latency


class EachDispatcher(_Base):
    """Calls ``handler(message)`` for each message of a partition, in order."""

    def __init__(self, handler: Handler, policy: Policy, stats: ConsumerStats, latency: Histogram) -> None:
        super().__init__(policy, stats, latency)
        self.handler = handler

    async def __call__(self, fetcher: PartitionFetcher, msgs: list[Message]) -> None:
        plain = fetcher.plain
        for msg in msgs:
            if not _handing_out(fetcher, self) or not await self._one(fetcher, msg, plain):
                return

    async def _one(self, fetcher: PartitionFetcher, msg: Message, plain: bool = False) -> bool:
        """Handle one message to its end; False if it was left pending (stop, fenced)."""
        policy, stats = self.policy, self.stats
        while True:
            if plain:
                if fetcher.discarded:  # after a seek: see PartitionFetcher.invoking
                    fetcher.discarded.discard(msg.id)
                fetcher.held[msg.id] = msg.attempts  # _ready's bookkeeping, nothing to check
            elif not await _ready(self, fetcher, msg):
                return True
            plain = False
            try:
                await _call(self, self.handler, msg)
                stats.processed += 1
                fetcher.finish(msg.id)
                return True
            except Exception as exc:
                if msg.id in fetcher.manually_acked:  # acked by hand, then raised: done
                    stats.processed += 1
                    fetcher.finish(msg.id)
                    return True
                stats.failed += 1
                if fetcher.stale:
                    return False  # a seek discarded it meanwhile: no retry, no dead letter
                if _exhausted(policy, fetcher, msg, exc):
                    await _dead_letter(policy, fetcher, msg, exc)
                    return True
                try:
                    delay = await _failed(self, fetcher, [msg], exc)
                except FencedError:
                    return False
                if not await _sleep_unless_stopped(fetcher, self, delay):
                    return False
                msg = msg._replace(attempts=msg.attempts + 1)


class BatchDispatcher(_Base):
    """Calls ``handler(messages)`` with each fetched batch of one partition."""

    def __init__(self, handler: BatchHandler, policy: Policy, stats: ConsumerStats, latency: Histogram) -> None:
        super().__init__(policy, stats, latency)
        self.handler = handler

    async def __call__(self, fetcher: PartitionFetcher, msgs: list[Message]) -> None:
        policy = self.policy
        pending = msgs
        plain = fetcher.plain
        while pending:
            if not _handing_out(fetcher, self):
                return
            if plain:
                fetcher.invoking_all(pending)  # _ready's bookkeeping, nothing to check
                plain = False
            else:
                pending = [m for m in pending if await _ready(self, fetcher, m, advance=False)]
                if not pending:
                    return
            try:
                await _call(self, self.handler, pending)
                self.stats.processed += len(pending)
                fetcher.finish_all(pending)
                return
            except Exception as exc:
                if fetcher.stale:
                    return  # a seek discarded the batch meanwhile: no retry, no dead letter
                failed = exc.failed if isinstance(exc, BatchError) else pending
                failed_ids = {m.id for m in failed} - fetcher.manually_acked
                # Messages finished out of turn never move ``last_handled`` past one still
                # pending; the fetcher moves it once the whole batch is finished.
                ok = [m for m in pending if m.id not in failed_ids]
                self.stats.processed += len(ok)
                self.stats.failed += len(pending) - len(ok)
                for m in ok:
                    fetcher.finish(m.id, advance=False)
                pending = [m for m in pending if m.id in failed_ids]
                for m in [m for m in pending if _exhausted(policy, fetcher, m, exc)]:
                    await _dead_letter(policy, fetcher, m, exc, advance=False)
                pending = [m for m in pending if m.id in fetcher.held]
                if not pending:
                    return
                try:
                    delay = await _failed(self, fetcher, pending, exc)
                except FencedError:
                    return
                if not await _sleep_unless_stopped(fetcher, self, delay):
                    return
                pending = [m._replace(attempts=m.attempts + 1) for m in pending]


class TransactionalDispatcher(_Base):
    """Calls ``handler(message)`` for each message of a partition, in order, and collects
    the outputs it returns; the batch's outputs and the acks of its inputs are then
    committed in one fenced script call. A crash before the commit writes and acks
    nothing, so the batch is handled again: exactly once either way. On a failure the
    outputs of the messages before it are committed first, then the retry and
    dead-letter policy applies (a dead-lettered input is acked with no outputs)."""

    def __init__(self, handler: Handler, outputs: Outputs, policy: Policy, stats: ConsumerStats,
                 latency: Histogram) -> None:
        super().__init__(policy, stats, latency)
        self.handler = handler
        self.outputs = outputs

    async def __call__(self, fetcher: PartitionFetcher, msgs: list[Message]) -> None:
        pending = Pending(fetcher.tp)
        plain = fetcher.plain
        for msg in msgs:
            if not _handing_out(fetcher, self) or not await self._one(fetcher, msg, pending, plain):
                break
        await self._commit(fetcher, pending)

    async def _one(self, fetcher: PartitionFetcher, msg: Message, pending: Pending, plain: bool) -> bool:
        """Handle one message until its outputs are pending (or it is finished otherwise);
        False if it was left unhandled (stop, fenced, a seek)."""
        policy = self.policy
        while True:
            if plain:
                if fetcher.discarded:
                    fetcher.discarded.discard(msg.id)
                fetcher.held[msg.id] = msg.attempts
            elif not await _ready(self, fetcher, msg, advance=False):  # earlier ones are not committed
                return True
            plain = False
            error: Exception | None = None
            try:
                result = await _call(self, self.handler, msg)
            except Exception as exc:
                error = exc
            if error is None:
                try:
                    await self.outputs.add(pending, msg, result)
                    return True
                except (ConfigError, TopicError):
                    await self._commit(fetcher, pending)  # an output that cannot be written: stop here
                    raise
                except Exception as exc:  # a bad result: a failed attempt, as a handler error is
                    error = exc
            self.stats.failed += 1
            if fetcher.stale:
                return False  # a seek discarded it meanwhile: no retry, no dead letter
            await self._commit(fetcher, pending)  # what succeeded before it
            if _exhausted(policy, fetcher, msg, error):
                await _dead_letter(policy, fetcher, msg, error)
                return True
            try:
                delay = await _failed(self, fetcher, [msg], error)
            except FencedError:
                return False
            if not await _sleep_unless_stopped(fetcher, self, delay):
                return False
            msg = msg._replace(attempts=msg.attempts + 1)

    async def _commit(self, fetcher: PartitionFetcher, pending: Pending) -> None:
        """Commit what is pending, with the acks of inputs finished meanwhile (expired,
        dead-lettered): transactional acks ride on commits, not on the next fetch."""
        if not pending.msgs or fetcher.stale:
            pending.clear()
            return
        acks, fetcher.acks = fetcher.acks, []
        try:
            await self.outputs.commit(fetcher, pending, acks)
        except BaseException as exc:
            fetcher.acks = acks + fetcher.acks
            if isinstance(exc, FencedError) and not isinstance(exc, LeaseLost):
                # (LeaseLost: Redis unreachable past the lease, the commit is ambiguous;
                # the batch is read again from our pending list, where a landed one is not)
                self.stats.commits_fenced += 1
                log.warning("%s[%d] was lost: the outputs of %d message(s) were not written (fenced)",
                            fetcher.tp.topic, fetcher.tp.partition, len(pending.msgs))
            raise
        for m in pending.msgs:
            fetcher.finish(m.id, ack=False)  # acked by the commit; in order, so each advances
        self.stats.processed += len(pending.msgs)
        pending.clear()


@dataclass(slots=True)
class Slot:
    """A message waiting in the iterator's queue. ``done`` resolves True once the
    message is handled, False if it was abandoned (the loop raised): not acked, and
    None if it expired while it waited in the queue. ``gen`` is the fetcher's
    generation when it was queued: a seek since then discarded it."""

    msg: Message
    fetcher: PartitionFetcher
    done: asyncio.Future[bool | None]
    yielded: bool = False
    gen: int = 0


class IteratorDispatcher(_Base):
    """Feeds ``async for``: the next message of a partition is queued once the previous
    one was taken and the iterator moved on (or it was acked)."""

    def __init__(self, queue: asyncio.Queue[Slot | None], auto_ack: bool, policy: Policy, stats: ConsumerStats, latency: Histogram) -> None:
        super().__init__(policy, stats, latency)
        self.queue = queue
        self.auto_ack = auto_ack

    async def __call__(self, fetcher: PartitionFetcher, msgs: list[Message]) -> None:
        loop = asyncio.get_running_loop()
        max_attempts, _ = self.policy.for_topic(fetcher.tp.topic)
        for msg in msgs:
            if not _handing_out(fetcher, self):
                return
            if msg.expires_at is not None and msg.expires_at <= time.time() * 1000:
                await fetcher.expired(msg)
                continue
            if msg.attempts > max_attempts:
                # Its consumers died with it in hand every time: dead letters, not a crash loop.
                self.stats.failed += 1
                await _dead_letter(self.policy, fetcher, msg, None)
                continue
            slot = Slot(msg, fetcher, loop.create_future(), gen=fetcher.generation)
            self.queue.put_nowait(slot)
            stop: asyncio.Future[Any] = asyncio.ensure_future(fetcher.stop_event.wait())
            try:
                waiting: set[asyncio.Future[Any]] = {slot.done, stop}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if not slot.done.done() and slot.yielded:
                    await asyncio.shield(slot.done)  # in the user's hands: let it finish (stop() bounds this)
            finally:
                stop.cancel()
            if not slot.done.done():
                slot.done.cancel()  # never yielded: stays pending for the next owner
                return
            if slot.done.cancelled() or slot.done.result() is False:
                return  # abandoned: the loop raised with it in hand; not acked
            if slot.done.result() is None:
                await fetcher.expired(msg)  # its TTL passed while it waited to be handed out
                continue
            fetcher.finish(msg.id, ack=self.auto_ack)
            self.stats.processed += 1
