"""Consumer groups: delivery, order, acks, fencing, rebalancing (docs/architecture.md §3, §4, §7).

Every test runs real consumers against a real server in a namespace of its own, with a
heartbeat of 0.2 s and a session timeout of 1.5 s. Tests taking ``target`` run twice:
on one node and on the 3-master cluster (the conftest's parametrized fixture).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio
from support.consuming import (
    HB,
    REBALANCE,
    SESSION,
    STOP_HANG,
    Seen,
    cancel_library_tasks,
    create_topic,
    full_and_disjoint,
    group_state,
    make_consumer,
    produce,
    running,
    settled,
    start_processing,
    stop,
    stop_all,
    tps,
)
from support.eventually import eventually
from support.servers import AsyncClient, Target

from redcurrent import Admin, Consumer, FencedError, Message, Producer, TopicPartition
from redcurrent.keys import Keys
from redcurrent.testing import Sent, check_history

pytestmark = pytest.mark.timeout(60)

TOPIC = "orders"
KEYS20 = [f"k{i}" for i in range(20)]
GROWTH_BOUND = 2 * HB + 0.3  # two heartbeat intervals, plus scheduling slack


@pytest.fixture
async def producer(redis_url: str, namespace: str) -> Any:
    async with Producer(redis_url, namespace=namespace) as p:
        yield p


async def pending_ids(
    r: redis.asyncio.Redis, ns: str, partition: int, group: str = "g"
) -> dict[str, str]:
    """entry id -> consumer name, for the group's pending entries on one partition."""
    rows = await r.xpending_range(Keys(ns).stream(TOPIC, partition), group, "-", "+", 1000)
    return {row["message_id"].decode(): row["consumer"].decode() for row in rows}


# --------------------------------------------------------------------------- delivery and order


async def test_two_consumers_get_every_message_once_in_per_key_order(
    target: Target, target_client: AsyncClient, namespace: str
) -> None:
    """Two members split the partitions; each message is handled once, per-key in order."""
    url, ns, client = target.url, namespace, target_client
    await create_topic(url, ns, TOPIC, 4)
    seen = Seen()
    a = make_consumer(url, ns, TOPIC, member_id="a")
    b = make_consumer(url, ns, TOPIC, member_id="b")
    ta, tb = start_processing(a, seen.handler("a")), start_processing(b, seen.handler("b"))
    try:
        state = await eventually(
            lambda: settled(client, ns, TOPIC, [a, b], 4), 5, message="rebalanced"
        )
        assert state.assignment == {"a": [0, 2], "b": [1, 3]}
        async with Producer(url, namespace=ns) as producer:
            sent = await produce(producer, TOPIC, KEYS20, 10)
        await eventually(lambda: seen.count() >= len(sent), 10, message="all delivered")
        await asyncio.sleep(2 * HB)  # no late duplicates
        owned = {"a": a.assignment(), "b": b.assignment()}
    finally:
        await stop_all((a, ta), (b, tb))
    report = check_history(sent, seen.events)
    assert report.ok and not report.duplicated, report.summary()
    for name in ("a", "b"):  # each handled exactly its own partitions
        assert {m.partition for m in seen.handled(name)} == {tp.partition for tp in owned[name]}


async def test_two_groups_on_one_topic_each_receive_every_message(
    redis_url: str, namespace: str, producer: Producer
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 3)
    seen1, seen2 = Seen(), Seen()
    c1 = make_consumer(redis_url, namespace, TOPIC, group="billing")
    c2 = make_consumer(redis_url, namespace, TOPIC, group="shipping")
    t1, t2 = start_processing(c1, seen1.handler("c1")), start_processing(c2, seen2.handler("c2"))
    try:
        await eventually(lambda: len(c1.assignment()) == 3 and len(c2.assignment()) == 3, 5)
        sent = await produce(producer, TOPIC, KEYS20, 3)
        await eventually(lambda: seen1.count() >= 60 and seen2.count() >= 60, 10)
    finally:
        await stop_all((c1, t1), (c2, t2))
    for seen in (seen1, seen2):
        report = check_history(sent, seen.events)
        assert report.ok and not report.duplicated, report.summary()


async def test_start_earliest_replays_history_and_latest_does_not(
    redis_url: str, namespace: str, producer: Producer
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 2)
    old = await produce(producer, TOPIC, ["x", "y"], 5)
    early, late = Seen(), Seen()
    ce = make_consumer(redis_url, namespace, TOPIC, group="replay", start="earliest")
    cl = make_consumer(redis_url, namespace, TOPIC, group="tail", start="latest")
    te, tl = start_processing(ce, early.handler("e")), start_processing(cl, late.handler("l"))
    try:
        await eventually(lambda: len(ce.assignment()) == 2 and len(cl.assignment()) == 2, 5)
        new = await produce(producer, TOPIC, ["x", "y"], 3, first_seq=5)
        await eventually(lambda: early.count() >= 16 and late.count() >= 6, 10)
        await asyncio.sleep(3 * HB)
    finally:
        await stop_all((ce, te), (cl, tl))
    assert check_history(old + new, early.events).ok
    assert not check_history(old + new, early.events).duplicated
    assert sorted((m.key, m.value["seq"]) for m in late.handled()) == sorted(
        (s.key, s.seq) for s in new
    )


# --------------------------------------------------------------------------- consuming APIs


async def test_iterator_acks_a_message_when_the_next_one_is_asked_for(
    redis_url: str, namespace: str, r: redis.asyncio.Redis, producer: Producer
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 1)
    async with running(make_consumer(redis_url, namespace, TOPIC)) as c:
        sent = await produce(producer, TOPIC, ["k"], 5)
        got: list[Message] = []
        it = aiter(c)
        for _ in range(5):
            got.append(await asyncio.wait_for(anext(it), 5))
        assert [m.value["seq"] for m in got] == [0, 1, 2, 3, 4]
        assert [m.id for m in got] == [s.entry_id for s in sent]
        assert got[-1].id in await pending_ids(r, namespace, 0)  # still in our hands
        nxt = asyncio.ensure_future(anext(it))  # asking for the next acks the 5th
        await eventually(
            lambda: _no_pending(r, namespace, 0), 3, message="iterator acked everything"
        )
        assert not nxt.done()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(nxt, 5)


