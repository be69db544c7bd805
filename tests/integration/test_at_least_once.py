"""At-least-once in the ways users really consume: the README's patterns, ordinary
mistakes (a loop body that raises, a cancelled ``process()``), routine operations
(rolling restarts during retries, TTLs with retries) and a consumer owning hundreds
of partitions. Each test reproduced a hole on the earlier code and names the promise.

Real servers only; short timeouts keep each test to seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from redis.asyncio import Redis
from support.eventually import eventually
from support.failing import consumer, pending
from support.failing import make_topic as make_topic_of

import redcurrent
from redcurrent import (
    Admin,
    Backoff,
    ConfigError,
    ConsumerStoppedError,
    FencedError,
    IllegalStateError,
    Message,
    Producer,
    Record,
    Retry,
)
from redcurrent.keys import Keys


async def make_topic(url: str, ns: str, name: str = "t", partitions: int = 1, **kw: Any) -> None:
    await make_topic_of(url, ns, name, partitions, **kw)


async def send_values(url: str, ns: str, values: list[Any], topic: str = "t", **kw: Any) -> None:
    async with Producer(url, namespace=ns) as p:
        await p.send_batch(topic, [Record(v, key=kw.get("key"), ttl=kw.get("ttl")) for v in values])


async def drain(url: str, ns: str, n: int, topic: str = "t", **kw: Any) -> list[Message]:
    """What the group's next member gets: ``n`` messages through ``process``."""
    got: list[Message] = []

    async def handle(msg: Message) -> None:
        got.append(msg)

    c = consumer(url, ns, topic, **kw)
    async with c:
        task = asyncio.create_task(c.process(handle))
        try:
            await eventually(lambda: len(got) >= n, timeout=10, message=f"{n} messages, got {len(got)}")
            await asyncio.sleep(0.2)  # nothing more arrives
        finally:
            await c.stop()
            await task
    return got


# --------------------------------------------------------------------------- async for


async def test_an_exception_in_the_async_for_body_leaves_the_message_in_hand_unacked(
    redis_url: str, namespace: str
) -> None:
    await make_topic(redis_url, namespace)
    await send_values(redis_url, namespace, list(range(1, 7)))
    seen: list[int] = []
    with pytest.raises(RuntimeError, match="database is down"):
        async with consumer(redis_url, namespace, "t") as c:
            async for msg in c:
                seen.append(msg.value)
                if msg.value == 3:
                    raise RuntimeError("database is down")
    assert seen == [1, 2, 3]
    rest = await drain(redis_url, namespace, 4)
    assert [m.value for m in rest] == [3, 4, 5, 6]
    assert rest[0].attempts == 2 and [m.attempts for m in rest[1:]] == [1, 1, 1]


