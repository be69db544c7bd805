"""Dispatchers: how a fetched batch reaches user code, with retries and dead letters.

* ``EachDispatcher``  — ``process(handler)``: one message at a time, in order.
* ``BatchDispatcher`` — ``process_batch(handler)``: the whole batch of one partition.
* ``IteratorDispatcher`` — ``async for``: one message at a time through a queue.

Failed attempts retry in place (the partition waits, order is kept) with backoff;
each failure is recorded in the entry's delivery count (fenced), so attempts survive
restarts. After ``max_attempts`` the message is dead-lettered, then acked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import FencedError
from .fetcher import PartitionFetcher
from .retry import Backoff, BatchError, DeadLetter, Retry, RetryPolicy
from .structs import Message

__all__ = ["BatchDispatcher", "EachDispatcher", "IteratorDispatcher", "Policy"]

log = logging.getLogger(__name__)

Handler = Callable[[Message], Awaitable[Any]]
BatchHandler = Callable[[list[Message]], Awaitable[Any]]


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Cumulative-bucket histogram of handler latency in seconds (Prometheus-shaped)."""

    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.sum += seconds
        for i, bound in enumerate(self.buckets):
            if seconds <= bound:
                self.counts[i] += 1
                break

    def cumulative(self) -> list[tuple[float, int]]:
        out, total = [], 0
        for bound, n in zip(self.buckets, self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


@dataclass(frozen=True, slots=True)
class Policy:
    """Retry policy of one consumer."""

    max_attempts: int
    backoff: Backoff
    handler_timeout: float | None
    stats: dict[str, int]
    latency: Histogram
    overrides: Mapping[str, RetryPolicy] = field(default_factory=dict)

    def for_topic(self, topic: str) -> tuple[int, Backoff]:
        o = self.overrides.get(topic)
        return (o.max_attempts, o.backoff) if o is not None else (self.max_attempts, self.backoff)

    def count(self, name: str, n: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + n


def _handing_out(fetcher: PartitionFetcher) -> bool:
    return not fetcher.stopping and fetcher.ctx.lease_valid()


async def _call(policy: Policy, fn: Callable[[Any], Awaitable[Any]], arg: Any) -> None:
    started = time.perf_counter()
    try:
        if policy.handler_timeout is None:
            await fn(arg)
        else:
            try:
                async with asyncio.timeout(policy.handler_timeout) as cm:
                    await fn(arg)
            except TimeoutError as exc:
                if cm.expired():
                    raise TimeoutError(f"handler exceeded handler_timeout={policy.handler_timeout}s") from exc
                raise
    finally:
        policy.latency.observe(time.perf_counter() - started)


async def _failed(
    policy: Policy, fetcher: PartitionFetcher, msgs: list[Message], exc: BaseException
) -> float | None:
    """Record a failed attempt; the delay before the next one, or None to dead-letter."""
    attempts = max(m.attempts for m in msgs)
    max_attempts, backoff = policy.for_topic(fetcher.tp.topic)
    if isinstance(exc, DeadLetter) or attempts >= max_attempts:
        return None
    delay = exc.after if isinstance(exc, Retry) and exc.after is not None else backoff.delay(attempts)
    policy.count("retried", len(msgs))
    log.warning(
        "handler failed on %s[%d] %s (attempt %d of %d): %s: %s; retrying in %.2fs",
        fetcher.tp.topic, fetcher.tp.partition, msgs[0].id, attempts, max_attempts,
        type(exc).__name__, exc, delay,
        extra={"topic": fetcher.tp.topic, "partition": fetcher.tp.partition,
               "entry_id": msgs[0].id, "attempts": attempts},
    )
    for m in msgs:
        await fetcher.note_attempt(m.id, attempts + 1)
    return delay


async def _dead_letter(policy: Policy, fetcher: PartitionFetcher, msg: Message, exc: BaseException) -> None:
    reason = exc.reason if isinstance(exc, DeadLetter) else "max_attempts"
    if isinstance(exc, TimeoutError) and policy.handler_timeout is not None and reason == "max_attempts":
        reason = "handler_timeout"
    slots = fetcher.raw.get(msg.id) or [msg.id.encode(), msg.attempts, b"", b"", b"", b"", b"", b""]
    await fetcher.ctx.dead_letters.write_raw(
        fetcher.tp, fetcher.stream, msg.id, slots, reason, msg.attempts, exc
    )


async def _sleep_unless_stopped(fetcher: PartitionFetcher, delay: float) -> bool:
    """Sleep ``delay``; False if the partition is being stopped meanwhile."""
    try:
        async with asyncio.timeout(delay):
            await fetcher.stop_event.wait()
        return False
    except TimeoutError:
        return not fetcher.stopping


class EachDispatcher:
    """Calls ``handler(message)`` for each message of a partition, in order."""

    def __init__(self, handler: Handler, policy: Policy) -> None:
        self.handler = handler
        self.policy = policy

    async def __call__(self, fetcher: PartitionFetcher, msgs: list[Message]) -> tuple[list[str], bool]:
        done: list[str] = []
        for msg in msgs:
            if not _handing_out(fetcher):
                break
            if not await self._one(fetcher, msg):
                break
            done.append(msg.id)
        return done, True

    async def _one(self, fetcher: PartitionFetcher, msg: Message) -> bool:
        policy = self.policy
        while True:
            try:
                await _call(policy, self.handler, msg)
                policy.count("processed")
                return True
            except (TimeoutError, Exception) as exc:
                policy.count("failed")
                try:
                    delay = await _failed(policy, fetcher, [msg], exc)
                except FencedError:
                    return False
                if delay is None:
                    await _dead_letter(policy, fetcher, msg, exc)
                    return True
                if not await _sleep_unless_stopped(fetcher, delay):
                    return False
                msg = msg._replace(attempts=msg.attempts + 1)


class BatchDispatcher:
    """Calls ``handler(messages)`` with each fetched batch of one partition."""

    def __init__(self, handler: BatchHandler, policy: Policy) -> None:
        self.handler = handler
        self.policy = policy

    async def __call__(self, fetcher: PartitionFetcher, msgs: list[Message]) -> tuple[list[str], bool]:
        return await self._batch(fetcher, msgs), True

    async def _batch(self, fetcher: PartitionFetcher, msgs: list[Message]) -> list[str]:
        policy = self.policy
        pending = msgs
        done: list[str] = []
        while pending:
            if not _handing_out(fetcher):
                return done
            try:
                await _call(policy, self.handler, pending)
                policy.count("processed", len(pending))
                return done + [m.id for m in pending]
            except (TimeoutError, Exception) as exc:
                failed = exc.failed if isinstance(exc, BatchError) else pending
                failed_ids = {m.id for m in failed}
                ok = [m for m in pending if m.id not in failed_ids]
                policy.count("processed", len(ok))
                policy.count("failed", len(failed))
                done += [m.id for m in ok]
                pending = [m for m in pending if m.id in failed_ids]
                if not pending:
                    return done
                try:
                    delay = await _failed(policy, fetcher, pending, exc)
                except FencedError:
                    return done
                if delay is None:
                    for m in pending:
                        await _dead_letter(policy, fetcher, m, exc)
                    return done + [m.id for m in pending]
                if not await _sleep_unless_stopped(fetcher, delay):
                    return done
                pending = [m._replace(attempts=m.attempts + 1) for m in pending]
        return done


@dataclass(slots=True)
class Slot:
    """A message waiting in the iterator's queue."""

    msg: Message
    fetcher: PartitionFetcher
    done: asyncio.Future[None]
    yielded: bool = False


class IteratorDispatcher:
    """Feeds ``async for``: the next message of a partition is queued once the previous
    one was taken and the iterator moved on (or it was acked)."""

    def __init__(self, queue: asyncio.Queue[Slot | None], auto_ack: bool, stats: dict[str, int]) -> None:
        self.queue = queue
        self.auto_ack = auto_ack
        self.stats = stats

    async def __call__(self, fetcher: PartitionFetcher, msgs: list[Message]) -> tuple[list[str], bool]:
        loop = asyncio.get_running_loop()
        done: list[str] = []
        for msg in msgs:
            if not _handing_out(fetcher):
                break
            slot = Slot(msg, fetcher, loop.create_future())
            self.queue.put_nowait(slot)
            stop: asyncio.Future[Any] = asyncio.ensure_future(fetcher.stop_event.wait())
            try:
                waiting: set[asyncio.Future[Any]] = {slot.done, stop}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if not slot.done.done() and slot.yielded:
                    await slot.done  # in the user's hands: let it finish (stop() bounds this)
            finally:
                stop.cancel()
            if not slot.done.done():
                slot.done.cancel()  # never yielded: stays pending for the next owner
                break
            done.append(msg.id)
            self.stats["processed"] = self.stats.get("processed", 0) + 1
        return done, self.auto_ack