async def _no_pending(r: redis.asyncio.Redis, ns: str, partition: int) -> bool:
    return not await pending_ids(r, ns, partition)


async def test_manual_ack_and_ack_many(
    redis_url: str, namespace: str, r: redis.asyncio.Redis, producer: Producer
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 1)
    async with running(make_consumer(redis_url, namespace, TOPIC, auto_ack=False)) as c:
        await produce(producer, TOPIC, ["k"], 6)
        it = aiter(c)
        got = [await asyncio.wait_for(anext(it), 5) for _ in range(6)]
        await asyncio.sleep(3 * HB)
        assert sorted(await pending_ids(r, namespace, 0)) == sorted(
            m.id for m in got
        )  # nothing auto-acked
        await c.ack(got[0])
        assert sorted(await pending_ids(r, namespace, 0)) == sorted(m.id for m in got[1:])
        await c.ack_many(got[1:])
        assert await pending_ids(r, namespace, 0) == {}
        await c.ack(got[0])  # acking twice is harmless


async def test_ack_many_acks_what_it_owns_and_raises_fenced_for_the_rest(
    redis_url: str, namespace: str, r: redis.asyncio.Redis, producer: Producer
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 2)
    async with running(make_consumer(redis_url, namespace, TOPIC, auto_ack=False)) as c:
        await producer.send(TOPIC, {"seq": 0}, key="a", partition=0)
        await producer.send(TOPIC, {"seq": 0}, key="b", partition=1)
        it = aiter(c)
        got = {m.partition: m for m in [await asyncio.wait_for(anext(it), 5) for _ in range(2)]}
        await r.set(Keys(namespace).owner(TOPIC, 1, "g"), "intruder|1")
        with pytest.raises(FencedError, match=r"orders\[1\]"):
            await c.ack_many([got[0], got[1]])
        assert await pending_ids(r, namespace, 0) == {}  # owned: acked regardless
        assert list(await pending_ids(r, namespace, 1)) == [got[1].id]  # fenced: untouched


async def test_manual_ack_mode_does_not_hand_out_a_message_twice(
    redis_url: str, namespace: str, producer: Producer
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 1)
    async with running(make_consumer(redis_url, namespace, TOPIC, auto_ack=False)) as c:
        await produce(producer, TOPIC, ["k"], 3)
        it = aiter(c)
        got = [await asyncio.wait_for(anext(it), 5) for _ in range(3)]
        assert [m.value["seq"] for m in got] == [0, 1, 2]
        nxt = asyncio.ensure_future(anext(it))  # nothing new was produced: nothing to hand out
        done, _ = await asyncio.wait({nxt}, timeout=1.0)
        again = nxt.result() if done else None
        await c.ack_many(got)
    if not done:
        with pytest.raises(StopAsyncIteration):  # stop() ends the waiting iterator
            await asyncio.wait_for(nxt, 5)
    assert again is None, f"handed out again before being acked: {again}"


async def test_ack_after_the_partition_moved_raises_fenced_and_acks_nothing(
    redis_url: str, namespace: str, r: redis.asyncio.Redis, producer: Producer
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 1)
    # round robin over sorted member ids: "m-a" will take partition 0 from "m-b"
    old = make_consumer(
        redis_url, namespace, TOPIC, member_id="m-b", auto_ack=False, rebalance_timeout=0.5
    )
    new = make_consumer(redis_url, namespace, TOPIC, member_id="m-a", auto_ack=False)
    async with running(old):
        [sent] = await produce(producer, TOPIC, ["k"], 1)
        msg = await asyncio.wait_for(anext(aiter(old)), 5)
        assert await pending_ids(r, namespace, 0) == {msg.id: "m-b"}
        async with running(new):
            await eventually(lambda: new.assignment() == tps(TOPIC, 0), 5, message="m-a owns p0")
            assert old.assignment() == set()
            with pytest.raises(FencedError):
                await old.ack(msg)
            with pytest.raises(FencedError):
                await old.ack_many([msg])
            # still pending, now taken over by the new owner: the old owner acked nothing
            assert await pending_ids(r, namespace, 0) == {msg.id: "m-a"}
            again = await asyncio.wait_for(anext(aiter(new)), 5)
            assert (again.id, again.value, again.attempts) == (sent.entry_id, {"seq": 0}, 2)
            await new.ack(again)
            assert await pending_ids(r, namespace, 0) == {}


async def test_process_batch_gets_in_order_lists_of_one_partition(
    redis_url: str, namespace: str, r: redis.asyncio.Redis, producer: Producer
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 3)
    batches: list[list[Message]] = []

    async def handler(msgs: list[Message]) -> None:
        batches.append(list(msgs))

    c = make_consumer(redis_url, namespace, TOPIC, batch_size=7)
    task = asyncio.create_task(c.process_batch(handler))
    try:
        await eventually(lambda: len(c.assignment()) == 3, 5)
        sent = await produce(producer, TOPIC, KEYS20, 4)
        await eventually(lambda: sum(map(len, batches)) >= len(sent), 10)
    finally:
        await stop_all((c, task))
    assert all(0 < len(b) <= 7 for b in batches)
    by_partition: dict[int, list[str]] = {}
    for b in batches:
        assert len({m.partition for m in b}) == 1, "a batch mixes partitions"
        by_partition.setdefault(b[0].partition, []).extend(m.id for m in b)
    assert any(len(b) > 1 for b in batches)
    for p, ids in by_partition.items():
        expected = [s.entry_id for s in sent if s.partition == p]
        assert ids == sorted(expected, key=_id_key) == expected  # stream order, each once
    assert all([await _no_pending(r, namespace, p) for p in range(3)])


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


