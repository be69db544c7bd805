"""Group membership from the consumer's side: join, heartbeat, lease, handoff.

The coordinator itself is the ``heartbeat`` Lua script (topic slot): it keeps the
member registry and deadlines by Redis's clock, bumps the epoch on any change and
computes the assignment, in one place. This module runs it every heartbeat interval,
keeps a local lease by the monotonic clock (docs/architecture.md §4), and reconciles what this
consumer owns with its target: lost partitions are revoked cooperatively (finish
in-flight, ack, on_revoke, release), gained ones claimed with the fenced claim script.
Heartbeats run on their own task and never wait on handlers.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from . import scripts
from . import topics as topics_mod
from .config import ConsumerOptions
from .connection import trim_idle
from .errors import (
    FencedError,
    FencedInstanceError,
    LeaseExpiredError,
    PartitionBusyError,
    UnknownTopicError,
    translate,
)
from .fetcher import RETRY_MAX_S, FetchContext, PartitionFetcher
from .protocols import Listener
from .replies import (
    Scalar,
    parse_claim,
    parse_drained,
    parse_heartbeat,
    parse_refresh,
    parse_refresh_set,
)
from .structs import TopicPartition

if TYPE_CHECKING:
    from .connection import Client

__all__ = ["Coordinator", "Listener"]

log = logging.getLogger(__name__)

_HEARTBEAT = scripts.script("heartbeat")
_CLAIM = scripts.script("claim")
_REFRESH = scripts.script("refresh")
_DRAINED = scripts.script("drained")
BUSY_RETRY_S = 0.05  # first retry of a busy claim; doubles each round up to a heartbeat
LEASE_FRACTION = 0.9  # the local lease ends a little before the owner key expires


@dataclass(slots=True)
class _TopicState:
    epoch: int = 0
    partitions: int = 0
    created: int = 0
    target: frozenset[int] = frozenset()
    op: str = "join"


class Coordinator:
    """Keeps one consumer's membership and partition ownership (private)."""

    def __init__(
        self,
        client: Client,
        options: ConsumerOptions,
        topics: Sequence[str],
        member_id: str,
        instance_id: str,
        ctx: FetchContext,
        listeners: dict[str, Listener | None],
        *,
        on_fatal: Callable[[BaseException], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        native_refresh: bool = False,
        trim_pool: bool = False,
    ) -> None:
        self._client = client
        self._opt = options
        self._keys = options.keys
        self.topics = tuple(topics)
        self.member_id = member_id
        self.instance_id = instance_id
        self.token = f"{member_id}|{instance_id}"
        self._ctx = ctx
        self._listeners = listeners
        self.state = {t: _TopicState() for t in topics}
        self.fetchers: dict[TopicPartition, PartitionFetcher] = {}
        self.paused: set[TopicPartition] = set()
        self.born_after_join: set[str] = set()  # topics that did not exist when we subscribed
        self.lease_deadline = 0.0
        self._wake_reconcile = asyncio.Event()
        self._wake_heartbeat = asyncio.Event()
        self._lane = asyncio.Lock()  # see _execute
        self._native_refresh = native_refresh  # SET ... IFEQ (Valkey 8.1+) instead of the refresh script
        self._refresh_commands: dict[str, scripts.Command] = {}
        self._trim_pool = trim_pool  # our own client: close its idle connections when quiet
        self._calls_seen = -1
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        # Set when the background loops must end (abort, or a stop past its revoke). They
        # check it as well as being cancelled: on Python 3.11 redis-py's asyncio.wait_for
        # can swallow a cancellation that lands as a command is written, and the loop
        # would otherwise run on until cancel_all cancelled it again.
        self._closed = False
        self._retry_at = 0.0
        self._busy_rounds = 0  # claim rounds in a row that met a busy partition
        self._rejoining = False
        self._last_beat_ok = False
        self.fatal: BaseException | None = None
        self._on_fatal = on_fatal
        self._on_error = on_error
        self.errors: list[BaseException] = []
        self._last_beat_at = 0.0  # monotonic time of the last heartbeat that got a reply
        self._barrier_checks: dict[str, asyncio.Future[bool]] = {}
        ctx.barrier_open = self.barrier_open

    # -- lifecycle --
    async def start(self) -> None:
        """Join every topic's group (the first heartbeat), then run in the background."""
        await self._heartbeat_once()
        await self._reconcile()
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="redcurrent-heartbeat"),
            asyncio.create_task(self._reconcile_loop(), name="redcurrent-rebalance"),
        ]

    async def stop(self, budget: float) -> None:
        """Graceful: finish in-flight, ack, release every partition, then leave; all of it
        within ``budget`` seconds, whatever handlers do (in-flight handlers get at most
        ``rebalance_timeout`` of it, and what is left over is for releasing and leaving)."""
        deadline = time.monotonic() + budget
        self._stopping = True
        # No claim may land after the revoke below took its list (its fetchers would
        # outlive the stop); heartbeats go on meanwhile, so the lease holds while
        # in-flight handlers finish.
        await cancel_all([t for t in self._tasks if t.get_name() == "redcurrent-rebalance"])
        in_flight = min(self._opt.rebalance_timeout, max(0.1, budget * 0.8))
        await self._revoke(list(self.fetchers), in_flight, deadline)
        self._closed = True
        await cancel_all(self._tasks)
        self._tasks = []
        try:
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                await self._leave()
        except Exception as exc:  # the session timeout will expire us instead
            log.warning("leaving the group failed (%s); members take over after the session timeout",
                        translate(exc, "leave"))

    async def abort(self) -> None:
        """Forced stop: drop everything without acking; unacked entries stay pending."""
        self._stopping = True
        self._closed = True
        for f in self.fetchers.values():
            f.abort()
        await cancel_all(self._tasks)
        self.fetchers.clear()

    def in_fetcher_task(self) -> bool:
        """True when called from a partition's fetch/handler task."""
        me = asyncio.current_task()
        return me is not None and any(f.runs(me) for f in self.fetchers.values())

    def lease_valid(self) -> bool:
        return time.monotonic() < self.lease_deadline

    def assignment(self) -> set[TopicPartition]:
        return set(self.fetchers)

    def epoch(self, topic: str) -> int:
        return self.state[topic].epoch

    async def _execute(self, calls: Sequence[scripts.Op]) -> list[Any]:
        """Every coordinator round trip (heartbeat and refresh, claim, release, leave),
        one at a time: the coordinator holds one connection per node, however many
        partitions it claims or releases at once, so a fleet's connections are bounded by
        its members, not its partitions (docs/scaling.md)."""
        async with self._lane:
            return await scripts.execute_calls(self._client, calls)

    # -- heartbeat --
    async def _heartbeat_loop(self) -> None:
        interval = self._opt.heartbeat_interval
        while self.fatal is None and not self._closed:
            started = time.monotonic()
            try:
                await self._heartbeat_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._ctx.stats.heartbeat_errors += 1
                log.warning("heartbeat failed after %.3fs: %s", time.monotonic() - started, translate(exc, "heartbeat"))
            if self._closed:
                return  # a cancellation was swallowed by the call above (see _closed)
            await self._trim_if_idle()
            delay = max(0.0, interval - (time.monotonic() - started))
            try:
                async with asyncio.timeout(delay):
                    await self._wake_heartbeat.wait()
            except TimeoutError:
                pass
            self._wake_heartbeat.clear()

    async def _trim_if_idle(self) -> None:
        """A burst of fetches leaves up to ``limit`` connections in the client's pool, open
        for good; once the consume path made no call for a whole heartbeat interval, close
        the idle ones but one (per node), so an idle consumer holds a few connections
        however many partitions it owns and however busy it was (docs/scaling.md)."""
        calls = self._ctx.calls
        quiet = calls == self._calls_seen
        self._calls_seen = calls
        if not quiet or not self._trim_pool or self._stopping:
            return
        try:
            async with self._lane:  # never while our own round trip holds a connection
                closed = await trim_idle(self._client, keep=1)
        except Exception as exc:  # best effort: connections stay open, nothing breaks
            log.debug("closing idle connections failed: %s", exc)
            return
        if closed:
            log.debug("closed %d idle connections", closed)

    async def _heartbeat_once(self) -> None:
        """One round trip: the coordinator script per topic, plus the owner-key refresh
        of every owned partition when the previous heartbeat succeeded.

        Refreshing only after a successful heartbeat bounds a split (partition nodes
        reachable, coordinator node not): the owner keys then expire one session after
        the last good heartbeat, so the coordinator's new owners are never blocked.
        """
        sent = time.monotonic()
        opt = self._opt
        calls: list[scripts.Op] = [
            scripts.Call(
                _HEARTBEAT,
                self._keys.coordinator(t, opt.group),
                [opt.group, self.member_id, self.instance_id, opt.session_ms, opt.heartbeat_ms,
                 self.state[t].op, self._info() if self.state[t].op == "join" else "", opt.assignor],
            )
            for t in self.topics
        ]
        # Never renew the lease of a partition whose fetch task has ended.
        owned = [(tp, f) for tp, f in self.fetchers.items() if f.alive] if self._last_beat_ok else []
        if self._native_refresh:  # one plain command per owner key, no script (docs/scaling.md)
            calls += [self._refresh_command(f.owner) for _, f in owned]
        else:
            refresh_args: list[str | int] = [self.token, opt.session_ms]
            calls += [scripts.Call(_REFRESH, [f.owner], refresh_args) for _, f in owned]
        self._last_beat_ok = False
        # The lease runs from `sent`, so a slow reply costs nothing; this bound only
        # keeps a half-open link from stalling the loop (a reconnect plus one round trip).
        async with asyncio.timeout(opt.session_timeout / 2):
            replies = await self._execute(calls)
        changed = False
        self._rejoining = False
        late = time.monotonic() - self._last_beat_at if self._last_beat_at else 0.0
        self._last_beat_at = time.monotonic()
        for topic, reply in zip(self.topics, replies[: len(self.topics)], strict=True):
            if isinstance(reply, Exception):
                raise reply
            changed |= self._apply(topic, reply, late)
        self._last_beat_ok = True
        ok = await self._refreshed(owned, replies[len(self.topics):]) if owned else not self.fetchers
        if ok and not any(s.op == "join" and s.target for s in self.state.values()) and not self._rejoining:
            self.lease_deadline = sent + opt.session_timeout * LEASE_FRACTION
        if changed or time.monotonic() >= self._retry_at > 0:
            self._wake_reconcile.set()

    def _refresh_command(self, owner: str) -> scripts.Command:
        """``SET owner token IFEQ token PX session GET``, encoded once per owner key: an
        idle partition's only steady client cost is this command each heartbeat."""
        cmd = self._refresh_commands.get(owner)
        if cmd is None:
            token = self.token.encode()
            cmd = self._refresh_commands[owner] = scripts.Command(
                [owner], [b"SET", owner.encode(), token, b"IFEQ", token, b"PX", str(self._opt.session_ms).encode(), b"GET"])
            if len(self._refresh_commands) > 4 * len(self.fetchers) + 64:  # forget released partitions'
                self._refresh_commands = {owner: cmd}
        return cmd

    def _apply(self, topic: str, reply: Sequence[Scalar], late: float = 0.0) -> bool:
        st = self.state[topic]
        try:
            beat = parse_heartbeat(reply, topic, self._opt.group, self.member_id)
        except FencedInstanceError as exc:
            # Static membership: a newer process took this member id over, or an operator
            # deleted the group. Like Kafka's fenced instance id, this one must stop, not
            # fight for the partitions (nor recreate the group).
            self._stop_for_good(topic, exc)
            return False
        except FencedError as exc:
            log.error("%s: %s; dropping its partitions and rejoining", topic, exc)
            self._lose([tp for tp in self.fetchers if tp.topic == topic], release=True)
            st.op, st.target = "join", frozenset()
            self._rejoining = True
            self._wake_heartbeat.set()
            return True
        except UnknownTopicError:
            log.error("%s: unknown topic; nothing assigned", topic)
            st.target = frozenset()
            return True
        if beat.rearmed:
            self._log_gap(topic, late)
        changed = beat.epoch != st.epoch or beat.mine != st.target
        if beat.epoch != st.epoch:
            self._ctx.stats.rebalances += 1
            log.info("%s: epoch %d, assigned %s", topic, beat.epoch, sorted(beat.mine))
        st.epoch, st.partitions, st.created, st.target, st.op = (
            beat.epoch, beat.partitions, beat.created, beat.mine, "beat")
        return changed

    def _stop_for_good(self, topic: str, exc: FencedError) -> None:
        log.error("%s: %s", topic, exc)
        self._lose(list(self.fetchers))
        self.fatal = exc
        self._stopping = True
        if self._on_fatal is not None:
            self._on_fatal(exc)

    def _log_gap(self, topic: str, late: float) -> None:
        gap = max(self._opt.session_timeout / 2, 3 * self._opt.heartbeat_interval)
        if late >= gap:
            log.warning(
                "coordinator gap on %s: this client sent no heartbeat for %.1fs (its event loop "
                "was blocked, or Redis was unreachable); deadlines re-armed", topic, late)
        else:
            log.warning("coordinator gap on %s: Redis was away (restart, pause or failover); "
                        "deadlines re-armed", topic)

    async def _refreshed(self, owned: list[tuple[TopicPartition, PartitionFetcher]], replies: list[Any]) -> bool:
        """Act on the refresh replies; False if any owner key could not be extended."""
        ok = True
        for (tp, f), reply in zip(owned, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            if self.fetchers.get(tp) is not f or f.stopping or self._stopping:
                continue  # being revoked or released: its key may be gone on purpose
            try:
                if self._native_refresh:
                    parse_refresh_set(reply, self.token, tp)
                else:
                    parse_refresh(reply, tp)
            except LeaseExpiredError:
                if tp.partition in self.state[tp.topic].target:
                    # Our key expired while Redis was away (restart, pause): nobody else
                    # holds it and the coordinator still assigns it to us. Claim it back.
                    ok = await self._reclaim(tp, f) and ok
            except FencedError:
                self.on_fenced(tp)
                ok = False
        return ok

    async def _reclaim(self, tp: TopicPartition, f: PartitionFetcher) -> bool:
        [reply] = await self._execute([scripts.Call(_CLAIM, self._claim_keys(tp), self._claim_args(tp))])
        if isinstance(reply, Exception):
            raise reply
        try:
            parse_claim(reply, tp)
        except PartitionBusyError:
            self.on_fenced(tp)
            return False
        log.warning("%s[%d]: owner key had expired; reclaimed it", tp.topic, tp.partition)
        return True

    def _info(self) -> str:
        return orjson.dumps({
            "host": socket.gethostname(), "pid": os.getpid(), "instance": self.instance_id,
            "session_ms": self._opt.session_ms, "client": "redcurrent",
        }).decode()

    # -- reconciliation --
    async def _reconcile_loop(self) -> None:
        while not self._closed:
            await self._wake_reconcile.wait()
            self._wake_reconcile.clear()
            try:
                await self._reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("rebalance step failed (%s); retrying next heartbeat", translate(exc, "rebalance"))
                self._retry_at = time.monotonic()

    async def _reconcile(self) -> None:
        if self._stopping:
            return
        lost = [tp for tp in self.fetchers if tp.partition not in self.state[tp.topic].target]
        if lost:
            await self._revoke(lost)
        gained = [
            TopicPartition(t, p)
            for t, st in self.state.items()
            for p in sorted(st.target)
            if TopicPartition(t, p) not in self.fetchers
        ]
        if gained:
            await self._claim(gained)

    def _claim_keys(self, tp: TopicPartition) -> list[str]:
        k, t, p, g = self._keys, tp.topic, tp.partition, self._opt.group
        return [k.stream(t, p), k.owner(t, p, g), k.barrier(t, p), k.gate(t, p, g)]

    # -- a growth's drain barrier (docs/architecture.md §10) --
    async def barrier_open(self, topic: str) -> bool:
        """True when our group has drained every partition of ``topic`` up to its growth
        barrier (or it has none): read-only, one ``drained`` script per partition on its
        own slot (one round trip per node). Partition fetchers that ask at once share one
        check. Lifting is each owner's own fenced fetch."""
        check = self._barrier_checks.get(topic)
        if check is None or check.done():
            check = self._barrier_checks[topic] = asyncio.ensure_future(self._check_barrier(topic))
        return await asyncio.shield(check)

    async def _check_barrier(self, topic: str) -> bool:
        k, g = self._keys, self._opt.group
        if not self.state[topic].partitions:
            return False  # no heartbeat has told us the topic's partitions yet
        # New partitions' barriers are at 0-0 (always drained): the old count suffices.
        calls = [scripts.Call(_DRAINED, [k.stream(topic, p), k.gate(topic, p, g), k.barrier(topic, p)], [g])
                 for p in range(self.state[topic].partitions)]
        replies = await scripts.execute_calls(self._client, calls)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return all(parse_drained(r) for r in replies)

    def _claim_args(self, tp: TopicPartition) -> list[str | int]:
        st = self.state[tp.topic]
        # "latest" is where the group stood when it was created; a topic created after
        # this consumer subscribed has nothing older than the subscription: start at 0.
        latest = self._opt.start == "latest" and tp.topic not in self.born_after_join
        start = "$" if latest and tp.partition < st.created else "0"
        return [self.token, self.member_id + "|", self._opt.session_ms, self._opt.group,
                self.member_id, start]

    async def _claim(self, gained: list[TopicPartition]) -> None:
        k, g = self._keys, self._opt.group
        for t in {tp.topic for tp in gained} & self.born_after_join:
            # Created after we subscribed: learn where its partitions live (co-located
            # topics' keys carry their anchor's hash tag) before building their keys.
            await topics_mod.read_meta(self._client, k, t)
        calls = [scripts.Call(_CLAIM, self._claim_keys(tp), self._claim_args(tp)) for tp in gained]
        replies = await self._execute(calls)
        claimed: list[TopicPartition] = []
        busy_ms: list[int] = []
        for tp, reply in zip(gained, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            try:
                won = parse_claim(reply, tp)
            except PartitionBusyError as exc:
                busy_ms.append(exc.retry_ms)
                continue
            f = PartitionFetcher(self._ctx, tp, k.stream(tp.topic, tp.partition),
                                 k.owner(tp.topic, tp.partition, g), k.gate(tp.topic, tp.partition, g))
            if tp in self.paused:
                f.pause()
            # XAUTOCLAIM (Redis 7+) reported pending entries that were trimmed away and
            # dropped them from the pending list: the fetcher dead-letters them first
            # (with its retries), never silently.
            f.trimmed = won.trimmed
            self.fetchers[tp] = f
            f.start()
            claimed.append(tp)
        self._retry_at = time.monotonic() + min(busy_ms) / 1000 if busy_ms else 0.0
        if busy_ms:
            # The previous owner is handing the partition over (its in-flight messages
            # finish, then it releases; an idle one releases within milliseconds): ask
            # again soon, backing off to one heartbeat, or to when its key expires if
            # that is sooner. Waiting a whole heartbeat would leave the partition idle
            # that long at every handoff, and a fleet's rebalance is many handoffs.
            self._busy_rounds += 1
            soon = BUSY_RETRY_S * 2 ** min(self._busy_rounds - 1, 8)
            asyncio.get_running_loop().call_later(
                min(min(busy_ms) / 1000, self._opt.heartbeat_interval, soon) + 0.01, self._wake_reconcile.set
            )
        else:
            self._busy_rounds = 0
        if claimed:
            log.info("claimed %s", [f"{tp.topic}[{tp.partition}]" for tp in claimed])
            await self._notify("on_assign", claimed)

    async def _revoke(self, lost: list[TopicPartition], timeout: float | None = None,
                      deadline: float | None = None) -> None:
        fetchers = [self.fetchers[tp] for tp in lost if tp in self.fetchers]
        if not fetchers:
            return
        timeout = self._opt.rebalance_timeout if timeout is None else timeout
        await asyncio.gather(*(f.stop(timeout) for f in fetchers))
        listener_time = timeout if deadline is None else max(0.1, min(timeout, deadline - time.monotonic()))
        await self._notify("on_revoke", lost, listener_time)
        await self._release(fetchers, deadline=deadline)
        for f in fetchers:
            self.fetchers.pop(f.tp, None)
        log.info("released %s", [f"{tp.topic}[{tp.partition}]" for tp in lost])

    async def _release(self, fetchers: list[PartitionFetcher], *, quiet: bool = False,
                       deadline: float | None = None) -> None:
        """Release partitions in one pipeline (one round trip per node, one connection),
        retrying connection errors until ``request_timeout`` (or ``deadline``)."""
        if deadline is None:
            deadline = time.monotonic() + self._opt.request_timeout
        attempt = 0
        todo = fetchers
        while todo:
            calls = [f.release_call() for f in todo]
            try:
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    replies = await self._execute(calls)
            except Exception as exc:
                replies = [exc] * len(todo)
            failed: list[PartitionFetcher] = []
            for f, r in zip(todo, replies, strict=True):
                if isinstance(r, BaseException):
                    failed.append(f)
                else:
                    f.released(r)
            attempt += 1
            if failed and time.monotonic() < deadline:
                self._ctx.stats.release_errors += len(failed)
                await asyncio.sleep(min(self._ctx.backoff.delay(attempt), RETRY_MAX_S,
                                        max(0.0, deadline - time.monotonic())))
            elif failed:
                error = next(r for r in replies if isinstance(r, BaseException))
                (log.debug if quiet else log.warning)(
                    "release of %s failed (%s); their owner keys expire after the session timeout",
                    [repr(f) for f in failed], translate(error, "release"))
                break
            todo = failed

    def _lose(self, lost: list[TopicPartition], *, release: bool = False) -> None:
        """Partitions taken from us (fenced / lease lost): drop them without acking.

        With ``release`` (the coordinator expired us), also give up owner keys that are
        still ours, so the new owners need not wait for them to expire."""
        gone = [tp for tp in lost if tp in self.fetchers]
        dropped = [self.fetchers.pop(tp) for tp in gone]
        for f in dropped:
            f.abort()
        if release and dropped:
            self._tasks.append(asyncio.get_running_loop().create_task(self._release(dropped, quiet=True)))
        if gone:
            self._ctx.stats.partitions_lost += len(gone)
            log.warning("lost %s", [f"{tp.topic}[{tp.partition}]" for tp in gone])
            task = asyncio.get_running_loop().create_task(self._notify("on_lost", gone))
            self._tasks.append(task)

    def on_error(self, tp: TopicPartition, exc: BaseException) -> None:
        """A partition's fetch task failed past its retries: give the partition up (so
        it is never silently stalled, and its lease is not renewed) and surface the error."""
        self._lose([tp], release=True)
        if self._on_error is not None:
            self._on_error(exc)
        self._wake_reconcile.set()

    def on_fenced(self, tp: TopicPartition) -> None:
        """A fetcher's script said FENCED: forget the partition, check membership now,
        and claim it again if the coordinator still assigns it to us (BUSY is retried)."""
        self._lose([tp])
        self._wake_heartbeat.set()
        self._wake_reconcile.set()

    async def _notify(self, name: str, partitions: list[TopicPartition], timeout: float | None = None) -> None:
        listener = self._listeners.get(name)
        if listener is None:
            return
        try:
            async with asyncio.timeout(timeout or self._opt.rebalance_timeout):
                result = listener(sorted(partitions, key=lambda tp: (tp.topic, tp.partition)))
                if inspect.isawaitable(result):
                    await result
        except Exception as exc:
            self.errors.append(exc)
            log.exception("%s listener failed", name)

    async def _leave(self) -> None:
        opt = self._opt
        calls = [
            scripts.Call(_HEARTBEAT, self._keys.coordinator(t, opt.group),
                         [opt.group, self.member_id, self.instance_id, opt.session_ms, opt.heartbeat_ms,
                          "leave", "", opt.assignor])
            for t in self.topics
        ]
        async with asyncio.timeout(opt.session_timeout / 2):
            await self._execute(calls)


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until they are done, cancelling again if needed.

    On Python 3.11 a cancellation can be swallowed inside a library's own
    ``wait_for``; a single cancel() then leaves a loop running forever.
    """
    me = asyncio.current_task()
    pending = {t for t in tasks if not t.done() and t is not me}  # never wait for ourselves
    while pending:
        for t in pending:
            t.cancel()
        # Soon again: a swallowed cancellation costs a stop or abort this long at most.
        _, pending = await asyncio.wait(pending, timeout=0.1)
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            log.debug("background task %s ended with %r", t.get_name(), t.exception())
