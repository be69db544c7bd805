"""Concurrent ``process()``: many handler calls in flight, order kept per lane.

``Consumer(concurrency=N, ordering=...)`` swaps the one-message-at-a-time dispatcher
for :class:`ConcurrentDispatcher` (docs/architecture.md §7 "Concurrency"). Each owned
partition gets a :class:`PartitionLanes`: its fetched messages go into *lanes*, and a
lane runs its messages one at a time, in stream order:

* ``ordering="partition"``: one lane per partition (today's order, capped by N overall);
* ``ordering="key"``: one lane per key, so the same key never runs twice at once and
  runs in partition order, while different keys run concurrently; keyless messages
  have no order to keep and are spread round-robin over the partition's free workers;
* ``ordering="none"``: every message is spread that way.

At most N handler calls run at once over the whole consumer (one semaphore). A failed
attempt retries in its lane with the consumer's backoff, so it blocks only its key;
the slot is given back while it waits.

Acks stay per entry and out of order (a pending list allows it), but the fetcher's
re-read (§5) starts after the last entry it *finished*, which now means "after the
last entry before the oldest one still open": the :class:`Window` keeps the fetched,
unfinished ids in id order for that. Fetch credits (``max_in_flight``) are given back
per message as it finishes, so fetching pauses while that many are waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Coroutine, Hashable
from typing import TYPE_CHECKING, Any, Literal

from .deadletter import reason_for
from .errors import FencedError
from .fetcher import INSIST, LeaseLost
from .handlers import (
    _Base,
    _call,
    _exhausted,
    _failed,
    _handing_out,
    _ready,
    _sleep_unless_stopped,
)
from .offsets import id_before

if TYPE_CHECKING:
    from .fetcher import PartitionFetcher
    from .handlers import Policy
    from .protocols import Handler
    from .stats import ConsumerStats, Histogram
    from .structs import Message

__all__ = ["ConcurrentDispatcher", "Ordering", "PartitionLanes", "Window"]

log = logging.getLogger(__name__)

Ordering = Literal["partition", "key", "none"]
ORDERINGS: tuple[Ordering, ...] = ("partition", "key", "none")
_LEASE_POLL_S = 0.05  # a lane waits this long at a time for a lapsed local lease to come back


class Window:
    """Fetched, unfinished entry ids of one partition, in id order (reads come in id
    order: a re-read skips what is open here, §5). ``floor()`` is where a re-read of
    the pending list starts so that it skips no open entry: the id just before the
    oldest open one."""

    __slots__ = ("_order", "open")

    def __init__(self) -> None:
        self._order: deque[str] = deque()
        self.open: set[str] = set()

    def add(self, entry_id: str) -> None:
        self._order.append(entry_id)
        self.open.add(entry_id)

    def close(self, entry_id: str) -> bool:
        """``entry_id`` is finished; False if it was not open."""
        if entry_id not in self.open:
            return False
        self.open.remove(entry_id)
        order, still = self._order, self.open
        while order and order[0] not in still:
            order.popleft()
        return True

    def floor(self) -> str | None:
        return id_before(self._order[0]) if self._order else None

    def clear(self) -> int:
        n = len(self.open)
        self._order.clear()
        self.open.clear()
        return n


class PartitionLanes:
    """One partition's share of a :class:`ConcurrentDispatcher`: its lanes, their
    tasks and the window. Owned by the partition's fetcher, which stops, restarts,
    seeks and aborts it with itself."""

    def __init__(self, fetcher: PartitionFetcher, dispatcher: ConcurrentDispatcher) -> None:
        self.fetcher = fetcher
        self.dispatcher = dispatcher
        self.window = Window()
        self.keyed: dict[Hashable, deque[tuple[int, Message]]] = {}
        self.loose: deque[tuple[int, Message]] = deque()  # no order to keep (keyless, or "none")
        self.loose_workers = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.running: set[asyncio.Task[None]] = set()  # inside a handler call (or its dead letter)
        self.finished = asyncio.Event()  # set whenever an entry finishes: acks to send

    def add(self, msgs: list[Message]) -> None:
        gen = self.fetcher.generation
        ordering = self.dispatcher.ordering
        for m in msgs:
            self.window.add(m.id)
            if ordering == "none" or (ordering == "key" and m.key is None):
                self.loose.append((gen, m))
                continue
            lane: Hashable = m.key if ordering == "key" else None
            q = self.keyed.get(lane)
            if q is None:
                self.keyed[lane] = q = deque()
                self._spawn(self._run_lane(lane, q), "lane")
            q.append((gen, m))
        want = min(self.dispatcher.concurrency, len(self.loose))
        while self.loose_workers < want:
            self.loose_workers += 1
            self._spawn(self._run_loose(), "loose")

    def _spawn(self, coro: Coroutine[Any, Any, None], kind: str) -> None:
        tp = self.fetcher.tp
        task = asyncio.get_running_loop().create_task(coro, name=f"redcurrent-{kind}-{tp.topic}-{tp.partition}")
        self.tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.running.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        f = self.fetcher
        if isinstance(exc, FencedError):
            # Found out in a lane rather than by the fetch: the same outcome (§4).
            if not f.fenced and not f.stopping:
                f.abort()
                f.fenced = True
                f.ctx.on_fenced(f.tp)
            return
        f.ctx.stats.partition_errors += 1
        log.error("%r: a handler lane failed: %s", f, exc)
        f.ctx.on_error(f.tp, exc)

    def close(self, entry_id: str) -> None:
        """Called by ``fetcher.finish``: one credit back, and wake a fetcher waiting to ack."""
        if self.window.close(entry_id):
            self.fetcher.ctx.credits.give(1)
            self.finished.set()

    def clear(self) -> None:
        """Forget every queued message (not acked: pending for a re-read or the next owner)."""
        self.keyed.clear()
        self.loose.clear()
        self.fetcher.ctx.credits.give(self.window.clear())

    def cancel(self) -> None:
        for t in self.tasks:
            t.cancel()
        self.clear()

    async def stop(self, timeout: float) -> None:
        """Start nothing more; let handlers in flight finish within ``timeout``, then
        cancel them (insisting, as the fetcher does for its own task)."""
        for t in self.tasks - self.running:
            t.cancel()  # waiting for a slot or in a retry's backoff: nothing in hand
        tasks = set(self.tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, timeout))
            if pending:
                log.warning("%r: %d handlers still running after %.1fs; cancelling them",
                            self.fetcher, len(pending), timeout)
            for _ in range(INSIST):
                if not pending:
                    break
                for t in pending:
                    t.cancel()
                _, pending = await asyncio.wait(pending, timeout=0.2)
            if pending:
                log.error("%r: %d handlers ignored cancellation; leaving them behind unacked",
                          self.fetcher, len(pending))
        self.clear()

    # -- the lanes --
    async def _run_lane(self, lane: Hashable, q: deque[tuple[int, Message]]) -> None:
        """Run one key's (or the partition's) messages one at a time, in stream order."""
        while q:
            gen, msg = q[0]
            if not await self._handle(gen, msg):
                return  # stopping: the rest stays pending (the fetcher drops the lanes)
            q.popleft()
        if self.keyed.get(lane) is q:
            del self.keyed[lane]

    async def _run_loose(self) -> None:
        try:
            while self.loose:
                gen, msg = self.loose.popleft()
                if not await self._handle(gen, msg):
                    return
        finally:
            self.loose_workers -= 1

    async def _handle(self, gen: int, msg: Message) -> bool:
        """Handle ``msg`` to its end (handled, or dead-lettered); False if it was left
        pending because the partition is stopping or the process() call ended."""
        d, f = self.dispatcher, self.fetcher
        while True:
            if gen != f.generation:
                return True  # fetched before a seek, which acked or replays it: drop it
            if not _handing_out(f, d):
                if d.closed or f.stopping:
                    return False
                await asyncio.sleep(_LEASE_POLL_S)  # the local lease lapsed: wait for it
                continue
            try:
                outcome = await self._attempt(gen, msg)
            except LeaseLost:
                continue  # a Redis call outlived the lease: try again once it is back
            if outcome is None:
                return True
            delay, msg = outcome
            if not await _sleep_unless_stopped(f, d, delay) and (d.closed or f.stopping):
                return False

    async def _attempt(self, gen: int, msg: Message) -> tuple[float, Message] | None:
        """One invocation under a slot; None when ``msg`` is finished, else the backoff
        before the next attempt and the message as that attempt sees it."""
        d, f = self.dispatcher, self.fetcher
        me = asyncio.current_task()
        async with d.slots:
            if gen != f.generation or not _handing_out(f, d):
                return 0.0, msg  # changed while we waited for the slot: look again
            assert me is not None
            self.running.add(me)
            try:
                if not await _ready(d, f, msg, advance=False):
                    return None  # expired, or out of attempts: finished by _ready
                try:
                    await _call(d, d.handler, msg)
                except Exception as exc:
                    failure: Exception = exc
                else:
                    d.stats.processed += 1
                    if gen == f.generation:
                        f.finish(msg.id, advance=False)
                    return None
                if msg.id in f.manually_acked:  # acked by hand, then raised: done
                    d.stats.processed += 1
                    f.finish(msg.id, advance=False)
                    return None
                d.stats.failed += 1
                if gen != f.generation:
                    return None
                if _exhausted(d.policy, f, msg, failure):
                    await f.dead_letter(msg.id, None, reason_for(failure, d.policy.handler_timeout),
                                        msg.attempts, failure)
                    if gen == f.generation:  # a seek meanwhile acked or replays it
                        f.finish(msg.id, advance=False)
                    return None
            finally:
                self.running.discard(me)
        # A FencedError here (the owner key is not ours) ends the lane: _ended drops the
        # partition without acking, as a FENCED fetch would (LeaseLost is retried above).
        delay = await _failed(d, f, [msg], failure)
        return delay, msg._replace(attempts=msg.attempts + 1)


class ConcurrentDispatcher(_Base):
    """``process(handler)`` with ``concurrency``: hands each batch to the partition's
    lanes and returns at once, so the fetcher reads on while handlers run."""

    concurrent = True

    def __init__(self, handler: Handler, policy: Policy, stats: ConsumerStats, latency: Histogram,
                 concurrency: int, ordering: Ordering) -> None:
        super().__init__(policy, stats, latency)
        self.handler = handler
        self.concurrency = concurrency
        self.ordering = ordering
        self.slots = asyncio.Semaphore(concurrency)

    async def __call__(self, fetcher: PartitionFetcher, msgs: list[Message]) -> None:
        lanes = fetcher.lanes
        if lanes is None or lanes.dispatcher is not self:
            if lanes is not None:  # a restart clears them; never leave an old call's running
                lanes.cancel()
            fetcher.lanes = lanes = PartitionLanes(fetcher, self)
        lanes.add(msgs)