async def test_pause_stops_fetching_one_partition_and_resume_continues_it(
    redis_url: str, namespace: str, producer: Producer
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 2)
    seen = Seen()
    c = make_consumer(redis_url, namespace, TOPIC)
    task = start_processing(c, seen.handler("c"))
    try:
        await eventually(lambda: len(c.assignment()) == 2, 5)
        p0 = TopicPartition(TOPIC, 0)
        c.pause(p0)
        assert c.paused() == {p0}
        assert c.assignment() == tps(TOPIC, 0, 1)  # paused partitions stay assigned
        for i in range(5):
            await producer.send(TOPIC, {"seq": i}, key="a", partition=0)
            await producer.send(TOPIC, {"seq": i}, key="b", partition=1)
        await eventually(lambda: len(seen.handled()) >= 5, 5)
        await asyncio.sleep(0.5)
        assert {m.partition for m in seen.handled()} == {1}
        c.resume([p0])
        assert c.paused() == set()
        await eventually(lambda: len(seen.handled()) >= 10, 5)
        assert [m.value["seq"] for m in seen.handled() if m.partition == 0] == [0, 1, 2, 3, 4]
    finally:
        await stop_all((c, task))


async def test_keys_and_values_come_back_as_sent_and_first_delivery_has_attempts_1(
    redis_url: str, namespace: str, producer: Producer
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 1)
    async with running(make_consumer(redis_url, namespace, TOPIC)) as c:
        before = int(time.time() * 1000)
        await producer.send(TOPIC, {"a": [1, 2], "b": None}, key="user-1", headers={"src": "web"})
        await producer.send(TOPIC, b"\x00raw", key=b"\xffbin")
        await producer.send(TOPIC, "text")
        it = aiter(c)
        m1, m2, m3 = [await asyncio.wait_for(anext(it), 5) for _ in range(3)]
    assert (m1.key, type(m1.key), m1.value, dict(m1.headers)) == (
        "user-1",
        str,
        {"a": [1, 2], "b": None},
        {"src": "web"},
    )
    assert (m2.key, type(m2.key), m2.value) == (b"\xffbin", bytes, b"\x00raw")
    assert (m3.key, m3.value, dict(m3.headers)) == (None, "text", {})
    for m in (m1, m2, m3):
        assert (m.topic, m.partition, m.attempts) == (TOPIC, 0, 1)
        assert before - 1000 <= m.timestamp <= int(time.time() * 1000) + 1000


# --------------------------------------------------------------------------- listeners and stop


async def test_on_assign_on_revoke_and_on_lost_listeners_are_called(
    redis_url: str, namespace: str, r: redis.asyncio.Redis
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 2)
    calls: list[tuple[str, list[int]]] = []

    def sync_listener(name: str) -> Any:
        return lambda parts: calls.append((name, [tp.partition for tp in parts]))

    async def on_revoke(parts: list[TopicPartition]) -> None:
        await asyncio.sleep(0)
        calls.append(("revoke", [tp.partition for tp in parts]))

    # "b" sorts after "a": when "a" joins, "b" keeps partition 1 and gives up 0
    b = make_consumer(
        redis_url,
        namespace,
        TOPIC,
        member_id="b",
        on_assign=sync_listener("assign"),
        on_revoke=on_revoke,
        on_lost=sync_listener("lost"),
    )
    tb = start_processing(b, Seen().handler("b"))
    try:
        await eventually(lambda: ("assign", [0, 1]) in calls, 5, message="on_assign at start")
        async with running(make_consumer(redis_url, namespace, TOPIC, member_id="a")) as a:
            await eventually(
                lambda: ("revoke", [0]) in calls, 5, message="on_revoke of the moved partition"
            )
            # on_revoke runs while the partition is still assigned (as in Kafka); the
            # release that ends the assignment follows it
            await eventually(lambda: b.assignment() == tps(TOPIC, 1), 5)
            await eventually(lambda: a.assignment() == tps(TOPIC, 0), 5)
        await eventually(
            lambda: ("assign", [0]) in calls, 5, message="on_assign of partition 0 back"
        )
        # fencing: someone else holds the owner key of partition 1 now
        await r.set(Keys(namespace).owner(TOPIC, 1, "g"), "intruder|x")
        await eventually(lambda: ("lost", [1]) in calls, 5, message="on_lost when fenced")
        assert b.assignment() == tps(TOPIC, 0)
    finally:
        await stop_all((b, tb))
    assert calls[-1] == ("revoke", [0])  # graceful stop revokes what is left
    assert ("revoke", [1]) not in calls  # a lost partition is never "revoked"


