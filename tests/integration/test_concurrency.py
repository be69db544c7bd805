"""Concurrent process(): ``Consumer(concurrency=N, ordering=...)`` (docs/architecture.md §7).

What it promises: with ``ordering="key"`` the same key never runs twice at once and runs
in partition order while different keys overlap; ``"none"`` reaches N; a failing
message blocks only its key and is dead-lettered after ``max_attempts``; fetching stops
at ``max_in_flight``; a revoked or fenced partition acks nothing that was not handled.
Tests taking ``target`` run on one node and on the 3-master cluster.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import pytest
import redis.asyncio
from support.consuming import (
    Seen,
    create_topic,
    make_consumer,
    produce,
    start_processing,
    stop,
    stop_all,
)
from support.eventually import eventually
from support.leaks import resource_warnings
from support.proxy import FaultProxy
from support.servers import AsyncClient, Target

from redcurrent import Admin, Backoff, ConfigError, Consumer, Message, Producer
from redcurrent.keys import Keys
from redcurrent.testing import check_history

pytestmark = pytest.mark.timeout(60)

TOPIC = "orders"


@dataclass
class Calls:
    """Handler intervals, per key, and the most calls seen in flight at once."""

    intervals: dict[Any, list[tuple[int, int, int]]] = field(default_factory=lambda: defaultdict(list))
    in_flight: int = 0
    most: int = 0
    per_partition: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    most_per_partition: int = 0

    def handler(self, seen: Seen, name: str, work: float) -> Any:
        async def handle(msg: Message) -> None:
            seen.record(name, "handled", msg)
            started = time.monotonic_ns()
            self.in_flight += 1
            self.per_partition[msg.partition] += 1
            self.most = max(self.most, self.in_flight)
            self.most_per_partition = max(self.most_per_partition, self.per_partition[msg.partition])
            try:
                await asyncio.sleep(work)
            finally:
                self.in_flight -= 1
                self.per_partition[msg.partition] -= 1
            self.intervals[msg.key].append((started, time.monotonic_ns(), msg.value["seq"]))
            seen.record(name, "acked", msg)

        return handle

    def overlaps(self) -> list[Any]:
        bad = []
        for key, spans in self.intervals.items():
            spans = sorted(spans)
            bad += [key for a, b in pairwise(spans) if b[0] < a[1]]
        return bad


def returned(seen: Seen) -> int:
    """Handler calls that returned (the library acks each)."""
    return sum(e.event == "acked" for e in seen.events)


async def pending(client: Any, ns: str, partitions: int, group: str = "g") -> int:
    keys = Keys(ns)
    total = 0
    for p in range(partitions):
        total += int((await client.xpending(keys.stream(TOPIC, p), group))["pending"])
    return total


async def test_key_ordering_never_overlaps_a_key_keeps_its_order_and_overlaps_keys(
    target: Target, target_client: AsyncClient, namespace: str
) -> None:
    """ordering="key": same-key intervals never overlap, per-key order holds, and many
    more handlers run at once than there are partitions."""
    url, ns = target.url, namespace
    await create_topic(url, ns, TOPIC, 4)
    async with Producer(url, namespace=ns) as p:
        sent = await produce(p, TOPIC, [f"k{i}" for i in range(40)], 10)
    seen, calls = Seen(), Calls()
    c = make_consumer(url, ns, TOPIC, start="earliest", concurrency=32, ordering="key")
    task = start_processing(c, calls.handler(seen, "c", 0.005))
    try:
        await eventually(lambda: returned(seen) >= len(sent), 20, message="all handled")
        report = check_history(sent, seen.events)
        assert report.ok and not report.duplicated, report.summary()
        assert calls.overlaps() == []
        assert calls.most >= 16, calls.most  # 4 partitions, up to 32 keys at once
        await eventually(lambda: _zero(pending(target_client, ns, 4)), 5, message="all acked")
    finally:
        await stop_all((c, task))


async def _zero(n: Any) -> bool:
    return await n == 0


async def test_ordering_none_reaches_concurrency(redis_url: str, namespace: str) -> None:
    await create_topic(redis_url, namespace, TOPIC, 1)
    async with Producer(redis_url, namespace=namespace) as p:
        sent = await produce(p, TOPIC, ["same-key"], 60)
    seen, calls = Seen(), Calls()
    c = make_consumer(redis_url, namespace, TOPIC, start="earliest", concurrency=10, ordering="none")
    task = start_processing(c, calls.handler(seen, "c", 0.05))
    try:
        await eventually(lambda: returned(seen) >= len(sent), 20, message="all handled")
        assert calls.most == 10
        assert not check_history(sent, seen.events).lost
    finally:
        await stop_all((c, task))


async def test_ordering_partition_runs_one_at_a_time_per_partition(redis_url: str, namespace: str) -> None:
    await create_topic(redis_url, namespace, TOPIC, 3)
    async with Producer(redis_url, namespace=namespace) as p:
        sent = await produce(p, TOPIC, [f"k{i}" for i in range(12)], 5)
    seen, calls = Seen(), Calls()
    c = make_consumer(redis_url, namespace, TOPIC, start="earliest", concurrency=8)
    task = start_processing(c, calls.handler(seen, "c", 0.005))
    try:
        await eventually(lambda: returned(seen) >= len(sent), 20, message="all handled")
        assert calls.most_per_partition == 1
        assert calls.most >= 2  # partitions still run side by side
        report = check_history(sent, seen.events)
        assert report.ok, report.summary()
    finally:
        await stop_all((c, task))


async def test_failing_message_blocks_only_its_key_and_is_dead_lettered(
    target: Target, target_client: AsyncClient, namespace: str
) -> None:
    url, ns = target.url, namespace
    await create_topic(url, ns, TOPIC, 1)
    async with Producer(url, namespace=ns) as p:
        sent = await produce(p, TOPIC, ["bad", "a", "b", "c"], 5)
    seen = Seen()
    tries: list[float] = []

    async def handle(msg: Message) -> None:
        if msg.key == "bad" and msg.value["seq"] == 0:
            tries.append(time.monotonic())
            raise RuntimeError("boom")
        seen.record("c", "handled", msg)
        await asyncio.sleep(0.002)
        seen.record("c", "acked", msg)

    c = make_consumer(url, ns, TOPIC, start="earliest", concurrency=4, ordering="key", max_attempts=3,
                      backoff=Backoff(initial=0.3, multiplier=1.0, max=0.3, jitter=0.0))
    task = start_processing(c, handle)
    try:
        await eventually(lambda: returned(seen) >= 19, 20, message="all but the bad one handled")
        report = check_history([s for s in sent if (s.key, s.seq) != ("bad", 0)], seen.events)
        assert report.ok, report.summary()
        assert len(tries) == 3
        others_done = max(e.t_ns for e in seen.events if e.key != "bad") / 1e9
        bad_next = min(e.t_ns for e in seen.events if e.key == "bad") / 1e9
        assert others_done < tries[-1], "other keys waited for the failing one"
        assert bad_next > tries[-1], "its key moved on before it was dead-lettered"
        assert [e.seq for e in seen.events if e.key == "bad" and e.event == "handled"] == [1, 2, 3, 4]
        async with Admin(url, namespace=ns) as admin:
            (dl,) = await admin.dead_letters(TOPIC, "g")
            assert dl.attempts == 3
        await eventually(lambda: _zero(pending(target_client, ns, 1)), 5, message="all acked")
    finally:
        await stop_all((c, task))


async def test_fetching_pauses_at_max_in_flight(redis_url: str, namespace: str, r: redis.asyncio.Redis) -> None:
    await create_topic(redis_url, namespace, TOPIC, 2)
    async with Producer(redis_url, namespace=namespace) as p:
        sent = await produce(p, TOPIC, [f"k{i}" for i in range(20)], 10)
    gate = asyncio.Event()
    seen = Seen()

    async def handle(msg: Message) -> None:
        seen.record("c", "handled", msg)
        await gate.wait()
        seen.record("c", "acked", msg)

    c = make_consumer(redis_url, namespace, TOPIC, start="earliest", concurrency=5, ordering="none",
                      max_in_flight=30, batch_size=10)
    task = start_processing(c, handle)
    try:
        await eventually(lambda: seen.count() == 5, 5, message="5 handlers in flight")
        await asyncio.sleep(0.5)
        assert seen.count() == 5
        assert await pending(r, namespace, 2) <= 30  # fetched and not finished
        gate.set()
        await eventually(lambda: returned(seen) >= len(sent), 20, message="all handled")
        report = check_history(sent, seen.events)
        assert not report.lost and not report.unacked, report.summary()
    finally:
        gate.set()
        await stop_all((c, task))


async def test_revoke_mid_flight_acks_nothing_that_was_not_handled(
    target: Target, target_client: AsyncClient, namespace: str
) -> None:
    """a's handlers hang; when b joins, a's revoked partition's handlers are cancelled
    after rebalance_timeout, acking nothing; b handles them. Then a stops the same way."""
    url, ns = target.url, namespace
    await create_topic(url, ns, TOPIC, 2)
    async with Producer(url, namespace=ns) as p:
        sent = await produce(p, TOPIC, [f"k{i}" for i in range(20)], 3)
    seen = Seen()
    never = asyncio.Event()

    async def hang(msg: Message) -> None:
        seen.record("a", "handled", msg)
        await never.wait()

    a = make_consumer(url, ns, TOPIC, member_id="a", start="earliest", concurrency=50, ordering="key",
                      rebalance_timeout=0.5)
    b = make_consumer(url, ns, TOPIC, member_id="b", start="earliest", concurrency=50, ordering="key")
    ta = start_processing(a, hang)
    tb: asyncio.Task[None] | None = None
    try:
        await eventually(lambda: len(seen.handled("a")) == 20, 5, message="a holds one message per key")
        tb = start_processing(b, seen.handler("b"))
        await eventually(lambda: len(a.assignment()) == 1 and len(b.assignment()) == 1, 10,
                         message="b took a partition")
        await stop(a)
        await eventually(lambda: len(seen.handled("b")) >= len(sent), 10, message="b handled everything")
        report = check_history(sent, seen.events)
        assert not report.lost and not report.unacked, report.summary()
        assert report.violations == []
        await eventually(lambda: _zero(pending(target_client, ns, 2)), 5, message="all acked")
    finally:
        await stop_all((a, ta), (b, tb))


async def test_handlers_finishing_after_fencing_ack_nothing(
    redis_url: str, namespace: str, r: redis.asyncio.Redis
) -> None:
    """The owner key is taken while handlers run: when they return, their acks are
    refused (inside the library: the handler sees nothing) and stay pending."""
    await create_topic(redis_url, namespace, TOPIC, 1)
    async with Producer(redis_url, namespace=namespace) as p:
        await produce(p, TOPIC, [f"k{i}" for i in range(10)], 1)
    gate = asyncio.Event()
    seen = Seen()
    errors: list[BaseException] = []

    async def handle(msg: Message) -> None:
        seen.record("c", "handled", msg)
        try:
            await gate.wait()
        except Exception as exc:  # no FencedError (or any error) is raised into user code
            errors.append(exc)
            raise
        seen.record("c", "acked", msg)

    c = make_consumer(redis_url, namespace, TOPIC, start="earliest", concurrency=10, ordering="key")
    task = start_processing(c, handle)
    try:
        await eventually(lambda: seen.count() == 10, 5, message="10 in flight")
        owner = Keys(namespace).owner(TOPIC, 0, "g")
        await r.set(owner, "someone-else|x", px=60_000)
        gate.set()
        await eventually(lambda: c.stats().get("partitions_lost", 0) >= 1, 5, message="fenced")
        assert errors == []
        assert await pending(r, namespace, 1) == 10  # nothing acked
    finally:
        gate.set()
        await stop_all((c, task))


def test_concurrency_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="needs concurrency"):
        Consumer(TOPIC, group="g", ordering="key")
    with pytest.raises(ConfigError, match="concurrency"):
        Consumer(TOPIC, group="g", concurrency=0)
    with pytest.raises(ConfigError, match="ordering"):
        Consumer(TOPIC, group="g", concurrency=2, ordering="random")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_in_flight"):
        Consumer(TOPIC, group="g", concurrency=200, max_in_flight=100)


async def test_a_re_read_skips_no_unfinished_entry_before_a_finished_one(
    redis_url: str, namespace: str
) -> None:
    """process() ends while an early entry's handler hangs and later ones finished: the
    next process() call gets the early one again (and none of the finished ones)."""
    await create_topic(redis_url, namespace, TOPIC, 1)
    async with Producer(redis_url, namespace=namespace) as p:
        sent = await produce(p, TOPIC, ["slow", "a", "b", "c"], 1)
    seen = Seen()

    async def first(msg: Message) -> None:
        seen.record("first", "handled", msg)
        if msg.key == "slow":
            await asyncio.Event().wait()  # until the process() call ends
        seen.record("first", "acked", msg)

    c = make_consumer(redis_url, namespace, TOPIC, start="earliest", concurrency=4, ordering="key")
    async with c:
        task = start_processing(c, first)
        await eventually(lambda: returned(seen) == 3, 5, message="a, b, c returned")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        task = start_processing(c, seen.handler("second"))
        await eventually(lambda: len(seen.handled("second")) >= 1, 5, message="re-delivered")
        await asyncio.sleep(0.3)
        assert [m.key for m in seen.handled("second")] == ["slow"]
        report = check_history(sent, seen.events)
        assert not report.lost and not report.unacked, report.summary()
        await stop(c)
        await task


async def test_an_ambiguous_fetch_re_reads_without_handing_out_what_is_in_flight(
    redis_url: str, namespace: str, proxy: FaultProxy
) -> None:
    """A fetch whose reply is lost while a handler is in flight: the re-read starts before
    that entry (so nothing unfinished is skipped) and does not hand it out again."""
    await create_topic(redis_url, namespace, TOPIC, 1)
    gate = asyncio.Event()
    seen = Seen()

    async def handle(msg: Message) -> None:
        seen.record("c", "handled", msg)
        if msg.key == "slow" and msg.value["seq"] == 0:
            await gate.wait()
        seen.record("c", "acked", msg)

    c = make_consumer(proxy.url, namespace, TOPIC, start="earliest", concurrency=8, ordering="key")
    task = start_processing(c, handle)
    try:
        async with Producer(redis_url, namespace=namespace) as p:
            sent = await produce(p, TOPIC, ["slow", "a", "b"], 1)
            await eventually(lambda: returned(seen) == 2, 5, message="a and b returned")
            proxy.drop_next_reply(f"{Keys(namespace).stream(TOPIC, 0)}\r\n".encode())
            sent += await produce(p, TOPIC, ["slow", "a", "b"], 2, first_seq=1)
            await eventually(lambda: proxy.dropped_replies >= 1, 5, message="a fetch reply lost")
        await eventually(lambda: returned(seen) == 6, 10, message="a and b went on")
        gate.set()
        await eventually(lambda: returned(seen) == len(sent), 10, message="all returned")
        report = check_history(sent, seen.events)
        assert report.ok and not report.duplicated, report.summary()
    finally:
        gate.set()
        await stop_all((c, task))


async def test_seek_from_a_concurrent_handler_replays_the_partition(
    redis_url: str, namespace: str, r: redis.asyncio.Redis
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 1)
    async with Producer(redis_url, namespace=namespace) as p:
        sent = await produce(p, TOPIC, [f"k{i}" for i in range(5)], 4)
    seen = Seen()
    sought: list[bool] = []
    c = make_consumer(redis_url, namespace, TOPIC, start="earliest", concurrency=8, ordering="key")

    async def handle(msg: Message) -> None:
        seen.record("c", "handled", msg)
        if msg.key == "k0" and msg.value["seq"] == 2 and not sought:
            sought.append(True)
            await c.seek_to_beginning()
        await asyncio.sleep(0.002)
        seen.record("c", "acked", msg)

    task = start_processing(c, handle)
    try:
        await eventually(lambda: _zero(pending(r, namespace, 1)) if sought else False, 10,
                         message="sought, then drained")
        await eventually(lambda: returned(seen) >= len(sent) + 1, 10, message="replayed")
        after = [e for e in seen.events if e.event == "handled"]
        k0 = [e.seq for e in after if e.key == "k0"]
        assert k0[:3] == [0, 1, 2] and k0[3:] == [0, 1, 2, 3], k0  # replayed from the start
        assert calls_overlap_free(seen)
        report = check_history(sent, seen.events)
        assert not report.lost and not report.unacked, report.summary()
    finally:
        await stop_all((c, task))


def calls_overlap_free(seen: Seen) -> bool:
    """No key's handled event comes between another call's handled and acked of that key."""
    open_keys: set[Any] = set()
    for e in seen.events:
        if e.event == "handled":
            if e.key in open_keys:
                return False
            open_keys.add(e.key)
        elif e.event == "acked":
            open_keys.discard(e.key)
    return True


async def test_graceful_stop_finishes_and_acks_calls_in_flight_and_nothing_else(
    redis_url: str, namespace: str, r: redis.asyncio.Redis
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 1)
    async with Producer(redis_url, namespace=namespace) as p:
        sent = await produce(p, TOPIC, [f"k{i}" for i in range(30)], 1)
    seen = Seen()
    a = make_consumer(redis_url, namespace, TOPIC, member_id="a", start="earliest", concurrency=10,
                      ordering="none")
    ta = start_processing(a, seen.handler("a", work=0.3))
    await eventually(lambda: len(seen.handled("a")) == 10, 5, message="10 in flight")
    await stop(a)
    await ta
    assert returned(seen) == 10  # the calls in flight finished...
    assert await pending(r, namespace, 1) == 20  # ...and were acked; the rest was not
    b = make_consumer(redis_url, namespace, TOPIC, member_id="b", start="earliest", concurrency=10,
                      ordering="none")
    tb = start_processing(b, seen.handler("b"))
    try:
        await eventually(lambda: returned(seen) == 30, 5, message="b handled the rest")
        report = check_history(sent, seen.events)
        assert report.ok and not report.duplicated, report.summary()
    finally:
        await stop_all((b, tb))


async def test_stop_called_inside_a_concurrent_handler_returns_and_ends_process(
    redis_url: str, namespace: str
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 1)
    async with Producer(redis_url, namespace=namespace) as p:
        await produce(p, TOPIC, [f"k{i}" for i in range(10)], 3)
    seen = Seen()
    c = make_consumer(redis_url, namespace, TOPIC, start="earliest", concurrency=4, ordering="key")

    async def handle(msg: Message) -> None:
        seen.record("c", "handled", msg)
        if seen.count() == 5:
            await c.stop()  # returns at once; the stop completes once the handlers return
        seen.record("c", "acked", msg)

    await asyncio.wait_for(c.process(handle), 10)
    assert returned(seen) == seen.count()  # every call that started returned


def test_process_returns_after_a_stop_from_a_handler_is_complete(redis_url: str, namespace: str) -> None:
    """A program whose handler calls stop() leaves its event loop once process() returns:
    the stop must be complete by then, or asyncio.run cancels its last steps and the
    consumer's connections are left open (found as unclosed sockets at collection)."""

    async def program(round_: int) -> None:
        if round_ == 0:
            await create_topic(redis_url, namespace, TOPIC, 1)
        async with Producer(redis_url, namespace=namespace) as p:
            await produce(p, TOPIC, ["k"], 3)
        c = make_consumer(redis_url, namespace, TOPIC, start="earliest")

        async def handle(msg: Message) -> None:
            await c.stop()

        await asyncio.wait_for(c.process(handle), 10)

    assert resource_warnings(program) == []
