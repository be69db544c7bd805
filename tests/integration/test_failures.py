"""When handlers fail: retries in place, dead letters, TTL, poison entries, timeouts.

Real Redis, short timeouts. Each test names the guarantee it checks.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from support.eventually import eventually
from support.failing import FAST, consumer, make_topic, pending

import redcurrent
from redcurrent import Admin, Backoff, Consumer, Message, Producer, Record, RetryPolicy
from redcurrent.keys import Keys


async def run_until(
    c: Consumer, handler: Any, done: Any, timeout: float = 10.0, batch: bool = False
) -> None:
    task = asyncio.create_task(c.process_batch(handler) if batch else c.process(handler))
    try:
        await eventually(done, timeout=timeout)
    finally:
        await c.stop()
        await task


async def test_failing_handler_retries_in_place_and_keeps_order(
    redis_url: str, namespace: str
) -> None:
    await make_topic(redis_url, namespace, partitions=2)
    seen: list[tuple[str, int, int]] = []
    failures = {"a": 2}

    async def handle(msg: Message) -> None:
        seen.append((msg.key, msg.value, msg.attempts))
        if msg.key == "a" and msg.value == 1 and failures["a"] > 0:
            failures["a"] -= 1
            raise RuntimeError("flaky dependency")

    async with Producer(redis_url, namespace=namespace) as p:
        await p.send_batch("t", [Record(i, key="a") for i in range(4)])
        b_partition = (await p.send("t", 0, key="zz")).partition
    async with consumer(redis_url, namespace, "t") as c:
        await run_until(c, handle, lambda: len([s for s in seen if s[0] == "a"]) >= 6)
    a_values = [v for k, v, _ in seen if k == "a"]
    assert a_values == [0, 1, 1, 1, 2, 3]  # retried in place: order kept for the key
    assert [att for k, v, att in seen if k == "a" and v == 1] == [1, 2, 3]
    assert ("zz", 0, 1) in seen  # the other key was handled too
    assert c.stats()["retried"] == 2 and c.stats()["processed"] == 5
    _ = b_partition


async def test_failing_partition_does_not_block_other_partitions(
    redis_url: str, namespace: str
) -> None:
    await make_topic(redis_url, namespace, partitions=2)
    handled_other = asyncio.Event()
    async with Producer(redis_url, namespace=namespace) as p:
        await p.send("t", "stuck", partition=0)
        await p.send("t", "free", partition=1)

    async def handle(msg: Message) -> None:
        if msg.value == "stuck":
            raise redcurrent.Retry(after=0.5)
        handled_other.set()

    c = consumer(redis_url, namespace, "t", max_attempts=100)
    async with c:
        task = asyncio.create_task(c.process(handle))
        await asyncio.wait_for(handled_other.wait(), 5)
        await c.stop()
        await task


async def test_always_failing_message_is_dead_lettered_with_context_and_acked(
    redis_url: str, namespace: str, r: Redis
) -> None:
    await make_topic(redis_url, namespace, partitions=1)
    async with Producer(redis_url, namespace=namespace) as p:
        meta = await p.send("t", {"order": 7}, key="k1", headers={"trace": "abc"})
        await p.send("t", {"order": 8}, key="k1")
    handled: list[Any] = []

    async def handle(msg: Message) -> None:
        if msg.value["order"] == 7:
            raise ValueError("bad order 7")
        handled.append(msg.value)

    async with consumer(redis_url, namespace, "t", max_attempts=3) as c:
        await run_until(c, handle, lambda: handled == [{"order": 8}])
    async with Admin(redis_url, namespace=namespace) as admin:
        assert await admin.count_dead_letters("t", "g") == 1
        (dl,) = await admin.dead_letters("t", "g")
    assert (dl.topic, dl.partition, dl.id, dl.key) == ("t", 0, meta.id, "k1")
    assert dl.headers == {"trace": "abc"} and dl.value == {"order": 7}
    assert dl.raw_value == b'{"order":7}'  # value bytes untouched
    assert dl.attempts == 3 and dl.reason == "max_attempts"
    assert dl.error_type == "ValueError" and dl.error == "bad order 7"
    assert dl.traceback and "bad order 7" in dl.traceback
    assert dl.group == "g" and dl.consumer == c.member_id and dl.time > 0
    assert await pending(r, namespace, "t", 1) == 0  # the source entry was acked
    assert c.stats()["dead_lettered"] == 1


async def test_retry_after_and_dead_letter_exceptions(redis_url: str, namespace: str) -> None:
    await make_topic(redis_url, namespace, partitions=1)
    async with Producer(redis_url, namespace=namespace) as p:
        await p.send("t", "retry-me", key="a")
        await p.send("t", "skip-me", key="a")
    times: list[float] = []
    calls: list[str] = []

    async def handle(msg: Message) -> None:
        calls.append(msg.value)
        if msg.value == "retry-me" and msg.attempts == 1:
            times.append(time.monotonic())
            raise redcurrent.Retry(after=0.4)
        if msg.value == "retry-me":
            times.append(time.monotonic())
        if msg.value == "skip-me":
            raise redcurrent.DeadLetter("not for us")

    async with consumer(redis_url, namespace, "t", max_attempts=5) as c:
        await run_until(
            c, handle, lambda: "skip-me" in calls and c.stats().get("dead_lettered") == 1
        )
    assert times[1] - times[0] >= 0.38
    assert calls == ["retry-me", "retry-me", "skip-me"]  # DeadLetter: no retries
    async with Admin(redis_url, namespace=namespace) as admin:
        (dl,) = await admin.dead_letters("t", "g")
    assert dl.reason == "not for us" and dl.attempts == 1


async def test_restart_mid_retry_keeps_the_attempt_count(redis_url: str, namespace: str) -> None:
    await make_topic(redis_url, namespace, partitions=1)
    async with Producer(redis_url, namespace=namespace) as p:
        await p.send("t", "x", key="a")
    attempts: list[int] = []

    async def failing(msg: Message) -> None:
        attempts.append(msg.attempts)
        raise RuntimeError("down")

    slow = Backoff(initial=0.05, multiplier=1.0, max=0.05, jitter=0.0)
    async with consumer(redis_url, namespace, "t", max_attempts=10, backoff=slow) as c1:
        await run_until(c1, failing, lambda: len(attempts) >= 2)
    before = list(attempts)
    seen: list[int] = []

    async def ok(msg: Message) -> None:
        seen.append(msg.attempts)

    async with consumer(redis_url, namespace, "t", max_attempts=10) as c2:
        await run_until(c2, ok, lambda: bool(seen))
    assert seen[0] >= before[-1] + 1  # the count survived the restart


async def test_requeued_dead_letter_returns_to_its_partition_and_is_processed(
    redis_url: str, namespace: str
) -> None:
    await make_topic(redis_url, namespace, partitions=4)
    async with Producer(redis_url, namespace=namespace) as p:
        meta = await p.send("t", {"n": 1}, key="customer-9", headers={"h": "1"})
    fail = True
    got: list[Message] = []

    async def handle(msg: Message) -> None:
        if fail:
            raise redcurrent.DeadLetter("later")
        got.append(msg)

    async with consumer(redis_url, namespace, "t") as c:
        await run_until(c, handle, lambda: c.stats().get("dead_lettered") == 1)
    async with Admin(redis_url, namespace=namespace) as admin:
        assert await admin.requeue_dead_letters("t", "g") == 1
        assert await admin.count_dead_letters("t", "g") == 0
        assert await admin.requeue_dead_letters("t", "g") == 0  # idempotent
    fail = False
    async with consumer(redis_url, namespace, "t") as c2:
        await run_until(c2, handle, lambda: len(got) == 1)
    (msg,) = got
    assert msg.partition == meta.partition and msg.key == "customer-9"
    assert msg.value == {"n": 1} and msg.attempts == 1
    assert msg.headers["h"] == "1" and msg.headers["rc-requeue-group"] == "g"


async def test_requeue_is_for_one_group_only(redis_url: str, namespace: str) -> None:
    await make_topic(redis_url, namespace, partitions=1)
    async with Producer(redis_url, namespace=namespace) as p:
        await p.send("t", "m", key="a")
    other: list[Message] = []
    fail = True

    async def g_handler(msg: Message) -> None:
        if fail:
            raise redcurrent.DeadLetter("x")

    async def other_handler(msg: Message) -> None:
        other.append(msg)

    async with consumer(redis_url, namespace, "t", group="g") as c:
        await run_until(c, g_handler, lambda: c.stats().get("dead_lettered") == 1)
    async with consumer(redis_url, namespace, "t", group="other") as o:
        await run_until(o, other_handler, lambda: len(other) == 1)
    async with Admin(redis_url, namespace=namespace) as admin:
        await admin.requeue_dead_letters("t", "g")
    fail = False
    async with consumer(redis_url, namespace, "t", group="other") as o2:
        await run_until(o2, other_handler, lambda: o2.stats().get("requeue_skipped") == 1)
    assert len(other) == 1  # the other group acked and skipped the requeued copy


async def test_expired_messages_never_reach_the_handler(
    redis_url: str, namespace: str, r: Redis
) -> None:
    await make_topic(redis_url, namespace, partitions=1, dead_letter_expired=True)
    async with Producer(redis_url, namespace=namespace) as p:
        await p.send("t", "old", key="a", ttl=0.05)
        await asyncio.sleep(0.1)
        await p.send("t", "fresh", key="a", ttl=60)
    got: list[Any] = []

    async def handle(msg: Message) -> None:
        got.append(msg.value)

    async with consumer(redis_url, namespace, "t") as c:
        await run_until(c, handle, lambda: got == ["fresh"])
    assert c.stats()["expired"] == 1
    assert await pending(r, namespace, "t", 1) == 0
    async with Admin(redis_url, namespace=namespace) as admin:
        (dl,) = await admin.dead_letters("t", "g")
    assert dl.reason == "expired" and dl.value == "old"


async def test_topic_default_ttl_applies(redis_url: str, namespace: str) -> None:
    await make_topic(redis_url, namespace, partitions=1, ttl=0.05)
    async with Producer(redis_url, namespace=namespace) as p:
        await p.send("t", "a", key="a")
    await asyncio.sleep(0.1)
    got: list[Any] = []

    async def handle(msg: Message) -> None:
        got.append(msg.value)

    async with consumer(redis_url, namespace, "t") as c:
        await run_until(c, handle, lambda: c.stats().get("expired") == 1)
    assert got == []


async def test_handler_timeout_counts_as_a_failed_attempt(redis_url: str, namespace: str) -> None:
    await make_topic(redis_url, namespace, partitions=1)
    async with Producer(redis_url, namespace=namespace) as p:
        await p.send("t", "slow", key="a")
        await p.send("t", "next", key="a")
    got: list[Any] = []

    async def handle(msg: Message) -> None:
        if msg.value == "slow":
            await asyncio.sleep(5)
        got.append(msg.value)

    async with consumer(redis_url, namespace, "t", max_attempts=2, handler_timeout=0.2) as c:
        await run_until(c, handle, lambda: got == ["next"])
    assert "partitions_lost" not in c.stats()  # kept its partitions while the handler hung
    async with Admin(redis_url, namespace=namespace) as admin:
        (dl,) = await admin.dead_letters("t", "g")
    assert dl.reason == "handler_timeout" and dl.attempts == 2


async def test_process_batch_reports_failed_messages(redis_url: str, namespace: str) -> None:
    await make_topic(redis_url, namespace, partitions=1)
    async with Producer(redis_url, namespace=namespace) as p:
        await p.send_batch("t", [Record(i, key="a") for i in range(5)])
    batches: list[list[int]] = []

    async def handle(msgs: list[Message]) -> None:
        batches.append([m.value for m in msgs])
        bad = [m for m in msgs if m.value == 3]
        if bad:
            raise redcurrent.BatchError(bad, "3 is bad")

    async with consumer(redis_url, namespace, "t", max_attempts=2) as c:
        await run_until(c, handle, lambda: c.stats().get("dead_lettered") == 1, batch=True)
    assert batches[0] == [0, 1, 2, 3, 4] and batches[1:] == [[3]]
    assert c.stats()["processed"] == 4


async def test_whole_batch_retried_then_each_dead_lettered(redis_url: str, namespace: str) -> None:
    await make_topic(redis_url, namespace, partitions=1)
    async with Producer(redis_url, namespace=namespace) as p:
        await p.send_batch("t", [Record(i, key="a") for i in range(3)])
    calls = 0

    async def handle(msgs: list[Message]) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("all bad")

    async with consumer(redis_url, namespace, "t", max_attempts=3) as c:
        await run_until(c, handle, lambda: c.stats().get("dead_lettered") == 3, batch=True)
    assert calls == 3


async def test_per_topic_retry_policy(redis_url: str, namespace: str) -> None:
    await make_topic(redis_url, namespace, "a", partitions=1)
    await make_topic(redis_url, namespace, "b", partitions=1)
    async with Producer(redis_url, namespace=namespace) as p:
        await p.send("a", 1)
        await p.send("b", 1)
    attempts: dict[str, int] = {}

    async def handle(msg: Message) -> None:
        attempts[msg.topic] = msg.attempts
        raise RuntimeError("no")

    c = consumer(
        redis_url,
        namespace,
        "a",
        "b",
        max_attempts=2,
        topic_retry={"b": RetryPolicy(max_attempts=4, backoff=FAST)},
    )
    async with c:
        await run_until(c, handle, lambda: c.stats().get("dead_lettered") == 2)
    assert attempts == {"a": 2, "b": 4}


def test_backoff_math() -> None:
    b = Backoff(initial=1.0, multiplier=2.0, max=5.0, jitter=0.0)
    assert [b.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    j = Backoff(initial=1.0, multiplier=2.0, max=10.0, jitter=0.5)
    assert all(0.5 <= j.delay(1) <= 1.0 for _ in range(100))
    with pytest.raises(ValueError):
        Backoff(multiplier=0.5)
    with pytest.raises(ValueError):
        Backoff(jitter=2)


_fields = st.dictionaries(
    # format-1 names, junk, and format-2 names (one field "2" + codec + key type + key)
    st.sampled_from([b"f", b"v", b"k", b"h", b"x", b"t", b"junk", b"1", b"2jsk", b"2jn", b"2bb", b"2zzk"]),
    st.binary(max_size=20)
    | st.sampled_from([b"1js", b"1bn", b"1jn", b"2js", b"1zz", b"{", b"1js "]),
    min_size=1,
    max_size=5,
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(entries=st.lists(_fields, min_size=1, max_size=8))
async def test_corrupt_entries_are_dead_lettered_and_never_crash_the_consumer(
    redis_url: str, entries: list[dict[bytes, bytes]]
) -> None:
    import uuid

    ns = "h" + uuid.uuid4().hex[:10]
    await make_topic(redis_url, ns, partitions=1)
    r = Redis.from_url(redis_url)
    try:
        for fields in entries:
            await r.xadd(Keys(ns).stream("t", 0), fields)  # type: ignore[arg-type]
        await r.xadd(Keys(ns).stream("t", 0), {b"f": b"1jn", b"v": b'"sentinel"'})
        got: list[Any] = []

        async def handle(msg: Message) -> None:
            got.append(msg.value)

        async with consumer(redis_url, ns, "t") as c:
            await run_until(c, handle, lambda: "sentinel" in got)
        bad = c.stats().get("decode_failures", 0)
        assert bad + len(got) == len(entries) + 1  # every entry handled or dead-lettered
        async with Admin(redis_url, namespace=ns) as admin:
            assert await admin.count_dead_letters("t", "g") == bad
            assert await pending(r, ns, "t", 1) == 0
            await admin.delete_topic("t")
    finally:
        await r.aclose()


async def test_entries_trimmed_while_pending_are_dead_lettered(
    redis_url: str, namespace: str, r: Redis
) -> None:
    await make_topic(redis_url, namespace, partitions=1)
    async with Producer(redis_url, namespace=namespace) as p:
        await p.send_batch("t", [Record(i, key="a") for i in range(3)])
    stream = Keys(namespace).stream("t", 0)
    # A crashed consumer read them (so they are pending), then retention trimmed them.
    await r.xgroup_create(stream, "g", "0")
    await r.xreadgroup("g", "crashed", {stream: ">"}, count=10)
    await r.xtrim(stream, maxlen=0)
    async with Producer(redis_url, namespace=namespace) as p:
        await p.send("t", "after", key="a")
    got: list[Any] = []

    async def handle(msg: Message) -> None:
        got.append(msg.value)

    async with consumer(redis_url, namespace, "t") as c:
        await run_until(c, handle, lambda: got == ["after"])
    assert c.stats()["trimmed"] == 3
    async with Admin(redis_url, namespace=namespace) as admin:
        dls = await admin.dead_letters("t", "g")
    assert [d.reason for d in dls] == ["trimmed"] * 3
    assert await pending(r, namespace, "t", 1) == 0


async def test_a_consumer_subscribed_before_its_topic_exists_gets_the_first_messages(
    redis_url: str, namespace: str
) -> None:
    """start="latest" means "from when I subscribed": a topic auto-created by the first
    send after that has nothing older, so its first messages are delivered."""
    got: list[Any] = []

    async def handle(msg: Message) -> None:
        got.append(msg.value)

    c = Consumer("late", group="g", url=redis_url, namespace=namespace, heartbeat_interval=0.2,
                 session_timeout=1.5)
    async with c:
        task = asyncio.create_task(c.process(handle))
        async with Producer(redis_url, namespace=namespace, default_partitions=2) as p:
            await p.send_batch("late", [Record(i, key=f"k{i}") for i in range(10)])
        try:
            await eventually(lambda: sorted(got) == list(range(10)), timeout=10)
        finally:
            await c.stop()
            await task


async def test_stop_called_from_inside_a_handler_ends_processing_cleanly(
    redis_url: str, namespace: str, r: Redis
) -> None:
    await make_topic(redis_url, namespace, partitions=2)
    async with Producer(redis_url, namespace=namespace) as p:
        await p.send_batch("t", [Record(i, key=f"k{i}") for i in range(20)])
    got: list[int] = []
    c = consumer(redis_url, namespace, "t")

    async def handle(msg: Message) -> None:
        got.append(msg.value)
        if len(got) == 5:
            await c.stop()  # returns at once; the stop completes after this handler

    async with c:
        await asyncio.wait_for(c.process(handle), 10)
    assert len(got) >= 5
    keys = Keys(namespace)
    for p in range(2):
        assert await r.get(keys.owner("t", p, "g")) is None  # released