async def test_graceful_stop_moves_partitions_to_the_survivor_within_2s_without_duplicates(
    target: Target, target_client: AsyncClient, namespace: str
) -> None:
    """A member that stops gracefully hands its partitions over at once: the survivor
    consumes them within 2 s, and no message is handled twice."""
    url, ns, client = target.url, namespace, target_client
    await create_topic(url, ns, TOPIC, 4)
    seen = Seen()
    a = make_consumer(url, ns, TOPIC, member_id="a")
    b = make_consumer(url, ns, TOPIC, member_id="b")
    ta, tb = (
        start_processing(a, seen.handler("a", 0.002)),
        start_processing(b, seen.handler("b", 0.002)),
    )
    sent: list[Sent] = []
    flowing = asyncio.Event()

    async def keep_producing(producer: Producer) -> None:
        seq = 0
        while not flowing.is_set():
            sent.extend(await produce(producer, TOPIC, KEYS20, 1, first_seq=seq))
            seq += 1
            await asyncio.sleep(0.02)

    try:
        await eventually(lambda: settled(client, ns, TOPIC, [a, b], 4), 5)
        moved = sorted(tp.partition for tp in a.assignment())
        async with Producer(url, namespace=ns) as producer:
            pump = asyncio.create_task(keep_producing(producer))
            await eventually(lambda: len(seen.handled("a")) > 50, 5)
            t_stop = time.monotonic_ns()
            await stop_all((a, ta))
            await eventually(
                lambda: b.assignment() == tps(TOPIC, 0, 1, 2, 3), 2, message="survivor owns all"
            )
            resumed = await eventually(lambda: _all_resumed(seen, t_stop, moved, "b"), 2.5)
            flowing.set()
            await pump
        await eventually(lambda: seen.count() >= len(sent), 10, message="every message delivered")
        await asyncio.sleep(2 * HB)
    finally:
        flowing.set()
        await stop_all((a, ta), (b, tb))
    took = (max(resumed) - t_stop) / 1e9
    assert took < 2.0, f"handoff took {took:.2f}s"
    report = check_history(sent, seen.events)
    assert report.ok and not report.duplicated, report.summary()


def _all_resumed(seen: Seen, t_ns: int, partitions: list[int], name: str) -> list[int] | None:
    firsts = [seen.first_after(t_ns, p, name) for p in partitions]
    return None if None in firsts else firsts  # type: ignore[return-value]


async def test_graceful_stop_with_nothing_in_flight_returns_at_once(
    redis_url: str, namespace: str, producer: Producer
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 2)
    took: list[float] = []
    for i in range(15):  # stop right after the last message, while fetchers go idle
        seen = Seen()
        c = make_consumer(redis_url, namespace, TOPIC, group=f"g{i}", start="latest")
        task = start_processing(c, seen.handler("c"))
        await eventually(lambda c=c: len(c.assignment()) == 2, 5)
        n = len(await produce(producer, TOPIC, KEYS20, 2))
        await eventually(lambda seen=seen, n=n: seen.count() >= n, 5)
        t0 = time.monotonic()
        await stop_all((c, task))
        took.append(time.monotonic() - t0)
        assert took[-1] < 0.5, f"stop #{i} took {took[-1]:.2f}s with nothing in flight: {took}"


async def test_graceful_stop_leaves_no_owner_key_behind(
    redis_url: str, namespace: str, r: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 8)
    owners = [Keys(namespace).owner(TOPIC, p, "g") for p in range(8)]
    for i in range(12):  # the race needs a refresh in flight while the release runs: beat often
        c = make_consumer(
            redis_url, namespace, TOPIC, member_id=f"leaver{i}", heartbeat_interval=0.005
        )
        await c.start()
        await eventually(lambda c=c: len(c.assignment()) == 8, 5)
        await asyncio.sleep(0.03)
        caplog.clear()
        stopping = asyncio.ensure_future(c.stop())
        done, _ = await asyncio.wait({stopping}, timeout=3)
        held = {p: v for p, v in enumerate(await r.mget(owners)) if v is not None}
        reclaimed = [rec.getMessage() for rec in caplog.records if "reclaimed" in rec.getMessage()]
        if not done:  # releases are done by then: clean up the loops that survived stop()
            await cancel_library_tasks()
            await asyncio.wait({stopping}, timeout=5)
        assert not held and not reclaimed, (
            f"stop #{i} reclaimed {reclaimed}; owner keys held: {held}"
        )
        assert done, f"stop #{i}: {STOP_HANG}"


async def test_stop_returns_promptly_right_after_a_rebalance(
    redis_url: str, namespace: str
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 6)
    for i in range(4):
        members = [
            make_consumer(
                redis_url, namespace, TOPIC, group=f"g{i}", member_id=m, assignor="sticky"
            )
            for m in ("a", "b", "c")
        ]
        try:
            for c in members:
                await c.start()
            await asyncio.sleep(0.05 * i)  # c's join is still being handed over
            for c in reversed(members):
                t0 = time.monotonic()
                await stop(c, timeout=5)  # a hang fails the test (STOP_HANG)
                assert time.monotonic() - t0 < REBALANCE + 1
        finally:
            await stop_all(*[(c, None) for c in members])  # no-op for those already stopped


# --------------------------------------------------------------------------- rebalancing


async def test_a_joining_member_bumps_the_epoch_once_and_splits_the_partitions(
    redis_url: str, namespace: str, r: redis.asyncio.Redis
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 6)
    async with running(make_consumer(redis_url, namespace, TOPIC, member_id="a")) as a:
        before = await eventually(lambda: settled(r, namespace, TOPIC, [a], 6), 5)
        assert before.assignment == {"a": [0, 1, 2, 3, 4, 5]}
        assert a.epoch(TOPIC) == before.epoch
        async with running(make_consumer(redis_url, namespace, TOPIC, member_id="b")) as b:
            await eventually(lambda: settled(r, namespace, TOPIC, [a, b], 6), 5)
            await asyncio.sleep(5 * HB)  # several more heartbeats: nothing else changes
            after = await group_state(r, namespace, TOPIC)
            assert after.epoch == before.epoch + 1
            assert full_and_disjoint(after.assignment, 6)
            assert after.assignment == {"a": [0, 2, 4], "b": [1, 3, 5]}
            assert {tp.partition for tp in a.assignment()} == {0, 2, 4}
            assert a.epoch(TOPIC) == b.epoch(TOPIC) == after.epoch


