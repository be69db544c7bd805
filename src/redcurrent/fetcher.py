"""Per owned partition: fenced fetch, takeover, in-order dispatch, idle wait.

One :class:`PartitionFetcher` task runs per partition this consumer owns. It reads
with the fenced ``fetch`` script (which also acks what was handled since the last
call: one round trip per batch), hands the batch to the consumer's dispatcher in
stream order, and when the partition is drained waits for new entries without
changing group state (see :mod:`redcurrent.waiter`).

Read order after a claim (docs/architecture.md §5 "Takeover"): the claim script moved
the group's pending entries to us, so we first re-read our own pending list (from
``0``), then new entries (``>``). After a fetch that failed without a reply, or a
batch abandoned part-way, we re-read our own pending list after the last entry we
finished, restoring the delivery counts (the same owner reading an entry again is
not a new delivery).

Attempts: an entry's delivery count is the number of its next handler invocation.
The fetcher remembers, for every entry it read and has not finished, how many
invocations it has had (``held``); a graceful release writes those back, so a
handoff costs no message an attempt. A crash writes nothing, so each entry the dead
consumer held costs one attempt, and a message that kills its consumer every time
still reaches the dead letters.

Every Redis call here retries connection errors with the consumer's backoff until
``request_timeout``; past it the error surfaces (``process()`` raises it), unless
the local lease ran out first, in which case the partition is dropped without
acking and claimed again once the lease is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError, WatchError

from . import scripts
from .connection import CONNECTION_ERRORS, refresh_slots, transient, transient_error
from .deadletter import REQUEUE_HEADER
from .errors import DecodeError, FencedError, GroupMissingError, translate
from .protocols import Deserializer, Dispatcher
from .replies import (
    Fetched,
    FetchReply,
    Gated,
    StatusReply,
    StreamEntry,
    parse_fetch,
    parse_fetch_ack,
    parse_nack,
    parse_release,
    parse_seek,
)
from .retry import Backoff
from .serde import FetchedEntry, decode_fields, decode_fresh, entry_slots
from .structs import Message, TopicPartition
from .waiter import IdleWaiter, Prefetch

if TYPE_CHECKING:
    from .connection import Client
    from .deadletter import DeadLetterWriter
    from .lanes import PartitionLanes
    from .stats import ConsumerStats
    from .waiter import ShardWaiter

__all__ = ["Credits", "Dispatcher", "FetchContext", "LeaseLost", "PartitionFetcher"]

log = logging.getLogger(__name__)

T = TypeVar("T")
INSIST = 10  # cancellations (0.2 s apart) before a stop leaves a handler's task behind
_WATCH_TRIES = 3  # a watched fetch whose key keeps changing falls back to the script
# Reads at least this large take the watched path: it moves per-entry work from the
# server's Lua to native code, but costs the client two more commands a fetch, which
# only pays over a large batch (on Valkey/Redis 7+, process() with batch_size 100 was
# client-bound and lost a third of its rate to it; process_batch with 500 gained 40%).
# Redis 6.2's Lua costs a fetched entry 6.3 us of server time (3.9 us on Valkey 9.1):
# there reads of 100 (process()'s default) already pay (see WATCHED_MIN_62).
WATCHED_MIN = 250
WATCHED_MIN_62 = 100
RETRY_MAX_S = 1.0  # the longest wait before retrying a consume-path Redis call
IDLE_BACKSTOP_S = 30.0  # an idle partition re-registers with the IdleWaiter at least this often
# A partition drained by a read waits this long with its acks unsent: at a trickle the
# next entry's fetch carries them (one fetch a message, not two); past it they go alone.
ACK_LINGER_S = 0.005
POLL_S = 0.1  # idle poll period on a cluster when every blocking-wait slot is taken
BARRIER_POLL_S = 0.02  # how soon a partition stopped at a growth's barrier looks again
_FETCH = scripts.script("fetch")
_RELEASE = scripts.script("release")
_NACK = scripts.script("nack")
_SEEK = scripts.script("seek")


class LeaseLost(FencedError):
    """The local lease ran out while a call was being retried (Redis unreachable).

    Nothing more is handed out; what was finished keeps waiting to be acked, and the
    loop goes on once the heartbeat renews the lease (a Redis restart must cost no
    rebalance and no duplicate). To user code it is a FencedError: nothing was acked."""


class Credits:
    """Bounds messages fetched and not yet finished, over all partitions (max_in_flight)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self._event = asyncio.Event()
        self._event.set()

    async def take(self, want: int, least: int = 1) -> int:
        """Up to ``want`` credits, once at least ``least`` are free."""
        while self.free < least:
            self._event.clear()
            await self._event.wait()
        got = min(want, self.free)
        self.free -= got
        return got

    def try_take(self, want: int) -> int:
        """Up to ``want`` credits, without waiting (0 when none are free)."""
        got = min(want, self.free)
        self.free -= got
        return got

    def give(self, n: int) -> None:
        if n:
            self.free += n
            self._event.set()


@dataclass(slots=True)
class FetchContext:
    """What every partition fetcher of one consumer shares."""

    client: Client
    group: str
    consumer: str
    token: str
    batch_size: int
    block_ms: int
    fetch_timeout: float
    request_timeout: float
    backoff: Backoff
    credits: Credits
    deserializer: Deserializer | None
    lease_valid: Callable[[], bool]
    on_fenced: Callable[[TopicPartition], None]
    on_error: Callable[[TopicPartition, BaseException], None]
    dead_letters: DeadLetterWriter
    stats: ConsumerStats
    # Bounds concurrent commands of the consume path below the client's pool size, so
    # heartbeats and claims always find a connection (a pool of 100 is redis-py's default).
    limit: asyncio.Semaphore
    # one blocking read for all idle partitions (single server), or one shard subscription
    # per node (cluster, Redis 7+)
    waiter: IdleWaiter | ShardWaiter | None = None
    calls: int = 0  # consume-path calls so far: none between two heartbeats = idle (pool trim)
    transactions: bool = False  # WATCH/MULTI fetches (single server; a cluster keeps the script)
    watched_min: int = WATCHED_MIN  # reads at least this large take the watched path
    wait_slots: asyncio.Semaphore | None = None  # per-partition blocking reads (cluster)
    dispatcher: Dispatcher | None = None
    dispatcher_set: asyncio.Event = field(default_factory=asyncio.Event)
    # topic -> has the group drained every partition up to its growth barrier? (the
    # coordinator's per-partition reads, docs/architecture.md §10)
    barrier_open: Callable[[str], Awaitable[bool]] | None = None