async def test_a_cancelled_async_for_leaves_the_message_in_hand_unacked(
    redis_url: str, namespace: str
) -> None:
    await make_topic(redis_url, namespace)
    await send_values(redis_url, namespace, list(range(1, 7)))
    in_hand = asyncio.Event()

    async def loop() -> None:
        async with consumer(redis_url, namespace, "t") as c:
            async for msg in c:
                if msg.value == 3:
                    in_hand.set()
                    await asyncio.sleep(60)  # the database call that gets cancelled (Ctrl-C)

    task = asyncio.create_task(loop())
    await asyncio.wait_for(in_hand.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [m.value for m in await drain(redis_url, namespace, 4)] == [3, 4, 5, 6]


async def test_leaving_the_async_for_with_break_acks_the_message_in_hand(
    redis_url: str, namespace: str
) -> None:
    await make_topic(redis_url, namespace)
    await send_values(redis_url, namespace, list(range(1, 7)))
    async with consumer(redis_url, namespace, "t") as c:
        async for msg in c:
            if msg.value == 3:
                break
    assert [m.value for m in await drain(redis_url, namespace, 3)] == [4, 5, 6]


# --------------------------------------------------------------------------- no silent stalls


async def test_a_handler_that_raises_cancelled_error_itself_is_retried_not_a_stall(
    redis_url: str, namespace: str
) -> None:
    await make_topic(redis_url, namespace, partitions=2)
    async with Producer(redis_url, namespace=namespace) as p:
        await p.send_batch("t", [Record({"key": f"k{i % 3}", "n": i}, key=f"k{i % 3}") for i in range(10)])
    calls: dict[int, int] = {}
    handled: list[tuple[str, int]] = []

    async def handle(msg: Message) -> None:
        n = msg.value["n"]
        calls[n] = calls.get(n, 0) + 1
        if calls[n] == 1:
            raise asyncio.CancelledError  # a library's own timeout leaking out
        handled.append((msg.value["key"], n))

    c = consumer(redis_url, namespace, "t")
    async with c:
        task = asyncio.create_task(c.process(handle))
        await eventually(lambda: len(handled) == 10, timeout=10, message=f"handled {handled}")
        await c.stop()
        await asyncio.wait_for(task, 10)
    for key in ("k0", "k1", "k2"):
        ns = [n for k, n in handled if k == key]
        assert ns == sorted(ns), handled
    assert all(v == 2 for v in calls.values())
    assert c.stats()["failed"] == 10


async def test_a_partition_that_cannot_be_fetched_surfaces_its_error_from_process(
    redis_url: str, namespace: str, r: Redis
) -> None:
    await make_topic(redis_url, namespace)
    await send_values(redis_url, namespace, [1])
    got: list[Message] = []

    async def handle(msg: Message) -> None:
        got.append(msg)

    c = consumer(redis_url, namespace, "t")
    async with c:
        task = asyncio.create_task(c.process(handle))
        await eventually(lambda: len(got) == 1, timeout=10)
        # Break the partition for good: its stream becomes a string (WRONGTYPE on fetch).
        stream = Keys(namespace).stream("t", 0)
        await r.delete(stream)
        await r.set(stream, "not a stream")
        with pytest.raises(redcurrent.RedcurrentError, match="WRONGTYPE"):
            await asyncio.wait_for(task, 15)
        assert c.stats().get("partition_errors", 0) >= 1
        # Never a lease renewed for a dead fetch task: every partition still held runs.
        assert c._coord is not None and all(f.alive for f in c._coord.fetchers.values())
        await r.delete(stream)


# --------------------------------------------------------------------------- many partitions


@pytest.mark.parametrize("partitions", [300, 1024])
async def test_one_consumer_owning_hundreds_of_partitions_consumes_everything_without_errors(
    redis_url: str, namespace: str, partitions: int, caplog: pytest.LogCaptureFixture
) -> None:
    await make_topic(redis_url, namespace, partitions=partitions)
    got: set[tuple[int, str]] = set()

    async def handle(msg: Message) -> None:
        got.add((msg.partition, msg.id))

    c = consumer(redis_url, namespace, "t", heartbeat_interval=0.5, session_timeout=5.0)
    caplog.set_level(logging.WARNING, logger="redcurrent")
    async with c:
        task = asyncio.create_task(c.process(handle))
        await eventually(lambda: len(c.assignment()) == partitions, timeout=20)
        await asyncio.sleep(3.0)  # idle: every partition waits for new entries
        async with Producer(redis_url, namespace=namespace) as p:
            await p.send_batch("t", [Record({"i": i}, key=f"key-{i}") for i in range(2000)])
        await eventually(lambda: len(got) == 2000, timeout=30, message="all 2,000 consumed")
        await c.stop()
        await task
    stats = c.stats()
    assert stats.get("fetch_errors", 0) == 0 and stats.get("heartbeat_errors", 0) == 0, stats
    assert stats.get("redis_errors", 0) == 0 and stats.get("release_errors", 0) == 0, stats
    assert stats.get("partitions_lost", 0) == 0, stats
    bad = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert not bad, bad[:5]


async def test_an_idle_consumer_of_many_partitions_holds_a_handful_of_connections(
    redis_url: str, namespace: str, r: Redis
) -> None:
    await make_topic(redis_url, namespace, partitions=256)
    c = consumer(redis_url, namespace, "t")
    before = int((await r.info("clients"))["connected_clients"])
    async with c:
        task = asyncio.create_task(c.process(lambda m: asyncio.sleep(0)))
        await eventually(lambda: len(c.assignment()) == 256, timeout=20)
        await asyncio.sleep(2.5)  # a whole block period idle
        during = int((await r.info("clients"))["connected_clients"])
        await c.stop()
        await task
    assert during - before <= 12, (before, during)  # was one per partition


# --------------------------------------------------------------------------- process() ends


@pytest.mark.parametrize("batch", [False, True])
async def test_a_cancelled_process_never_calls_its_handler_again(
    redis_url: str, namespace: str, batch: bool
) -> None:
    await make_topic(redis_url, namespace, partitions=2)
    first: list[Any] = []
    second: list[Any] = []

    async def h1(m: Any) -> None:
        first.append(m)

    async def h2(m: Any) -> None:
        second.append(m)

    c = consumer(redis_url, namespace, "t")
    async with c:
        await send_values(redis_url, namespace, list(range(10)))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                await (c.process_batch(h1) if batch else c.process(h1))
        n_first = len(first)
        await send_values(redis_url, namespace, list(range(10, 20)))
        task = asyncio.create_task(c.process_batch(h2) if batch else c.process(h2))

        def values(calls: list[Any]) -> list[int]:
            return [m.value for x in calls for m in (x if isinstance(x, list) else [x])]

        await eventually(lambda: set(range(10, 20)) <= set(values(second)), timeout=10)
        assert len(first) == n_first  # h1 was never called after its process() ended
        assert set(values(first)) | set(values(second)) >= set(range(20))
        await c.stop()
        await task


async def test_two_concurrent_process_calls_raise_a_clear_error(redis_url: str, namespace: str) -> None:
    await make_topic(redis_url, namespace)
    c = consumer(redis_url, namespace, "t")
    async with c:
        task = asyncio.create_task(c.process(lambda m: asyncio.sleep(0)))
        await asyncio.sleep(0.1)
        with pytest.raises(IllegalStateError, match="already running"):
            await c.process(lambda m: asyncio.sleep(0))
        await c.stop()
        await task


async def test_a_cancelled_process_leaves_its_unfinished_message_unacked(
    redis_url: str, namespace: str
) -> None:
    await make_topic(redis_url, namespace)
    await send_values(redis_url, namespace, [1, 2, 3])
    started = asyncio.Event()

    async def slow(msg: Message) -> None:
        if msg.value == 2:
            started.set()
            await asyncio.sleep(60)

    c = consumer(redis_url, namespace, "t")
    async with c:
        task = asyncio.create_task(c.process(slow))
        await asyncio.wait_for(started.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [m.value for m in await drain(redis_url, namespace, 2)] == [2, 3]


async def test_auto_ack_false_is_refused_by_process(redis_url: str, namespace: str) -> None:
    await make_topic(redis_url, namespace)
    async with consumer(redis_url, namespace, "t", auto_ack=False) as c:
        with pytest.raises(ConfigError, match="auto_ack"):
            await c.process(lambda m: asyncio.sleep(0))
        with pytest.raises(ConfigError, match="auto_ack"):
            await c.process_batch(lambda m: asyncio.sleep(0))


async def test_a_message_acked_by_hand_in_a_handler_that_then_raises_is_done(
    redis_url: str, namespace: str, r: Redis
) -> None:
    await make_topic(redis_url, namespace)
    await send_values(redis_url, namespace, [1])
    calls: list[int] = []
    c = consumer(redis_url, namespace, "t", max_attempts=3)

    async def handle(msg: Message) -> None:
        calls.append(msg.attempts)
        await c.ack(msg)
        raise RuntimeError("after the ack")

    async with c:
        task = asyncio.create_task(c.process(handle))
        await eventually(lambda: calls, timeout=10)
        await asyncio.sleep(0.5)
        await c.stop()
        await task
    assert calls == [1]
    async with Admin(redis_url, namespace=namespace) as admin:
        assert await admin.count_dead_letters("t", "g") == 0
    assert await pending(r, namespace) == 0


# --------------------------------------------------------------------------- attempts


async def test_graceful_handoffs_during_backoff_cost_no_attempts(
    redis_url: str, namespace: str
) -> None:
    """max_attempts=5, a handler that always fails, the consumer stopped during the
    backoff again and again: the handler runs exactly 5 times, seeing attempts 1..5."""
    await make_topic(redis_url, namespace)
    await send_values(redis_url, namespace, ["x"])
    seen: list[int] = []
    slow = Backoff(initial=5.0, multiplier=1.0, max=5.0, jitter=0.0)
    for step in range(6):
        failed_once = asyncio.Event()

        async def handle(msg: Message, failed_once: asyncio.Event = failed_once) -> None:
            seen.append(msg.attempts)
            failed_once.set()
            raise RuntimeError("always")

        c = consumer(redis_url, namespace, "t", max_attempts=5, backoff=slow)
        async with c:
            task = asyncio.create_task(c.process(handle))
            if step < 4:
                await asyncio.wait_for(failed_once.wait(), 10)
                await asyncio.sleep(0.1)  # in its backoff now
            else:
                async with Admin(redis_url, namespace=namespace) as admin:
                    await eventually(lambda: admin.count_dead_letters("t", "g"), timeout=10)
            await c.stop()  # graceful: during the backoff
            await task
        if step >= 4:
            break
    assert seen == [1, 2, 3, 4, 5]
    async with Admin(redis_url, namespace=namespace) as admin:
        [dl] = await admin.dead_letters("t", "g")
    assert (dl.attempts, dl.reason) == (5, "max_attempts")


async def test_a_graceful_stop_at_any_moment_costs_no_attempt(
    redis_url: str, namespace: str, r: Redis
) -> None:
    """Stopped at random moments while eight partitions fetch and handle small batches:
    a fetch that was out when the stop came read entries nobody handled. They stay
    pending for the next owner, with their delivery counts given back, never counted as
    an attempt (reproduced: cancelled mid-fetch, 60 of 60 such entries kept a delivery)."""
    import random

    keys = Keys(namespace)
    rng = random.Random(7)
    handled: set[tuple[str, int, str]] = set()  # ids repeat across partitions
    for step in range(12):
        topic = f"t{step}"  # a fresh backlog each time: the stop comes mid-consumption
        await make_topic(redis_url, namespace, topic, partitions=8)
        async with Producer(redis_url, namespace=namespace) as p:
            await p.send_batch(topic, [Record(i, key=f"k{i}") for i in range(2000)])

        async def handle(msgs: list[Message]) -> None:
            await asyncio.sleep(rng.random() * 0.02)
            handled.update((m.topic, m.partition, m.id) for m in msgs)

        c = consumer(redis_url, namespace, topic, batch_size=5)
        async with c:
            task = asyncio.create_task(c.process_batch(handle))
            await asyncio.sleep(0.3 + rng.random() * 0.2)
            await c.stop()
            await task
        for part in range(8):
            for e in await r.xpending_range(keys.stream(topic, part), "g", "-", "+", 100):
                assert (topic, part, e["message_id"].decode()) not in handled
                assert e["times_delivered"] == 0, e
    assert handled  # it did consume between the stops


async def test_rolling_restarts_of_five_steps_leave_first_deliveries_at_attempt_one(
    redis_url: str, namespace: str
) -> None:
    """30 messages, prefetched in batches, the consumer stopped gracefully after each
    handled message, five times: every message is handled for the first time with
    attempts == 1; then a handler failing once on each retries each once (no message
    goes to the dead letters without its retries)."""
    await make_topic(redis_url, namespace)
    await send_values(redis_url, namespace, list(range(30)))
    first_seen: dict[int, int] = {}
    for _ in range(5):
        one = asyncio.Event()

        async def handle(msg: Message, one: asyncio.Event = one) -> None:
            first_seen.setdefault(msg.value, msg.attempts)
            one.set()
            await asyncio.sleep(0.2)  # the rest of the batch waits, prefetched

        c = consumer(redis_url, namespace, "t", max_attempts=2, batch_size=100)
        async with c:
            task = asyncio.create_task(c.process(handle))
            await asyncio.wait_for(one.wait(), 10)
            await c.stop()
            await task
    assert len(first_seen) < 30
    calls: dict[int, list[int]] = {}

    async def flaky(msg: Message) -> None:
        calls.setdefault(msg.value, []).append(msg.attempts)
        if len(calls[msg.value]) == 1:
            raise RuntimeError("once")

    def all_done() -> bool:
        return set(first_seen) | set(calls) == set(range(30)) and all(len(v) == 2 for v in calls.values())

    c = consumer(redis_url, namespace, "t", max_attempts=2)
    async with c:
        task = asyncio.create_task(c.process(flaky))
        await eventually(all_done, timeout=15, message=f"{first_seen} {calls}")
        await c.stop()
        await task
    assert all(a == 1 for a in first_seen.values()), first_seen
    assert all(v == [1, 2] for v in calls.values()), calls
    async with Admin(redis_url, namespace=namespace) as admin:
        assert await admin.count_dead_letters("t", "g") == 0


async def test_a_message_that_kills_its_consumer_each_time_still_reaches_the_dead_letters(
    redis_url: str, namespace: str
) -> None:
    """abort() (a crash) costs the message it held one attempt, so a poison message
    that takes its process down every time ends in the dead letters after max_attempts."""
    await make_topic(redis_url, namespace)
    await send_values(redis_url, namespace, ["poison"])
    seen: list[int] = []
    for _ in range(3):
        started = asyncio.Event()

        async def crash(msg: Message, started: asyncio.Event = started) -> None:
            seen.append(msg.attempts)
            started.set()
            await asyncio.sleep(60)

        c = consumer(redis_url, namespace, "t", max_attempts=2, session_timeout=1.0)
        await c.start()
        task = asyncio.create_task(c.process(crash))
        done, _ = await asyncio.wait({asyncio.ensure_future(started.wait())}, timeout=4)
        await c.abort()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if not done:
            break
    assert seen == [1, 2]
    async with Admin(redis_url, namespace=namespace) as admin:
        await eventually(lambda: admin.count_dead_letters("t", "g"), timeout=10)
        [dl] = await admin.dead_letters("t", "g")
    assert dl.reason == "max_attempts" and dl.attempts == 3


# --------------------------------------------------------------------------- TTL


@pytest.mark.parametrize("batch", [False, True])
async def test_an_expired_message_never_reaches_the_handler_on_a_retry(
    redis_url: str, namespace: str, batch: bool
) -> None:
    await make_topic(redis_url, namespace, dead_letter_expired=True)
    await send_values(redis_url, namespace, ["short-lived"], ttl=0.5)
    calls: list[float] = []

    async def handle(arg: Any) -> None:
        calls.append(time.time())
        raise Retry(after=1.5)

    c = consumer(redis_url, namespace, "t")
    async with c:
        task = asyncio.create_task(c.process_batch(handle) if batch else c.process(handle))
        await eventually(lambda: c.stats().get("expired", 0) == 1, timeout=10)
        await c.stop()
        await task
    assert len(calls) == 1
    async with Admin(redis_url, namespace=namespace) as admin:
        [dl] = await admin.dead_letters("t", "g")
    assert dl.reason == "expired"


# --------------------------------------------------------------------------- acks and state


async def test_an_idle_partition_holds_no_unsent_acks(redis_url: str, namespace: str, r: Redis) -> None:
    await make_topic(redis_url, namespace)
    got: list[Message] = []

    async def handle(msg: Message) -> None:
        got.append(msg)

    c = consumer(redis_url, namespace, "t", batch_size=100)
    async with c:
        task = asyncio.create_task(c.process(handle))
        await send_values(redis_url, namespace, list(range(50)))
        await eventually(lambda: len(got) == 50, timeout=10)
        # Still running, idle: nothing handled is left unacked on the server.
        await eventually(lambda: _pending_is(r, namespace, 0), timeout=3)
        await c.stop()
        await task


async def test_a_stop_right_after_a_handler_returns_acks_it(redis_url: str, namespace: str, r: Redis) -> None:
    """A drained partition's acks may wait a few ms for the next fetch; a stop in that
    window sends them: the group's next member gets none of those messages again."""
    await make_topic(redis_url, namespace)
    handled: list[int] = []
    for n in range(10):
        await send_values(redis_url, namespace, [n])
        done = asyncio.Event()

        async def handle(msg: Message, done: asyncio.Event = done) -> None:
            handled.append(msg.value)
            done.set()

        c = consumer(redis_url, namespace, "t", start="earliest")
        async with c:
            task = asyncio.create_task(c.process(handle))
            await asyncio.wait_for(done.wait(), 10)
            await c.stop()  # within the ack linger of the message just handled
            await task
        assert await pending(r, namespace) == 0
    assert handled == list(range(10))  # each once: nothing came back to the next member


async def _pending_is(r: Redis, ns: str, n: int) -> bool:
    return await pending(r, ns) == n


async def test_ack_before_start_and_pause_before_start_say_what_is_wrong(
    redis_url: str, namespace: str
) -> None:
    c = consumer(redis_url, namespace, "t")
    msg = Message("t", 0, "1-0", None, 1, {}, 0, 1, None)
    with pytest.raises(ConsumerStoppedError, match="start the consumer"):
        await c.ack(msg)
    with pytest.raises(IllegalStateError, match="start the consumer"):
        c.pause(redcurrent.TopicPartition("t", 0))


async def test_delete_group_with_force_fences_live_members_instead_of_letting_them_recreate_it(
    redis_url: str, namespace: str, r: Redis
) -> None:
    await make_topic(redis_url, namespace, partitions=2)
    await send_values(redis_url, namespace, list(range(20)))
    got: list[Message] = []

    async def handle(msg: Message) -> None:
        got.append(msg)

    c = consumer(redis_url, namespace, "t")
    async with c:
        task = asyncio.create_task(c.process(handle))
        await eventually(lambda: len(got) == 20, timeout=10)
        async with Admin(redis_url, namespace=namespace) as admin:
            with pytest.raises(redcurrent.GroupError, match="live member"):
                await admin.delete_group("t", "g")
            await admin.delete_group("t", "g", force=True)
            with pytest.raises(FencedError, match="deleted"):
                await asyncio.wait_for(task, 10)
            await asyncio.sleep(1.0)
            assert "g" not in await admin.list_groups("t")
        for p in range(2):
            groups = await r.xinfo_groups(Keys(namespace).stream("t", p))
            assert not groups, groups
    assert len(got) == 20  # nothing replayed


async def test_a_decode_failure_is_dead_lettered_with_its_error(
    redis_url: str, namespace: str, r: Redis
) -> None:
    await make_topic(redis_url, namespace)
    await r.xadd(Keys(namespace).stream("t", 0), {"f": "1js", "v": "{not json", "k": "a"})
    c = consumer(redis_url, namespace, "t")
    async with c:
        task = asyncio.create_task(c.process(lambda m: asyncio.sleep(0)))
        await eventually(lambda: c.stats().get("decode_failures", 0) == 1, timeout=10)
        await c.stop()
        await task
    async with Admin(redis_url, namespace=namespace) as admin:
        [dl] = await admin.dead_letters("t", "g")
    assert dl.reason == "decode_error"
    assert dl.error and dl.error_type == "DecodeError"


async def test_a_blocked_event_loop_is_not_reported_as_redis_being_away(
    redis_url: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    await make_topic(redis_url, namespace)
    c = consumer(redis_url, namespace, "t")
    caplog.set_level(logging.WARNING, logger="redcurrent")
    async with c:
        task = asyncio.create_task(c.process(lambda m: asyncio.sleep(0)))
        await eventually(lambda: c.assignment(), timeout=10)
        time.sleep(2.0)  # a blocking call in the user's code: no heartbeat for 2 s  # noqa: ASYNC251
        await eventually(lambda: any("coordinator gap" in r.getMessage() for r in caplog.records), timeout=5)
        await c.stop()
        await task
    gaps = [r.getMessage() for r in caplog.records if "coordinator gap" in r.getMessage()]
    assert all("this client sent no heartbeat" in g for g in gaps), gaps
    assert not any("Redis was away" in g for g in gaps), gaps


async def test_an_async_for_message_that_kills_its_consumer_each_time_reaches_the_dead_letters(
    redis_url: str, namespace: str
) -> None:
    await make_topic(redis_url, namespace)
    await send_values(redis_url, namespace, ["poison", "next"])
    seen: list[tuple[str, int]] = []
    for _ in range(3):
        # batch_size=1: a crash costs one attempt to every message its consumer had
        # read, handed out or not (as a Kafka share group's delivery count does)
        c = consumer(redis_url, namespace, "t", max_attempts=2, batch_size=1)
        await c.start()
        msg = await asyncio.wait_for(c.getone(), 10)
        seen.append((msg.value, msg.attempts))
        await c.abort()  # the process dies with it in hand
        if msg.value != "poison":
            break
    assert seen == [("poison", 1), ("poison", 2), ("next", 1)]
    async with Admin(redis_url, namespace=namespace) as admin:
        [dl] = await admin.dead_letters("t", "g")
    assert (dl.value, dl.reason, dl.attempts) == ("poison", "max_attempts", 3)


async def test_a_batch_records_each_message_s_own_attempts(redis_url: str, namespace: str) -> None:
    """A message tried twice and one never tried land in one batch after a handoff: a
    failure of the batch costs each one attempt, not the highest count plus one."""
    await make_topic(redis_url, namespace)
    await send_values(redis_url, namespace, ["A", "B"])
    twice = asyncio.Event()
    tries: list[int] = []

    async def fail_a(msg: Message) -> None:
        tries.append(msg.attempts)
        if len(tries) == 2:
            twice.set()
        raise RuntimeError("A fails")

    slow = Backoff(initial=0.2, multiplier=1.0, max=0.2, jitter=0.0)
    c = consumer(redis_url, namespace, "t", max_attempts=5, backoff=slow, batch_size=100)
    async with c:  # process(): B waits, prefetched, behind A
        task = asyncio.create_task(c.process(fail_a))
        await asyncio.wait_for(twice.wait(), 10)
        await asyncio.sleep(0.05)
        await c.stop()
        await task
    seen: dict[str, list[int]] = {"A": [], "B": []}

    async def fail_all(msgs: list[Message]) -> None:
        for m in msgs:
            seen[m.value].append(m.attempts)
        raise RuntimeError("everything fails")

    c = consumer(redis_url, namespace, "t", max_attempts=5)
    async with c:
        task = asyncio.create_task(c.process_batch(fail_all))
        async with Admin(redis_url, namespace=namespace) as admin:
            await eventually(lambda: _count_is(admin, 2), timeout=10)
        await c.stop()
        await task
    assert tries == [1, 2]
    assert seen == {"A": [3, 4, 5], "B": [1, 2, 3, 4, 5]}


async def _count_is(admin: Admin, n: int) -> bool:
    return await admin.count_dead_letters("t", "g") == n


async def test_stop_returns_within_request_timeout_even_when_a_handler_ignores_cancellation(
    redis_url: str, namespace: str
) -> None:
    await make_topic(redis_url, namespace)
    await send_values(redis_url, namespace, ["stubborn", "next"])
    started = asyncio.Event()

    async def stubborn(msg: Message) -> None:
        started.set()
        end = time.monotonic() + 7
        while time.monotonic() < end:  # swallows every cancellation it gets
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                pass

    c = consumer(redis_url, namespace, "t", request_timeout=4.0, rebalance_timeout=1.0)
    await c.start()
    task = asyncio.create_task(c.process(stubborn))
    await asyncio.wait_for(started.wait(), 10)
    t0 = time.monotonic()
    await asyncio.wait_for(c.stop(), 10)
    took = time.monotonic() - t0
    assert took <= 4.5, took
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    rest = await drain(redis_url, namespace, 2)
    assert [m.value for m in rest] == ["stubborn", "next"]  # nothing acked, nothing lost
    left = [t for t in asyncio.all_tasks() if t.get_name().startswith("redcurrent-fetch")]
    await asyncio.wait(left, timeout=10)  # the abandoned handler ends by itself


async def test_a_zombie_reading_a_backlog_moves_nothing_after_its_partition_was_taken(
    redis_url: str, namespace: str, r: Redis
) -> None:
    """With a backlog the fetch reads with WATCH/MULTI instead of the script: the same
    fence. Once another owner holds the key, the group's read position never moves again."""
    await make_topic(redis_url, namespace)
    async with Producer(redis_url, namespace=namespace) as p:
        await p.send_batch("t", [Record(i) for i in range(10_000)])
    batches = 0

    async def slow(msgs: list[Message]) -> None:
        nonlocal batches
        batches += 1
        await asyncio.sleep(0.05)

    keys = Keys(namespace)
    c = consumer(redis_url, namespace, "t", batch_size=500)  # >= WATCHED_MIN: the watched path
    async with c:
        task = asyncio.create_task(c.process_batch(slow))
        await eventually(lambda: batches >= 3, timeout=10)
        await r.set(keys.owner("t", 0, "g"), "someone-else|x", keepttl=True)
        [info] = await r.xinfo_groups(keys.stream("t", 0))
        position = info["last-delivered-id"]
        await asyncio.sleep(1.0)
        [info] = await r.xinfo_groups(keys.stream("t", 0))
        assert info["last-delivered-id"] == position
        assert c.stats().get("partitions_lost", 0) >= 1
        await r.delete(keys.owner("t", 0, "g"))
        await c.stop()
        await task