async def test_growth_bumps_the_epoch_once_and_new_partitions_are_consumed_from_their_first_entry(
    target: Target, target_client: AsyncClient, namespace: str
) -> None:
    """alter_partitions: exactly one epoch bump, a full non-overlapping assignment, and
    entries written to the new partitions before anyone noticed are consumed, soon."""
    url, ns, client = target.url, namespace, target_client
    await create_topic(url, ns, TOPIC, 2)
    seen = Seen()
    a = make_consumer(url, ns, TOPIC, member_id="a")
    b = make_consumer(url, ns, TOPIC, member_id="b")
    ta, tb = start_processing(a, seen.handler("a")), start_processing(b, seen.handler("b"))
    try:
        before = await eventually(lambda: settled(client, ns, TOPIC, [a, b], 2), 5)
        async with Admin(url, namespace=ns) as admin:
            t_grow = time.monotonic_ns()
            await admin.alter_partitions(TOPIC, 4)
        async with Producer(url, namespace=ns) as p:  # a fresh producer sees 4 partitions
            written = [
                await p.send(TOPIC, {"seq": i}, key="g", partition=2 + i % 2) for i in range(4)
            ]
        await eventually(lambda: seen.count() >= 4, 3, message="new partitions consumed")
        took = (max(e.t_ns for e in seen.events if e.event == "handled") - t_grow) / 1e9
        await eventually(lambda: settled(client, ns, TOPIC, [a, b], 4), 2)
        await asyncio.sleep(5 * HB)  # several more heartbeats: no further bump
        after = await group_state(client, ns, TOPIC)
    finally:
        await stop_all((a, ta), (b, tb))
    assert after.epoch == before.epoch + 1
    assert after.partitions == 4 and full_and_disjoint(after.assignment, 4)
    assert after.assignment == {"a": [0, 2], "b": [1, 3]}
    assert sorted(m.id for m in seen.handled()) == sorted(w.id for w in written)
    assert took < GROWTH_BOUND, f"new partitions consumed {took:.2f}s after growth"


async def _moves_when_c_joins(
    url: str, ns: str, r: redis.asyncio.Redis, group: str, assignor: str
) -> int:
    def member(mid: str) -> Consumer:
        return make_consumer(url, ns, TOPIC, group=group, member_id=mid, assignor=assignor)

    async with running(member("a")) as a, running(member("b")) as b:
        before = (await eventually(lambda: settled(r, ns, TOPIC, [a, b], 6, group), 5)).owner_of()
        async with running(member("c")) as c:
            state = await eventually(lambda: settled(r, ns, TOPIC, [a, b, c], 6, group), 5)
            assert len(state.assignment["c"]) == 2
    after = state.owner_of()
    return sum(before[p] != after[p] for p in range(6))


async def test_sticky_assignor_moves_fewer_partitions_than_round_robin_when_a_member_joins(
    redis_url: str, namespace: str, r: redis.asyncio.Redis
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 6)
    round_robin = await _moves_when_c_joins(redis_url, namespace, r, "rr", "round_robin")
    sticky = await _moves_when_c_joins(redis_url, namespace, r, "st", "sticky")
    assert sticky == 2  # the minimum: c's fair share
    assert sticky < round_robin


async def test_static_member_restarted_with_the_same_id_gets_its_partitions_back_without_a_rebalance(
    redis_url: str, namespace: str, r: redis.asyncio.Redis, producer: Producer
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 4)
    seen = Seen()
    a = make_consumer(redis_url, namespace, TOPIC, member_id="static-a")
    b = make_consumer(redis_url, namespace, TOPIC, member_id="static-b")
    ta, tb = start_processing(a, seen.handler("a")), start_processing(b, seen.handler("b"))
    a2: Consumer | None = None
    t2 = None
    try:
        before = await eventually(lambda: settled(r, namespace, TOPIC, [a, b], 4), 5)
        mine = a.assignment()
        await a.abort()  # a crash: no leave, no release; the owner keys still hold a's token
        await ta
        a2 = make_consumer(redis_url, namespace, TOPIC, member_id="static-a")
        t2 = start_processing(a2, seen.handler("a2"))
        await eventually(
            lambda: a2 is not None and a2.assignment() == mine,
            SESSION,
            message="same partitions back",
        )
        sent = await produce(producer, TOPIC, KEYS20, 2)
        await eventually(lambda: seen.count() >= len(sent), 5)
        await asyncio.sleep(SESSION)  # past the old instance's session: still no rebalance
        after = await group_state(r, namespace, TOPIC)
        assert after.epoch == before.epoch and after.assignment == before.assignment
        assert a2.epoch(TOPIC) == before.epoch
        assert {m.partition for m in seen.handled("a2")} == {tp.partition for tp in mine}
        assert check_history(sent, seen.events).ok
    finally:
        await stop_all((b, tb), *([(a2, t2)] if a2 is not None else []))


async def test_a_new_instance_of_a_static_member_fences_the_old_one_for_good(
    redis_url: str, namespace: str, r: redis.asyncio.Redis
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 2)
    old_lost: list[list[TopicPartition]] = []
    old = make_consumer(redis_url, namespace, TOPIC, member_id="s", on_lost=old_lost.append)
    new = make_consumer(redis_url, namespace, TOPIC, member_id="s")
    members = Keys(namespace).members(TOPIC, "g")
    async with running(old):
        await eventually(lambda: len(old.assignment()) == 2, 5)
        async with running(new):
            await eventually(
                lambda: new.assignment() == tps(TOPIC, 0, 1), 3, message="new owns all"
            )
            await eventually(lambda: old.assignment() == set(), 3, message="old fenced")
            for _ in range(10):  # and it stays that way: the old instance does not come back
                await asyncio.sleep(HB)
                assert old.assignment() == set() and new.assignment() == tps(TOPIC, 0, 1)
                assert (await r.hget(members, "s") or b"").startswith(new.instance_id.encode())
            assert len(old_lost) == 1, old_lost


# --------------------------------------------------------------------------- fencing