class PartitionFetcher:
    """Fetches and dispatches one partition (private to the consumer)."""

    def __init__(self, ctx: FetchContext, tp: TopicPartition, stream: str, owner: str, gate: str) -> None:
        self.ctx = ctx
        self.tp = tp
        self.stream = stream
        self.owner = owner
        self.gate = gate  # the group's gate key on this partition (a growth's drain barrier)
        self._lift = ""  # the barrier id the next fetch lifts: every partition is drained up to its own
        self.acks: list[str] = []  # finished, to ack with the next fetch or at release
        self.held: dict[str, int] = {}  # read, not finished: entry id -> invocations so far
        self.manually_acked: set[str] = set()  # acked by the user inside a handler
        self.last_handled = "0"
        self._read_id = "0"
        self._restore = False
        self._idle_at: bytes | None = None  # the last entry id when drained; None while there is work
        self._linger_at: bytes | None = None  # ... when drained by a read whose acks are unsent
        self._stopping = False
        self._restarting = False
        self._idle = False
        self._busy = False
        self._fetching = False  # a fetch round trip is out: what it reads is pending under our name
        self._prefetch: Prefetch | None = None  # our read, handed to the idle waiter (see waiter.py)
        # Set when the batch in dispatch must be abandoned: a stop, or a seek (which then
        # puts a fresh event in its place, so whoever waits on the old one wakes).
        self.stop_event = asyncio.Event()
        # A seek discards the fetched buffer (Kafka's seek does): it bumps the generation,
        # and whatever the batch in dispatch still finishes is neither acked nor counted.
        self.generation = 0
        self._batch_gen = 0
        # Ids the seek acked as they were: a user's late ack of one of them acks nothing
        # until the entry is handed out again (it may be pending anew, unhandled).
        self.discarded: set[str] = set()
        self.raw: dict[str, list[bytes] | None] = {}  # entry id -> its fields, for dead letters
        self.plain = False  # the batch in dispatch needs no check before its first invocation
        self.trimmed: list[str] = []  # pending ids the claim found trimmed away: dead-letter them
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._task: asyncio.Task[None] | None = None
        self.fenced = False
        self._bulk = False  # the last read was a full batch: a backlog, read it the watched way
        # With Consumer(concurrency=N): the lanes running this partition's handlers, and
        # the window of fetched, unfinished entries (see redcurrent.lanes).
        self.lanes: PartitionLanes | None = None

    def __repr__(self) -> str:
        return f"<PartitionFetcher {self.tp.topic}[{self.tp.partition}]>"

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    @property
    def alive(self) -> bool:
        """Its task runs (or is being restarted): only then may its lease be renewed."""
        return self._task is not None and (not self._task.done() or self._restarting)

    def runs(self, task: asyncio.Task[Any]) -> bool:
        """``task`` is this partition's fetch task or one of its handler lanes."""
        return task is self._task or (self.lanes is not None and task in self.lanes.tasks)

    def start(self) -> None:
        self._restarting = False
        self._task = asyncio.create_task(
            self._run(), name=f"redcurrent-fetch-{self.tp.topic}-{self.tp.partition}"
        )

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def stale(self) -> bool:
        """The batch in dispatch was fetched before a seek: hand nothing more of it out."""
        return self._batch_gen != self.generation

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    def pause(self) -> None:
        self._resumed.clear()
        if self._prefetch is not None and self.ctx.waiter is not None:
            cast("IdleWaiter", self.ctx.waiter).withdraw(self._prefetch)  # (only an IdleWaiter has them)

    def resume(self) -> None:
        self._resumed.set()

    # -- finishing messages (called by dispatchers) --
    def invoking(self, msg: Message) -> None:
        """A handler is about to get ``msg`` (invocation number ``msg.attempts``)."""
        if self._batch_gen != self.generation:
            return
        if self.discarded:
            self.discarded.discard(msg.id)
        self.held[msg.id] = msg.attempts

    def finish(self, entry_id: str, *, ack: bool = True, advance: bool = True) -> None:
        """``entry_id`` is done (handled, dead-lettered, expired or skipped).

        ``last_handled`` means "everything up to here is finished"; entries finished
        out of turn (before the batch is dispatched) pass ``advance=False``."""
        if self._batch_gen != self.generation:
            return  # fetched before a seek, which acked or replays it: not ours to ack
        self.held.pop(entry_id, None)
        if self.lanes is not None:
            self.lanes.close(entry_id)
        if self.manually_acked and entry_id in self.manually_acked:
            self.manually_acked.discard(entry_id)
        elif ack:
            self.acks.append(entry_id)
        if advance:
            self.last_handled = entry_id

    def finish_all(self, msgs: list[Message]) -> None:
        """Every message of ``msgs`` (in stream order) was handled: the batch form of finish."""
        if self._batch_gen != self.generation:
            return
        if self.manually_acked:
            for m in msgs:
                self.finish(m.id)
            return
        held = self.held
        ids = [m.id for m in msgs]
        for i in ids:
            held.pop(i, None)
        self.acks += ids
        self.last_handled = ids[-1]

    def invoking_all(self, msgs: list[Message]) -> None:
        if self._batch_gen != self.generation:
            return
        if self.discarded:
            self.discarded.difference_update(m.id for m in msgs)
        held = self.held
        for m in msgs:
            held[m.id] = m.attempts

    # -- stopping --
    async def stop(self, timeout: float) -> None:
        """Stop fetching; let the messages in hand finish (bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        try:
            await self._stop_task(timeout)
        finally:
            self._drop_prefetch()
            if self.ctx.waiter is not None:
                self.ctx.waiter.forget(self.stream)
            if self.lanes is not None:  # concurrent handlers: the same bound, then cancelled
                await self.lanes.stop(deadline - time.monotonic())

    async def _stop_task(self, timeout: float) -> None:
        self._stopping = True
        self.stop_event.set()
        task = self._task
        if task is None or task.done():
            return
        deadline = time.monotonic() + timeout
        while not self._busy and not task.done():
            prefetch = self._prefetch
            if prefetch is not None and prefetch.on_wire and time.monotonic() < deadline:
                # Our read rides behind the idle waiter's: end that read now, and wait
                # for its reply like a fetch's (it may carry acks, and entries read).
                cast("IdleWaiter", self.ctx.waiter).hurry(prefetch)
                await asyncio.wait({task}, timeout=0.05)
                continue
            if self._fetching and time.monotonic() < deadline:
                # A fetch is out: Redis may have delivered its entries already. Cancelled,
                # its reply would be lost and those entries left pending with a delivery
                # counted; awaited, they are held and the release gives their counts back.
                await asyncio.wait({task}, timeout=0.05)
                continue
            # Nothing in hand: cancel now, and again if a library swallowed it.
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            log.warning("%r: in-flight handling exceeded %.1fs; cancelling it", self, timeout)
        for _ in range(INSIST):  # a cancellation can be swallowed: insist, for a while
            if task.done():
                return
            task.cancel()
            await asyncio.wait({task}, timeout=0.2)
        if not task.done():
            # A handler that ignores cancellation must not hold the stop forever: leave
            # its task behind. Its message stays unacked (held), so it is redelivered.
            log.error("%r: a handler ignored cancellation for %.1fs; leaving it behind unacked",
                      self, INSIST * 0.2)

    def abort(self) -> None:
        """Drop everything without acking (fenced or lost lease)."""
        self._stopping = True
        self.stop_event.set()
        self._drop_prefetch()
        self.acks.clear()
        if self.ctx.waiter is not None:
            self.ctx.waiter.forget(self.stream)
        if self._task is not None:
            self._task.cancel()
        if self.lanes is not None:
            self.lanes.cancel()

    def restart(self) -> None:
        """The dispatcher was detached (its ``process()`` call ended): cancel what is
        in hand without acking it, and start a fresh task that waits for the next
        dispatcher and re-reads the unfinished entries first."""
        task = self._task
        if task is None or self._stopping:
            return
        lanes, self.lanes = self.lanes, None
        if lanes is not None:
            # Its handlers are cancelled with the call; the re-read must start before
            # the oldest entry they left open, not after the newest one read (§5).
            floor = lanes.window.floor()
            if floor is not None:
                self.last_handled = floor
            lanes.cancel()
        self._restarting = True
        if task.done():
            self._restart_now(task)
            return
        task.add_done_callback(self._restart_now)
        task.cancel()

    def _restart_now(self, _task: asyncio.Task[None]) -> None:
        if self._stopping or not self._restarting:
            return
        if self.held or self._idle_at is None:
            self._read_id, self._restore = self.last_handled, True
        self._idle_at = None
        self.raw = {}
        self.start()

    def release_call(self) -> scripts.Call:
        """The release script call: ack what was finished, give back the counts of what
        was read and not finished (see the module docstring), give the partition up."""
        c = self.ctx
        counts: list[str | int] = []
        for entry_id, invocations in self.held.items():
            counts += [entry_id, max(0, invocations)]
        args: list[str | int] = [c.token, c.group, c.consumer, len(self.acks), *self.acks, *counts]
        return scripts.Call(_RELEASE, [self.stream, self.owner], args)

    def released(self, reply: StatusReply) -> bool:
        """Act on the release reply; False if we were fenced (nothing was changed)."""
        self.acks.clear()
        self.held.clear()
        try:
            parse_release(reply, self.tp)
        except FencedError:
            return False
        return True

    async def note_attempt(self, entry_id: str, attempts: int) -> None:
        """Persist a failed attempt in the pending entry's delivery count (fenced)."""
        args: list[str | int] = [self.ctx.token, self.ctx.group, self.ctx.consumer, entry_id, attempts]
        reply = await self.call(
            "record a failed attempt",
            lambda: scripts.run(self.ctx.client, _NACK, [self.stream, self.owner], args),
        )
        parse_nack(reply, self.tp)

    async def ack_now(self, ids: list[str]) -> None:
        """Ack ``ids`` at once (manual acks). Raises FencedError if not the owner."""
        if self.discarded:
            ids = [i for i in ids if i not in self.discarded]  # the seek acked them already
            if not ids:
                return
        parse_fetch_ack(await self.call("ack", lambda: self._fetch_call(0, ">", ids)), self.tp)
        for i in ids:
            if i in self.held:
                self.manually_acked.add(i)

    async def seek(self, position: str) -> None:
        """Move the group's position on this partition to after ``position`` (a
        last-delivered id, ``"0"`` or ``"$"``), fenced, and discard what was fetched.

        The seek script acks what the group had pending here; entries at or after the
        new position are read again. Locally the fetched buffer goes, as Kafka's seek
        does: the batch in dispatch hands nothing more out, its message in hand is not
        acked when it finishes (the script did it, or it is replayed), unsent acks are
        dropped (the script acked them), and the next read is of our own pending list
        (a fetch that raced with the seek may have put entries there), then ``>``.
        """
        c = self.ctx
        args: list[str | int] = [c.token, c.group, position]
        reply = await self.call("seek", lambda: scripts.run(c.client, _SEEK, [self.stream, self.owner], args))
        acked = parse_seek(reply, self.tp)
        self.generation += 1
        prefetch = self._prefetch
        if prefetch is not None:
            waiter = cast("IdleWaiter", c.waiter)
            if waiter.withdraw(prefetch):
                prefetch.acks = []  # the seek acked them
            else:
                waiter.hurry(prefetch)  # its reply is of the old generation: discarded when it comes
        self.discarded = acked
        self.acks.clear()
        self.held.clear()
        self.manually_acked.clear()
        if self.lanes is not None:
            # Handlers in flight run on, but finish nothing (their generation is gone);
            # queued messages of the old generation are dropped as their lanes reach them.
            self.ctx.credits.give(self.lanes.window.clear())
        self.raw = {}
        self.last_handled = "0"
        self._read_id, self._restore, self._idle_at = "0", True, None
        if not self._stopping:
            old, self.stop_event = self.stop_event, asyncio.Event()
            old.set()  # wakes a retry's backoff sleep or the iterator's wait: abandon the batch
        if self._idle:
            self.restart()  # blocked in an idle wait (or paused): start over from the new position

    async def call(self, what: str, fn: Callable[[], Awaitable[T]],
                   on_error: Callable[[], None] | None = None) -> T:
        """Run one Redis call of the consume path; connection errors are retried with
        the consumer's backoff until ``request_timeout``, then raised (translated).
        ``on_error`` runs after each failure, before the retry (an ambiguous fetch must
        be retried as a re-read). Raises LeaseLost when the local lease runs out meanwhile."""
        c = self.ctx
        deadline = time.monotonic() + c.request_timeout
        attempt = 0
        task = asyncio.current_task()
        cancels = task.cancelling() if task is not None else 0
        while True:
            if attempt and not c.lease_valid():
                # Redis was away longer than the lease: the owner key may have expired
                # meanwhile, and a fenced reply would drop what we finished. Wait for
                # the heartbeat to renew (or reclaim) the lease instead.
                raise LeaseLost(what)
            try:
                c.calls += 1
                async with c.limit:
                    async with asyncio.timeout(c.fetch_timeout):
                        result = await fn()
                if task is not None and task.cancelling() > cancels:
                    # Cancelled meanwhile, and the cancellation swallowed on the way (on
                    # Python 3.11 a timeout expiring as it arrives does that, in redis-py's
                    # retries too): end as cancelled, or the caller runs on "cancelling".
                    raise asyncio.CancelledError
                return result
            except Exception as exc:
                if task is not None and task.cancelling() > cancels:
                    # Python 3.11's asyncio.timeout turns a cancellation that arrives as
                    # it expires into TimeoutError: the caller was cancelled, so end here
                    # rather than retry (and return normally) with the cancel swallowed.
                    raise asyncio.CancelledError from exc
                # A cluster failing over or moving a slot refuses calls it did not run
                # (CLUSTERDOWN, TRYAGAIN, ...): retried like a lost connection, never a
                # dead fetch task (docs/cluster.md).
                if not transient(exc):
                    raise
                attempt += 1
                c.stats.redis_errors += 1
                if isinstance(exc, CONNECTION_ERRORS):
                    refresh_slots(c.client, background=True)  # our deadline hides it from redis-py
                if on_error is not None:
                    on_error()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise transient_error(exc, f"{what} on {self.tp.topic}[{self.tp.partition}]: "
                                               f"gave up after request_timeout={c.request_timeout}s") from None
                # The handler backoff may grow to 30 s; a Redis error's retry is capped at
                # RETRY_MAX_S, so a partition resumes within a second of Redis coming back
                # (as Kafka's reconnect.backoff.max.ms): measured after a 5 s cluster
                # outage, 2.5-3.0 s to resume uncapped, 0.06 s capped (docs/cluster.md).
                delay = min(left, c.backoff.delay(attempt), RETRY_MAX_S)
                log.warning("%r: %s failed (%s); retry %d in %.2fs", self, what,
                            transient_error(exc, what), attempt, delay)
                await asyncio.sleep(delay)

    # -- the loop --
    async def _run(self) -> None:
        try:
            while not self._stopping:
                try:
                    await self._step()
                except LeaseLost:
                    self._reread()  # unfinished entries are read again once the lease is back
                    await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            if not self._stopping and not self._restarting:
                raise
        except FencedError:
            self.fenced = True
            self.ctx.on_fenced(self.tp)
        except Exception as exc:  # never a silent stall: the coordinator drops it, process() raises
            self.ctx.stats.partition_errors += 1
            log.error("%r: consuming failed: %s", self, translate(exc, "consume"))
            self.ctx.on_error(self.tp, exc)

    async def _step(self) -> None:
        c = self.ctx
        if self.trimmed:
            entry_id = self.trimmed[0]
            await self.dead_letter(entry_id, None, "trimmed", 0)  # its fields are gone: none to copy
            c.stats.trimmed += 1
            self.trimmed.pop(0)
            return
        if self._prefetch is not None:
            await self._prefetched()
            return
        if not c.dispatcher_set.is_set() or not self._resumed.is_set():
            # Nobody to hand messages to (no process() running) or paused: ack what
            # is finished, then wait; nothing new is read.
            if self.acks:
                await self._flush_acks()
                return
            self._idle = True
            try:
                await (c.dispatcher_set.wait() if not c.dispatcher_set.is_set() else self._resumed.wait())
            finally:
                self._idle = False
            return
        if not c.lease_valid():
            # Past our local lease we hand nothing out; the coordinator will either
            # refresh the lease or take the partition from us.
            await asyncio.sleep(0.05)
            self._reread()
            return
        if c.waiter is not None and c.waiter.dirty and self.stream in c.waiter.dirty:
            c.waiter.dirty.discard(self.stream)
            self._reread()  # a read handed over earlier took entries nobody handed out
        if self._idle_at is not None and not self.acks:
            lanes = self.lanes
            if lanes is not None and lanes.window.open:
                # Drained while concurrent handlers run: their acks must not wait for a
                # long idle read, so wake at the next finish (or poll for new entries).
                await self._await_finish(lanes.finished)
                return
            # Drained, and every ack sent: only wait until something new arrives.
            if self._hand_over(self._idle_at, linger=False):
                return
            if await self._wait(self._idle_at):
                self._idle_at = None
            return  # the next step re-checks pause, lease and stop before fetching
        if self._linger_at is not None:
            # Drained by the last read with its acks unsent: the next entry's fetch
            # carries them if it comes within ACK_LINGER_S; else they go alone.
            at, self._linger_at = self._linger_at, None
            if self.acks and not self._hand_over(at, linger=True):
                await self._wait(at, ACK_LINGER_S)
            return
        # Concurrent handlers give credits back one message at a time: waiting for a
        # tenth of max_in_flight keeps reads (and the acks they carry) in batches,
        # rather than one round trip per finished message.
        least = 1 if self.lanes is None else min(c.batch_size, max(1, c.credits.total // 10))
        want = await c.credits.take(c.batch_size, least)
        if self._stopping:
            c.credits.give(want)  # stopped while waiting for credits: read nothing more
            return
        gen = self.generation
        try:
            reply = await self._fetch(want)
        except BaseException:
            c.credits.give(want)
            raise
        await self._handle(reply, want, gen)

    async def _handle(self, reply: Fetched | Gated | None, want: int, gen: int) -> None:
        """Act on a fetch's reply (``want`` credits were taken for it, at ``gen``)."""
        c = self.ctx
        if reply is None or gen != self.generation:
            # A seek while the fetch was out: what it read is before the new position
            # (acked by the seek) or, if it ran after it, pending to us and read again
            # from our own pending list.
            c.credits.give(want)
            return
        if isinstance(reply, Gated):
            c.credits.give(want)
            await self._at_barrier(reply)
            return
        self._lift = ""
        n = len(reply.entries)
        c.credits.give(want - n)
        self._bulk = n == want
        if n == 0:
            if self._read_id != ">":
                self._read_id, self._restore = ">", False
            else:
                self._idle_at = reply.last_id
            return
        kept = 0
        try:
            kept = await self._dispatch(reply.entries, reply.counts)
        finally:
            c.credits.give(n - kept)  # concurrent handlers give theirs back one by one
        if (n < want and self.acks and self.lanes is None and c.waiter is not None
                and self._read_id == ">" and gen == self.generation and not self._stopping):
            # A short ">" read took everything there was: nothing after its last entry
            # yet, so wait from there (a read stopped at a growth's barrier wakes at once).
            self._linger_at = reply.entries[-1][0]

    # -- our read behind the idle waiter's (see redcurrent.waiter.Prefetch) --
    def _hand_over(self, last_id: bytes, *, linger: bool) -> bool:
        """Wait drained from ``last_id`` with our next read (and unsent acks) handed to
        the idle waiter, which runs it right behind its blocking read: a message that
        arrives then costs one round trip, not a wake and a fetch. False when it
        cannot (a cluster, concurrent handlers, a re-read, a gate to lift)."""
        c = self.ctx
        waiter = c.waiter
        if (not isinstance(waiter, IdleWaiter) or self.lanes is not None or self._read_id != ">"
                or self._lift or self._stopping):
            return False
        acks, self.acks = self.acks, []
        prefetch = Prefetch((self.stream, self.owner, self.gate), (c.token, c.group, c.consumer),
                            acks, c.batch_size, c.credits, self.generation, linger)
        self._prefetch = prefetch
        self._idle_at = last_id
        waiter.wait(self.stream, last_id, prefetch)
        return True

    async def _prefetched(self) -> None:
        """Wait for our handed-over read's outcome, then act on it as on a fetch's."""
        prefetch = self._prefetch
        assert prefetch is not None and prefetch.fut is not None
        waiter = cast("IdleWaiter", self.ctx.waiter)
        if not prefetch.fut.done():
            if not self.ctx.dispatcher_set.is_set() or self.paused:
                waiter.withdraw(prefetch)  # nothing may be read now (on the wire: its reply comes)
            self._idle = True
            try:
                # Its acks wait ACK_LINGER_S for a read to carry them; an idle wait's
                # timeout is only a backstop (see _wait).
                limit = ACK_LINGER_S if prefetch.linger else IDLE_BACKSTOP_S
                done, _ = await asyncio.wait((prefetch.fut,), timeout=limit)
            finally:
                self._idle = False
            if not done:
                linger, prefetch.linger = prefetch.linger, False
                if linger and not waiter.withdraw(prefetch):
                    # On the wire, behind a read that may block for long: its acks go
                    # now on their own (the prefetch acks them again: XACK is idempotent).
                    parse_fetch_ack(await self.call("ack", lambda: self._fetch_call(0, ">", prefetch.acks)), self.tp)
                if not prefetch.fut.done():
                    return  # still on the wire: wait on
        self._prefetch = None
        c = self.ctx
        if prefetch.reply is None:
            # It never ran (withdrawn, or woken without it) or failed (it may have run):
            # the acks and credits are ours again, and a fetch finds out.
            self.acks = prefetch.acks + self.acks
            c.credits.give(prefetch.taken)
            if prefetch.error is not None:
                self._fetch_failed()
            self._idle_at = None
            return
        if prefetch.reply[0] == b"AGAIN":  # a growth's barrier: the fetch script stops there
            c.credits.give(prefetch.taken)
            self._idle_at = None
            return
        self._idle_at = None
        try:
            reply = parse_fetch(prefetch.reply, self.tp)  # FENCED raises: nothing was acked
        except GroupMissingError:
            c.credits.give(prefetch.taken)
            self.acks = prefetch.acks + self.acks
            await self._recreate_group()
            return
        if isinstance(reply, Gated):  # (the script answers AGAIN instead)
            c.credits.give(prefetch.taken)
            return
        if self.paused or not c.dispatcher_set.is_set() or prefetch.generation != self.generation:
            # Read while pausing, as process() ended, or after a seek: pending under our
            # name, handed out later by a re-read that gives their delivery back (after
            # a seek, its own re-read from "0"); a release meanwhile gives it back too.
            self._hold_unhanded(reply.entries)
            c.credits.give(prefetch.taken)
            if prefetch.generation == self.generation:
                self._reread()
            return
        await self._handle(reply, prefetch.taken, prefetch.generation)

    def _drop_prefetch(self) -> None:
        """The task ended (stop, abort): take back a read handed over and not run, and
        count entries it read and nobody handed out as held (a release gives their
        delivery back)."""
        prefetch, self._prefetch = self._prefetch, None
        if prefetch is None:
            return
        self.ctx.credits.give(prefetch.taken)
        prefetch.taken = 0
        if not prefetch.on_wire:
            cast("IdleWaiter", self.ctx.waiter).withdraw(prefetch)
        reply = prefetch.reply
        if reply is None:
            # Never ran, or its outcome is unknown: the release sends the acks (again:
            # XACK is idempotent).
            self.acks = prefetch.acks + self.acks
        elif reply[0] == b"OK" and prefetch.generation == self.generation:
            self._hold_unhanded(reply[2])

    def _hold_unhanded(self, entries: list[StreamEntry]) -> None:
        """Entries read and not handed out: held with no invocation, so a release or a
        re-read gives their delivery back."""
        for entry_id, _ in entries:
            self.held.setdefault(entry_id.decode(), 0)

    async def _await_finish(self, finished: asyncio.Event) -> None:
        finished.clear()
        try:
            async with asyncio.timeout(POLL_S):
                await finished.wait()
        except TimeoutError:
            pass
        self._idle_at = None

    async def _at_barrier(self, gated: Gated) -> None:
        """Nothing up to the growth's barrier id is left to hand out here. Once every
        partition of the topic is drained up to its own barrier (read on each partition's
        slot), the next fetch lifts our gate, fenced by the owner check; till then, look
        again shortly (docs/architecture.md §10)."""
        c = self.ctx
        if gated.drained and c.barrier_open is not None:
            check = c.barrier_open
            if await self.call("barrier check", lambda: check(self.tp.topic)):
                self._lift = gated.gate
                return
        await asyncio.sleep(BARRIER_POLL_S)

    def _fetch_failed(self) -> None:
        self.ctx.stats.fetch_errors += 1
        self._reread_if_new()

    def _reread_if_new(self) -> None:
        if self._read_id == ">":
            self._reread()

    def _reread(self) -> None:
        """Read our own pending list again after the last finished entry (with concurrent
        handlers: before the oldest entry still open, which the re-read then skips)."""
        floor = self.lanes.window.floor() if self.lanes is not None else None
        self._read_id, self._restore = floor or self.last_handled, True
        self._idle_at = None

    async def _flush_acks(self) -> None:
        acks, self.acks = self.acks, []
        gen = self.generation
        try:
            reply = await self.call("ack", lambda: self._fetch_call(0, ">", acks if gen == self.generation else []))
        except BaseException:
            if gen == self.generation:  # a seek meanwhile acked them (and may replay them)
                self.acks = acks + self.acks
            raise
        parse_fetch_ack(reply, self.tp)

    async def _fetch(self, count: int) -> Fetched | Gated | None:
        acks, self.acks = self.acks, []
        gen = self.generation
        try:
            # A failed fetch is ambiguous (Redis may have run it): the acks are resent
            # (XACK is idempotent) and the retry re-reads our own pending list after
            # what we finished, never ">" again, or entries it delivered would be
            # stranded and handled later, out of order. Acks from before a seek are
            # never resent: the seek acked them, and a replay of one may be pending.
            reply = await self.call(
                "fetch", lambda: self._fetch_call(count, self._read_id, acks if gen == self.generation else []),
                on_error=self._fetch_failed)
        except BaseException:
            if gen == self.generation:
                self.acks = acks + self.acks
                self._reread_if_new()
            raise
        try:
            return parse_fetch(reply, self.tp)
        except GroupMissingError:
            await self._recreate_group()
            if gen == self.generation:
                self.acks = acks + self.acks
            return None

    async def _fetch_call(self, count: int, read_id: str, acks: list[str]) -> FetchReply:
        # Flagged while on the wire only (not while a retry backs off): a stop waits for
        # this round trip rather than lose what it read, never for a Redis outage.
        self._fetching = True
        try:
            return await self._fetch_round_trip(count, read_id, acks)
        finally:
            self._fetching = False

    async def _fetch_round_trip(self, count: int, read_id: str, acks: list[str]) -> FetchReply:
        c = self.ctx
        if count >= c.watched_min and read_id == ">" and self._bulk and c.transactions:
            return await self._fetch_watched(count, acks)
        restore = "1" if self._restore and read_id != ">" else "0"
        reply: FetchReply = await scripts.run(
            c.client, _FETCH, [self.stream, self.owner, self.gate],
            [c.token, c.group, c.consumer, count, read_id, restore, ",".join(acks), self._lift],
        )
        return reply

    async def _fetch_watched(self, count: int, acks: list[str]) -> FetchReply:
        """The fetch script's ">" read as WATCH owner, GET owner, then MULTI: XACK,
        XREADGROUP, XREVRANGE, EXEC. The same fence: EXEC runs only if the owner key
        still holds our token, unchanged (or unexpired) since the GET.

        Used while a partition has a backlog: Redis reads and acks natively instead of
        passing every entry and id through Lua. Reading cost 3.9 us a message of server
        time on Valkey 9.1 and 6.3 us on Redis 6.2 through Lua, against 1.8-2.1 us this
        way; acking 500 ids costs 90-97 us natively against 222-242 us through the
        script (the ids' trip from Lua to Redis, not the split), which more than pays
        for packing them as 500 arguments (30 us in hiredis). It costs two more round
        trips, so only large reads of a backlog take it (``watched_min``).
        Same reply shape as the script. The gate key is watched and read with the owner
        key: while a growth's barrier is closed, the script reads (it stops at the barrier)."""
        c = self.ctx
        token = c.token.encode()
        pipe = Pipeline(c.client.connection_pool, {}, True, None)  # type: ignore[union-attr]  # no response callbacks: raw replies
        try:
            for _ in range(_WATCH_TRIES):
                await pipe.watch(self.owner, self.gate)
                owner, gate = cast("list[bytes | None]", await pipe.execute_command("MGET", self.owner, self.gate))
                if owner != token:
                    return [b"FENCED"]
                if gate is not None:
                    break  # a growth's barrier is closed: the script reads up to it
                pipe.multi()  # type: ignore[no-untyped-call]
                if acks:  # a group that vanished acks nothing (0); the read below says NOGROUP
                    pipe.execute_command("XACK", self.stream, c.group, *acks)
                pipe.execute_command("XREADGROUP", "GROUP", c.group, c.consumer, "COUNT", count,
                                     "STREAMS", self.stream, ">")
                pipe.execute_command("XREVRANGE", self.stream, "+", "-", "COUNT", 1)
                try:
                    replies = await pipe.execute(raise_on_error=False)
                except WatchError:
                    continue  # the key was touched (our own lease refresh, or a takeover): look again
                return await self._watched_reply(replies, acks)
            await pipe.reset()  # type: ignore[no-untyped-call]
            reply: FetchReply = await scripts.run(  # busy key, or a barrier: the script needs no WATCH
                c.client, _FETCH, [self.stream, self.owner, self.gate],
                [c.token, c.group, c.consumer, count, ">", "0", ",".join(acks), self._lift],
            )
            return reply
        except BaseException:
            if pipe.connection is not None:  # mid-transaction: never hand it back as it is
                await pipe.connection.disconnect()
            raise
        finally:
            await pipe.reset()  # type: ignore[no-untyped-call]

    async def _watched_reply(self, replies: list[Any], acks: list[str]) -> FetchReply:
        read, newest = replies[-2], replies[-1]
        if acks and isinstance(replies[0], Exception):
            raise replies[0]
        if isinstance(read, ResponseError):
            if "NOGROUP" in str(read):
                return [b"NOGROUP"]
            raise read
        entries = read[0][1] if read else []
        last = b"" if entries else (newest[0][0] if newest else b"0-0")
        return [b"OK", last, entries, []]

    async def _recreate_group(self) -> None:
        # The group vanished (Redis restarted empty or the key was deleted): recreate
        # it at 0 (at-least-once), say so loudly, never crash-loop.
        log.error("%r: consumer group %r vanished; recreating it at 0", self, self.ctx.group)
        self.ctx.stats.groups_recreated += 1
        try:
            await self.call("recreate the group", lambda: self.ctx.client.execute_command(
                "XGROUP", "CREATE", self.stream, self.ctx.group, "0", "MKSTREAM"))
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._read_id, self._restore = "0", False
        await asyncio.sleep(0.05)

    async def _wait(self, last_id: bytes, limit: float = IDLE_BACKSTOP_S) -> bool:
        """Wait (read-only) until an entry newer than ``last_id`` arrives, at most ``limit``
        seconds with a waiter (a blocking read of its own waits ``block_ms``).

        True when there is something to fetch (or the wait failed: fetch to find out)."""
        c = self.ctx
        self._idle = True
        try:
            if c.waiter is not None:
                fut = c.waiter.wait(self.stream, last_id)
                try:
                    # The waiter wakes us when the stream grows (or when its read failed);
                    # pause, stop and the lease are checked on waking. This timeout is
                    # only a backstop, long: each wake of an idle partition costs client
                    # CPU, and a fleet's consumers own thousands (docs/scaling.md).
                    # asyncio.wait never cancels the waiter's future, and resumes us one
                    # trip through the event loop sooner than wait_for(shield(...)).
                    done, _ = await asyncio.wait((fut,), timeout=limit)
                    return bool(done) and fut.result()
                finally:
                    if not fut.done():
                        c.waiter.discard(self.stream, fut)
            return await self._wait_alone(last_id)
        finally:
            self._idle = False

    async def _wait_alone(self, last_id: bytes) -> bool:
        slots = self.ctx.wait_slots
        if slots is not None and slots.locked():
            await asyncio.sleep(POLL_S)  # every blocking-wait slot is taken: poll
            return True
        try:
            async with slots if slots is not None else _NO_LIMIT:
                async with asyncio.timeout(self.ctx.block_ms / 1000 + self.ctx.fetch_timeout):
                    found = await self.ctx.client.xread({self.stream: last_id}, count=1, block=self.ctx.block_ms)
            return bool(found)
        except Exception as exc:  # read-only: the next fetch finds out what happened
            # (a blocked read whose slot moved is answered UNBLOCKED or a redirection)
            if not (transient(exc) or isinstance(exc, ResponseError)):
                raise
            if isinstance(exc, CONNECTION_ERRORS):
                refresh_slots(self.ctx.client, background=True)
            await asyncio.sleep(0.1)
            return True

    async def _dispatch(self, entries: list[StreamEntry], counts: list[int]) -> int:
        """Decode a fetched batch (XREADGROUP's entries; ``counts`` for a re-read) and
        hand it to the dispatcher. Returns how many fetch credits the dispatcher kept
        (concurrent handlers give them back as each message finishes; else 0)."""
        c = self.ctx
        self._batch_gen = gen = self.generation
        topic, partition, deserializer = self.tp.topic, self.tp.partition, c.deserializer
        messages: list[Message] = []
        raw: dict[str, list[bytes] | None] = {}
        held = self.held
        fresh = not counts  # new entries: none can be held already, every count is 1
        plain = fresh  # nothing to check before the first invocation (no TTL, attempts 1)
        now_ms = int(time.time() * 1000)
        # A re-read while concurrent handlers run meets entries still in their hands, or
        # finished with the ack not yet sent: those are not new deliveries, skip them.
        skip = self._in_hand() if not fresh else None
        common = decode_fresh(topic, partition, entries) if fresh and deserializer is None else None
        if common is not None:  # the common batch: no TTL, no headers, attempts 1, nothing to skip
            messages, ids = common
            held.update(dict.fromkeys(ids, 0))
            raw = dict(zip(ids, [fields for _, fields in entries], strict=True))
            entries_left: list[StreamEntry] = []
        else:
            entries_left = entries
        for j, (entry_id, fields) in enumerate(entries_left):
            if skip and (entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)) in skip:
                continue
            try:
                msg = decode_fields(topic, partition, entry_id, 1 if fresh else counts[j], fields, deserializer)
            except DecodeError as exc:
                await self._poison(entry_id, 1 if fresh else counts[j], fields, exc)
                continue
            if msg.expires_at is not None:
                plain = False
                if msg.expires_at <= now_ms:
                    raw[msg.id] = fields
                    self.raw = raw
                    await self.expired(msg, advance=False)
                    continue
            if msg.headers and msg.headers.get(REQUEUE_HEADER, c.group) != c.group:
                # A dead letter requeued for another group: ack it, never handle it.
                c.stats.requeue_skipped += 1
                self.finish(msg.id, advance=False)
                continue
            if not fresh:
                before = held.get(msg.id)
                if before is not None and before >= msg.attempts:
                    # Read again by the same owner after an invocation that was abandoned
                    # (not a failure it recorded): that invocation still counts.
                    msg = msg._replace(attempts=before + 1)
                    messages.append(msg)
                    raw[msg.id] = fields
                    continue
            held[msg.id] = msg.attempts - 1
            messages.append(msg)
            raw[msg.id] = fields
        if gen != self.generation:
            return 0  # a seek while a dead letter was written: the batch is discarded
        self.plain = plain
        self.raw = raw
        raw_last = entries[-1][0]
        batch_last = raw_last.decode() if isinstance(raw_last, bytes) else str(raw_last)
        if self._read_id != ">":
            self._read_id = batch_last
        if not messages:
            self.last_handled = batch_last
            return 0
        dispatcher = c.dispatcher
        if dispatcher is None or dispatcher.closed or not c.lease_valid():
            self._reread()
            return 0
        if dispatcher.concurrent:
            # Queued in lanes, it returns at once: everything up to batch_last is now
            # finished or in the window, whose floor is where a re-read starts.
            await dispatcher(self, messages)
            self.last_handled = batch_last
            return len(messages)
        self._busy = True
        try:
            await dispatcher(self, messages)
        finally:
            self._busy = False
        if gen != self.generation:
            return 0  # a seek during dispatch: it set where the next read starts
        held = self.held
        if self.last_handled == messages[-1].id or not any(m.id in held for m in messages):
            self.last_handled = batch_last  # every entry of the batch is finished
        elif not self._stopping:
            # Stopped part-way (lease lost, dispatcher detached): the rest is still
            # pending under our name; read it again before anything new.
            self._reread()
        return 0

    def _in_hand(self) -> set[str] | None:
        lanes = self.lanes
        if lanes is None or not (lanes.window.open or self.acks):
            return None
        return lanes.window.open | set(self.acks)

    async def _poison(self, entry_id: bytes, attempts: int, fields: list[bytes] | None,
                      exc: DecodeError) -> None:
        reason = str(exc)
        trimmed = reason == "trimmed"
        if trimmed:
            self.ctx.stats.trimmed += 1
        else:
            self.ctx.stats.decode_failures += 1
        eid = entry_id.decode()
        log.error("%r: entry %s cannot be handled (%s); dead-lettering it", self, eid, reason)
        await self.dead_letter(eid, entry_slots(entry_id, attempts, fields),
                               "trimmed" if trimmed else "decode_error", attempts, None if trimmed else exc)
        self.finish(eid, advance=False)

    async def expired(self, msg: Message, *, advance: bool = True) -> None:
        """``msg`` outlived its TTL: count it, dead-letter it if the topic asks, finish it."""
        c = self.ctx
        c.stats.expired += 1
        if c.dead_letters.dead_letter_expired(self.tp.topic):
            await self.dead_letter(msg.id, None, "expired", msg.attempts)
        self.finish(msg.id, advance=advance)

    async def dead_letter(self, entry_id: str, entry: FetchedEntry | None, reason: str, attempts: int,
                          error: BaseException | None = None) -> None:
        """Write one dead letter (retried like every call); the caller then finishes the entry.
        ``entry``: its fields, else those of the batch in dispatch (or, not at hand, the
        writer copies them from the stream)."""
        if entry is None and entry_id in self.raw:
            entry = entry_slots(entry_id.encode(), attempts, self.raw[entry_id])
        await self.call("dead-letter", lambda: self.ctx.dead_letters.write(
            self.tp, self.stream, entry_id, entry, reason, attempts, error))


class _NoLimit:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *_: object) -> None:
        return None


_NO_LIMIT = _NoLimit()