async def test_zombie_cannot_fetch_or_ack_after_its_owner_key_was_taken(
    redis_url: str, namespace: str, r: redis.asyncio.Redis, producer: Producer
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 1)
    lost: list[list[TopicPartition]] = []
    stream, owner = Keys(namespace).stream(TOPIC, 0), Keys(namespace).owner(TOPIC, 0, "g")
    async with running(
        make_consumer(
            redis_url, namespace, TOPIC, member_id="z", auto_ack=False, on_lost=lost.append
        )
    ) as z:
        await producer.send(TOPIC, {"seq": 0}, key="k")
        it = aiter(z)
        first = await asyncio.wait_for(anext(it), 5)
        assert (await r.get(owner) or b"").startswith(b"z|")
        await r.set(owner, "intruder|1")  # another owner took over, as Redis sees it
        assert z.assignment() == tps(TOPIC, 0)  # z has not noticed: only the ack script can refuse
        with pytest.raises(FencedError):
            await z.ack(first)
        waiting = asyncio.ensure_future(
            anext(it)
        )  # lets z's fetcher go on: its next fetch is fenced
        second = await producer.send(TOPIC, {"seq": 1}, key="k")
        await eventually(lambda: lost == [[TopicPartition(TOPIC, 0)]], 3, message="on_lost")
        assert z.assignment() == set()
        await asyncio.sleep(3 * HB)
        assert not waiting.done(), f"a fenced consumer handed out {waiting.result()}"
        # Redis proves it: the first entry is still pending (not acked), the second was
        # never moved into anyone's pending list (no XREADGROUP happened).
        assert await pending_ids(r, namespace, 0) == {first.id: "z"}
        [group] = await r.xinfo_groups(stream)
        assert group["last-delivered-id"].decode() == first.id != second.id
        assert await r.get(owner) == b"intruder|1"
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, 5)


async def test_fenced_consumer_claims_its_partition_again_once_the_other_owner_is_gone(
    redis_url: str, namespace: str, r: redis.asyncio.Redis, producer: Producer
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 1)
    lost: list[list[TopicPartition]] = []
    seen = Seen()
    c = make_consumer(redis_url, namespace, TOPIC, on_lost=lost.append)
    task = start_processing(c, seen.handler("c"))
    try:
        await eventually(lambda: c.assignment() == tps(TOPIC, 0), 5)
        # another owner holds partition 0 for 1 s (then its lease runs out)
        await r.set(Keys(namespace).owner(TOPIC, 0, "g"), "intruder|1", px=1000)
        await producer.send(TOPIC, {"seq": 0}, key="k")
        await eventually(lambda: lost, 3, message="fenced")
        # docs/architecture.md §4: a fenced consumer drops the partition; the coordinator
        # still assigns partition 0 to it, so it must claim it back once the key is free
        await eventually(
            lambda: c.assignment() == tps(TOPIC, 0),
            1 + SESSION + 2 * HB,
            message="partition 0 claimed again",
        )
        await eventually(lambda: seen.count() == 1, 2, message="its message delivered")
    finally:
        await stop_all((c, task))


async def test_consumer_fenced_by_its_refresh_claims_its_partition_again_once_it_is_free(
    redis_url: str, namespace: str, r: redis.asyncio.Redis, producer: Producer
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 1)
    lost: list[list[TopicPartition]] = []
    seen = Seen()
    c = make_consumer(redis_url, namespace, TOPIC, on_lost=lost.append)
    task = start_processing(c, seen.handler("c"))
    try:
        await eventually(lambda: c.assignment() == tps(TOPIC, 0), 5)
        await asyncio.sleep(0.3)  # idle: the partition waits in its read-only XREAD
        # another owner holds partition 0 for 1 s; nothing is produced, so only the
        # heartbeat's refresh can notice
        await r.set(Keys(namespace).owner(TOPIC, 0, "g"), "intruder|1", px=1000)
        await eventually(lambda: lost, 3 * HB + 0.5, message="fenced by the refresh")
        await eventually(
            lambda: c.assignment() == tps(TOPIC, 0),
            1 + SESSION + 2 * HB,
            message="partition 0 claimed again",
        )
        await producer.send(TOPIC, {"seq": 0}, key="k")
        await eventually(lambda: seen.count() == 1, 3, message="its message delivered")
    finally:
        await stop_all((c, task))


# --------------------------------------------------------------------------- idle cost


async def _command_calls(r: redis.asyncio.Redis) -> dict[str, int]:
    stats = await r.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def test_an_idle_consumer_sends_only_blocking_reads_and_heartbeats(
    redis_url: str, namespace: str, r: redis.asyncio.Redis
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 2)
    c = make_consumer(redis_url, namespace, TOPIC)
    task = start_processing(c, Seen().handler("c"))
    try:
        await eventually(lambda: len(c.assignment()) == 2, 5)
        await asyncio.sleep(0.5)  # settle: both partitions blocked in XREAD
        before = await _command_calls(r)
        window = 2.5  # longer than the 2 s block, so every blocking read times out once
        await asyncio.sleep(window)
        after = await _command_calls(r)
    finally:
        await stop_all((c, task))
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    delta = {k: v for k, v in delta.items() if v > 0 and k != "info"}
    # heartbeat.lua and refresh.lua run these inside EVALSHA; fetch.lua would add
    # xreadgroup and xrevrange, which an idle consumer must not need
    script_internals = {
        "hget",
        "hmget",
        "hset",
        "sadd",
        "time",
        "zadd",
        "zrangebyscore",
        "get",
        "pexpire",
        "sismember",
    }
    # On Valkey 8.1+ an owner key is refreshed by a plain SET ... IFEQ, not refresh.lua
    assert set(delta) <= {"evalsha", "xread", "set"} | script_internals, delta
    assert "xreadgroup" not in delta and "xrevrange" not in delta, delta
    beats = window / HB
    sent = delta.get("evalsha", 0) + delta.get("set", 0)
    assert sent <= (beats + 2) * (1 + 2), delta  # heartbeat + 2 refreshes a beat
    assert 1 <= delta.get("xread", 0) <= 2 * (1 + window / 2) + 2, delta


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the fetches partitions send on their own (reads, not ack-only calls)."""
    from redcurrent import fetcher

    reads: list[int] = []
    own = fetcher.PartitionFetcher._fetch_round_trip

    async def counted(self: Any, count: int, read_id: str, acks: list[str]) -> Any:
        if count:
            reads.append(count)
        return await own(self, count, read_id, acks)

    monkeypatch.setattr(fetcher.PartitionFetcher, "_fetch_round_trip", counted)
    return reads


async def test_a_message_to_an_idle_partition_needs_no_fetch_of_its_own(
    redis_url: str, namespace: str, r: redis.asyncio.Redis, producer: Producer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An idle partition's next read rides behind the idle wait's blocking XREAD, so a
    message that arrives is delivered in that one round trip: no wake and then a fetch
    (docs/architecture.md §8). One message at a time to partition 0 while partition 1
    idles too, spaced past the 5 ms ack linger and inside it; each costs the consumer at
    most one doorbell ring (which puts the read behind the blocked XREAD)."""
    await create_topic(redis_url, namespace, TOPIC, 2)
    seen = Seen()
    c = make_consumer(redis_url, namespace, TOPIC)
    task = start_processing(c, seen.handler("c"))
    n = 20
    try:
        await eventually(lambda: len(c.assignment()) == 2, 5)
        await producer.send(TOPIC, {"seq": 0}, key="k", partition=0)
        await eventually(lambda: seen.count() == 1, 5)
        await asyncio.sleep(0.1)  # settled: both partitions in the idle read
        reads = _count_reads(monkeypatch)
        before = await _command_calls(r)
        for i in range(1, n + 1):
            await producer.send(TOPIC, {"seq": i}, key="k", partition=0)
            await eventually(lambda i=i: seen.count() == i + 1, 5)
            await asyncio.sleep(0.03 if i % 2 else 0.002)
        after = await _command_calls(r)
    finally:
        await stop_all((c, task))
    assert [m.value["seq"] for m in seen.handled()] == list(range(n + 1))
    assert all(m.attempts == 1 for m in seen.handled())
    assert len(reads) <= 2, reads  # one a message before the read rode behind the wait
    rings = after.get("xadd", 0) - before.get("xadd", 0) - n
    assert rings <= n, (rings, after.get("xread", 0) - before.get("xread", 0))


async def test_a_pause_while_idle_hands_nothing_out_and_costs_no_attempt(
    redis_url: str, namespace: str, r: redis.asyncio.Redis, producer: Producer
) -> None:
    """Paused while its read waits behind the idle XREAD: a message that arrives may be
    read into our pending list, but is not handed out until the resume, and then as
    its first attempt (the re-read gives the delivery back)."""
    await create_topic(redis_url, namespace, TOPIC, 1)
    seen = Seen()
    c = make_consumer(redis_url, namespace, TOPIC)
    task = start_processing(c, seen.handler("c"))
    p0 = TopicPartition(TOPIC, 0)
    try:
        await eventually(lambda: c.assignment() == {p0}, 5)
        await producer.send(TOPIC, {"seq": 0}, key="k")
        await eventually(lambda: seen.count() == 1, 5)
        await asyncio.sleep(0.1)  # idle, its read behind the blocking XREAD
        c.pause(p0)
        await producer.send(TOPIC, {"seq": 1}, key="k")
        await asyncio.sleep(0.5)
        assert seen.count() == 1, seen.handled()
        c.resume(p0)
        await eventually(lambda: seen.count() == 2, 5)

        async def acked() -> bool:
            return await pending_ids(r, namespace, 0) == {}

        await eventually(acked, 5)
    finally:
        await stop_all((c, task))
    assert [(m.value["seq"], m.attempts) for m in seen.handled()] == [(0, 1), (1, 1)]


async def test_a_stop_while_idle_loses_nothing_and_hands_over_first_attempts(
    redis_url: str, namespace: str, r: redis.asyncio.Redis, producer: Producer
) -> None:
    """A stop while the partition's read waits behind the idle XREAD, with a message
    landing at the same moment: either the stopping consumer handles it, or the next
    one gets it as its first attempt; never lost, never twice, nothing left pending."""
    await create_topic(redis_url, namespace, TOPIC, 1)
    seen = Seen()
    p0 = TopicPartition(TOPIC, 0)
    for i in range(6):
        c = make_consumer(redis_url, namespace, TOPIC, member_id=f"m{i}")
        task = start_processing(c, seen.handler(f"m{i}"))
        try:
            await eventually(lambda c=c: c.assignment() == {p0}, 10)
            await asyncio.sleep(0.05 * (i % 3))  # idle, its read behind the blocking XREAD
            send = asyncio.create_task(producer.send(TOPIC, {"seq": i}, key="k"))
            await asyncio.sleep(0.0005 * i)
        finally:
            await stop_all((c, task))
        await send
    c = make_consumer(redis_url, namespace, TOPIC, member_id="last")
    task = start_processing(c, seen.handler("last"))
    try:
        await eventually(lambda: seen.count() == 6, 10, message="every message handled")
        await asyncio.sleep(0.1)
    finally:
        await stop_all((c, task))
    assert sorted(m.value["seq"] for m in seen.handled()) == list(range(6))
    assert all(m.attempts == 1 for m in seen.handled()), [(m.value, m.attempts) for m in seen.handled()]
    assert await pending_ids(r, namespace, 0) == {}


async def test_a_process_task_cancelled_while_idle_then_called_again_gets_each_message_once(
    redis_url: str, namespace: str, r: redis.asyncio.Redis, producer: Producer
) -> None:
    """The README's loop in a task that gets cancelled while the partition's read waits
    behind the idle XREAD, with a send landing at about the same moment, then
    ``process()`` called again on the same consumer: each message is handled once, as
    its first attempt, in order, and nothing stays pending."""
    await create_topic(redis_url, namespace, TOPIC, 1)
    seen = Seen()
    c = make_consumer(redis_url, namespace, TOPIC)
    p0 = TopicPartition(TOPIC, 0)
    task = start_processing(c, seen.handler("c"))
    try:
        await eventually(lambda: c.assignment() == {p0}, 5)
        for i in range(5):
            await asyncio.sleep(0.05)  # idle, its read behind the blocking XREAD
            send = asyncio.create_task(producer.send(TOPIC, {"seq": i}, key="k"))
            await asyncio.sleep(0.001 * i)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await send
            task = start_processing(c, seen.handler("c"))
            await eventually(lambda i=i: seen.count() == i + 1, 5, message=f"message {i} handled")

        async def acked() -> bool:
            return await pending_ids(r, namespace, 0) == {}

        await eventually(acked, 5)
    finally:
        await stop_all((c, task))
    assert [(m.value["seq"], m.attempts) for m in seen.handled()] == [(i, 1) for i in range(5)]


async def test_idle_partitions_leave_credits_for_a_busy_one(
    redis_url: str, namespace: str, producer: Producer
) -> None:
    """Reads behind the idle XREAD take fetch credits only while on the wire, and never
    more than half of ``max_in_flight``: with 16 partitions and ``max_in_flight=4``, a
    busy partition still fetches while the others idle."""
    await create_topic(redis_url, namespace, TOPIC, 16)
    seen = Seen()
    c = make_consumer(redis_url, namespace, TOPIC, max_in_flight=4)
    task = start_processing(c, seen.handler("c"))
    try:
        await eventually(lambda: len(c.assignment()) == 16, 5)
        await asyncio.sleep(0.3)  # idle
        for i in range(200):
            await producer.send(TOPIC, {"seq": i}, key="k", partition=3)
        await eventually(lambda: seen.count() == 200, 10, message="all 200 handled")
    finally:
        await stop_all((c, task))
    assert [m.value["seq"] for m in seen.handled()] == list(range(200))


async def test_epoch_and_stats_are_reported(
    redis_url: str, namespace: str, r: redis.asyncio.Redis, producer: Producer
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 2)
    seen = Seen()
    c = make_consumer(redis_url, namespace, TOPIC)
    task = start_processing(c, seen.handler("c"))
    try:
        await eventually(lambda: len(c.assignment()) == 2, 5)
        assert c.epoch(TOPIC) == c.epoch() == (await group_state(r, namespace, TOPIC)).epoch >= 1
        sent = await produce(producer, TOPIC, KEYS20, 2)
        await eventually(lambda: c.stats().get("processed", 0) == len(sent), 5)
        assert c.stats()["rebalances"] >= 1
    finally:
        await stop_all((c, task))


async def test_a_refresh_never_recreates_an_expired_owner_key_nor_overwrites_another_owner(
    redis_url: str, namespace: str, r: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The owner-key refresh (refresh.lua, or SET ... IFEQ on Valkey 8.1+) extends only a
    key holding our token: an expired key is claimed back (the coordinator still assigns
    the partition to us), another owner's key is left alone and the partition dropped."""
    await create_topic(redis_url, namespace, TOPIC, 2)
    owners = [Keys(namespace).owner(TOPIC, p, "g") for p in range(2)]
    c = make_consumer(redis_url, namespace, TOPIC)
    task = start_processing(c, Seen().handler("c"))
    try:
        await eventually(lambda: len(c.assignment()) == 2, 5)
        token = await r.get(owners[0])
        assert token is not None
        await r.delete(owners[0])  # expired while Redis was away
        await r.set(owners[1], b"intruder|x", px=int(20 * SESSION * 1000))  # someone else's
        await eventually(lambda: c.stats().get("partitions_lost", 0) >= 1, 5)
        await eventually(lambda: r.get(owners[0]), 5)
        assert await r.get(owners[0]) == token  # claimed back by its owner, same token
        assert any("reclaimed" in rec.getMessage() for rec in caplog.records)  # by claim, not refresh
        assert TopicPartition(TOPIC, 1) not in c.assignment()
        assert await r.get(owners[1]) == b"intruder|x"  # never overwritten
        assert await r.pttl(owners[1]) > 10 * SESSION * 1000  # nor extended
    finally:
        await stop_all((c, task))


async def test_an_idle_consumer_closes_the_connections_a_burst_opened(
    redis_url: str, namespace: str, r: redis.asyncio.Redis, producer: Producer
) -> None:
    """Fetching 8 busy partitions at once takes up to 8 pooled connections; once nothing
    was fetched for a heartbeat interval, the consumer keeps 2-3 (the idle wait's, one for
    its heartbeats, maybe a doorbell's): docs/architecture.md §8 "Connections"."""
    await create_topic(redis_url, namespace, TOPIC, 8)
    await produce(producer, TOPIC, KEYS20 * 10, 20)
    base = int((await r.info("clients"))["connected_clients"])
    c = make_consumer(redis_url, namespace, TOPIC, start="earliest", batch_size=10)
    seen = Seen()
    task = start_processing(c, seen.handler("c", work=0.001))
    try:
        peak = 0

        async def drained() -> bool:
            nonlocal peak
            peak = max(peak, int((await r.info("clients"))["connected_clients"]) - base)
            return len(seen.handled()) == 20 * 200

        await eventually(drained, 60, interval=0.02)
        held = None

        async def few() -> bool:
            nonlocal held
            held = int((await r.info("clients"))["connected_clients"]) - base
            return held <= 3

        await eventually(few, 5 + 5 * HB, message="an idle consumer kept the burst's connections")
        assert peak > 3, f"the burst never used more than {peak} connections: nothing to close"
    finally:
        await stop_all((c, task))
