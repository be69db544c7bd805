"""Live seek (Consumer.seek, seek_to_beginning, seek_to_end): where a partition's next
message comes from, fenced like fetch and ack (docs/architecture.md §4), recorded for
the group so a takeover reads on from there (§5).

Each test runs real consumers against a real server in a namespace of its own, with a
heartbeat of 0.2 s and a session timeout of 1.5 s.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio
from support.consuming import create_topic, make_consumer, running, start_processing, stop
from support.eventually import eventually
from support.servers import Target

from redcurrent import (
    ConfigError,
    Consumer,
    ConsumerStoppedError,
    FencedError,
    Message,
    Producer,
    Record,
    TopicPartition,
)
from redcurrent.keys import Keys
from redcurrent.offsets import id_before

pytestmark = pytest.mark.timeout(60)

TOPIC = "orders"


@pytest.fixture
async def producer(redis_url: str, namespace: str) -> AsyncIterator[Producer]:
    async with Producer(redis_url, namespace=namespace) as p:
        yield p


async def send(producer: Producer, values: range, partition: int = 0) -> list[str]:
    metas = await producer.send_batch(
        TOPIC, [Record({"i": i}, partition=partition) for i in values]
    )
    return [m.id for m in metas]


async def pending(r: redis.asyncio.Redis, ns: str, partition: int = 0) -> list[str]:
    rows = await r.xpending_range(Keys(ns).stream(TOPIC, partition), "g", "-", "+", 1000)
    return [row["message_id"].decode() for row in rows]


async def last_delivered(r: redis.asyncio.Redis, ns: str, partition: int = 0) -> str:
    [group] = await r.xinfo_groups(Keys(ns).stream(TOPIC, partition))
    value = group["last-delivered-id"]
    return value.decode() if isinstance(value, bytes) else str(value)


async def no_pending(r: redis.asyncio.Redis, ns: str, partition: int = 0) -> bool:
    return await pending(r, ns, partition) == []


def recorder(seen: list[int]) -> Any:
    async def handle(msg: Message) -> None:
        seen.append(msg.value["i"])

    return handle


def consumer(redis_url: str, namespace: str, **options: Any) -> Consumer:
    options.setdefault("start", "earliest")
    return make_consumer(redis_url, namespace, TOPIC, **options)


# --------------------------------------------------------------------------- where reading goes on


async def test_seek_back_replays_from_the_entry_inclusive(
    redis_url: str, namespace: str, producer: Producer, r: redis.asyncio.Redis
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 1)
    ids = await send(producer, range(10))
    seen: list[int] = []
    c = consumer(redis_url, namespace)
    task = start_processing(c, recorder(seen))
    try:
        await eventually(lambda: len(seen) == 10, 10)
        await c.seek(TOPIC, 0, ids[3])
        await eventually(lambda: len(seen) == 17, 10)
        assert seen == list(range(10)) + list(range(3, 10))
        await eventually(lambda: no_pending(r, namespace), 5, message="the replay was not acked")
    finally:
        await stop(c)
        await task


async def test_seek_forward_from_inside_a_handler_skips_to_the_entry(
    redis_url: str, namespace: str, producer: Producer, r: redis.asyncio.Redis
) -> None:
    """Seek while process() runs, from the handler itself: the rest of the fetched batch
    is discarded, the entries skipped are acked, reading goes on at the entry."""
    await create_topic(redis_url, namespace, TOPIC, 1)
    ids = await send(producer, range(10))
    seen: list[int] = []
    c = consumer(redis_url, namespace)

    async def handle(msg: Message) -> None:
        seen.append(msg.value["i"])
        if msg.value["i"] == 1:
            await c.seek(TOPIC, 0, ids[7])

    task = start_processing(c, handle)
    try:
        await eventually(lambda: seen[-1:] == [9], 10)
        assert seen == [0, 1, 7, 8, 9]
        assert await pending(r, namespace) == []
        assert await last_delivered(r, namespace) == ids[9]
    finally:
        await stop(c)
        await task


async def test_a_handler_in_progress_during_a_seek_back_is_not_acked_over_the_replay(
    redis_url: str, namespace: str, producer: Producer, r: redis.asyncio.Redis
) -> None:
    """Seek from another task while a handler works on entry 5: when it returns, its
    finish must not ack the replayed (pending again) entry 5 before it is handled."""
    await create_topic(redis_url, namespace, TOPIC, 1)
    ids = await send(producer, range(10))
    seen: list[int] = []
    in_hand, release = asyncio.Event(), asyncio.Event()
    c = consumer(redis_url, namespace)

    async def handle(msg: Message) -> None:
        seen.append(msg.value["i"])
        if msg.value["i"] == 5 and not in_hand.is_set():
            in_hand.set()
            await release.wait()

    task = start_processing(c, handle)
    try:
        await asyncio.wait_for(in_hand.wait(), 10)
        await c.seek(TOPIC, 0, ids[2])
        assert await pending(r, namespace) == []  # the seek acked the fetched buffer
        release.set()
        await eventually(lambda: seen[-1:] == [9] and len(seen) > 10, 10)
        assert seen == list(range(6)) + list(range(2, 10))
        assert await pending(r, namespace) == []
    finally:
        release.set()
        await stop(c)
        await task


async def test_async_for_after_a_seek_hands_out_the_entry_not_the_fetched_buffer(
    redis_url: str, namespace: str, producer: Producer, r: redis.asyncio.Redis
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 1)
    ids = await send(producer, range(6))
    async with running(consumer(redis_url, namespace)) as c:
        got = [(await c.getone()).value["i"] for _ in range(3)]
        await c.seek(TOPIC, 0, ids[1])
        got += [(await c.getone()).value["i"] for _ in range(5)]
        assert got == [0, 1, 2, 1, 2, 3, 4, 5]


async def test_a_late_manual_ack_of_a_message_fetched_before_the_seek_acks_nothing(
    redis_url: str, namespace: str, producer: Producer, r: redis.asyncio.Redis
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 1)
    ids = await send(producer, range(3))
    async with running(consumer(redis_url, namespace, auto_ack=False)) as c:
        old = await c.getone()
        await c.seek(TOPIC, 0, ids[0])
        await eventually(lambda: pending(r, namespace), 5)  # entry 0 is fetched again
        await c.ack(old)  # the old delivery: the replay of entry 0 stays pending
        assert ids[0] in await pending(r, namespace)
        replay = await c.getone()
        assert replay.id == ids[0]
        await c.ack(replay)
        assert ids[0] not in await pending(r, namespace)


async def test_seek_by_datetime_starts_at_the_first_entry_at_or_after_it(
    redis_url: str, namespace: str, producer: Producer
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 1)
    await send(producer, range(3))
    first_ms = int(time.time() * 1000) + 5
    while time.time() * 1000 < first_ms + 1:
        await asyncio.sleep(0.005)
    later = await send(producer, range(3, 6))
    assert int(later[0].split("-")[0]) > first_ms
    seen: list[int] = []
    c = consumer(redis_url, namespace)
    task = start_processing(c, recorder(seen))
    try:
        await eventually(lambda: len(seen) == 6, 10)
        moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
            milliseconds=int(later[0].split("-")[0])
        )
        await c.seek(TOPIC, 0, moment)
        await eventually(lambda: len(seen) == 9, 10)
        assert seen == [0, 1, 2, 3, 4, 5, 3, 4, 5]
    finally:
        await stop(c)
        await task


async def test_seek_to_beginning_and_to_end(
    redis_url: str, namespace: str, producer: Producer, r: redis.asyncio.Redis
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 2)
    await send(producer, range(3), partition=0)
    await send(producer, range(10, 13), partition=1)
    seen: list[int] = []
    c = consumer(redis_url, namespace)
    task = start_processing(c, recorder(seen))
    try:
        await eventually(lambda: len(seen) == 6, 10)
        await c.seek_to_beginning()  # every partition owned
        await eventually(lambda: len(seen) == 12, 10)
        assert sorted(seen[6:]) == [0, 1, 2, 10, 11, 12]
        await c.seek_to_end(TopicPartition(TOPIC, 0), [TopicPartition(TOPIC, 1)])
        await send(producer, range(20, 22), partition=1)
        await eventually(lambda: len(seen) == 14, 10)
        assert seen[12:] == [20, 21]
        assert await pending(r, namespace, 0) == [] and await pending(r, namespace, 1) == []
    finally:
        await stop(c)
        await task


async def test_a_takeover_after_a_seek_continues_from_the_new_position(
    redis_url: str, namespace: str, producer: Producer, r: redis.asyncio.Redis
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 1)
    ids = await send(producer, range(10))
    seen1: list[int] = []
    c1 = consumer(redis_url, namespace)
    task1 = start_processing(c1, recorder(seen1))
    try:
        await eventually(lambda: len(seen1) == 10, 10)
        c1.pause(TopicPartition(TOPIC, 0))  # c1 reads nothing more: the new owner must
        await c1.seek(TOPIC, 0, ids[4])
        assert await last_delivered(r, namespace) == id_before(ids[4])
    finally:
        await stop(c1)
        await task1
    assert seen1 == list(range(10))
    seen2: list[int] = []
    c2 = consumer(redis_url, namespace)
    task2 = start_processing(c2, recorder(seen2))
    try:
        await eventually(lambda: len(seen2) == 6, 10)
        assert seen2 == list(range(4, 10))
    finally:
        await stop(c2)
        await task2


# --------------------------------------------------------------------------- refused


async def test_seek_on_a_partition_not_owned_raises_fenced_and_moves_nothing(
    redis_url: str, namespace: str, producer: Producer, r: redis.asyncio.Redis
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 2)
    ids = await send(producer, range(3), partition=1)
    seen1: list[int] = []
    seen2: list[int] = []
    c1 = consumer(redis_url, namespace, assignor="sticky")
    c2 = consumer(redis_url, namespace, assignor="sticky")
    t1 = start_processing(c1, recorder(seen1))
    t2 = start_processing(c2, recorder(seen2))
    try:
        await eventually(lambda: len(c1.assignment()) == 1 and len(c2.assignment()) == 1, 10)
        await eventually(lambda: len(seen1) + len(seen2) == 3, 10)
        [mine] = c1.assignment()
        theirs = 1 - mine.partition
        before = await last_delivered(r, namespace, 1)
        with pytest.raises(FencedError):
            await c1.seek(TOPIC, theirs, "0-0")
        with pytest.raises(FencedError):
            await c1.seek(TOPIC, 7, "0-0")  # no such partition: not owned either
        with pytest.raises(FencedError):
            await c1.seek_to_beginning(TopicPartition(TOPIC, theirs))
        assert await last_delivered(r, namespace, 1) == before == ids[2]
    finally:
        await stop(c1)
        await stop(c2)
        await asyncio.gather(t1, t2)


async def test_seek_is_fenced_in_redis_when_another_token_owns_the_partition(
    redis_url: str, namespace: str, producer: Producer, r: redis.asyncio.Redis
) -> None:
    """The seek script checks the owner key itself (the fencing invariant, §4): a consumer
    that still believes it owns the partition moves nothing once someone else does."""
    await create_topic(redis_url, namespace, TOPIC, 1)
    ids = await send(producer, range(3))
    seen: list[int] = []
    c = consumer(redis_url, namespace, heartbeat_interval=1.0, session_timeout=10.0)
    task = start_processing(c, recorder(seen))
    try:
        await eventually(lambda: len(seen) == 3, 10)
        await r.set(Keys(namespace).owner(TOPIC, 0, "g"), "someone|else", px=10_000)
        with pytest.raises(FencedError):
            await c.seek(TOPIC, 0, ids[0])
        assert await last_delivered(r, namespace) == ids[2]
    finally:
        await r.delete(Keys(namespace).owner(TOPIC, 0, "g"))
        await stop(c)
        await task


async def test_bad_seeks_raise_typed_errors(
    redis_url: str, namespace: str, producer: Producer
) -> None:
    await create_topic(redis_url, namespace, TOPIC, 1)
    c = consumer(redis_url, namespace)
    with pytest.raises(ConsumerStoppedError):
        await c.seek(TOPIC, 0, "0-0")
    async with running(c):
        await eventually(lambda: c.assignment(), 5)
        for bad in ("abc", "1-2-3", "-1", 17, None):
            with pytest.raises(ConfigError):
                await c.seek(TOPIC, 0, bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigError):
            await c.seek("not-subscribed", 0, "0-0")
        with pytest.raises(ConfigError):
            await c.seek(TOPIC, -1, "0-0")
    with pytest.raises(ConsumerStoppedError):
        await c.seek_to_end()


async def test_seek_on_an_idle_partition_wakes_it_and_a_takeover_reads_on_from_there(
    target: Target, namespace: str, target_client: Any
) -> None:
    """Single node (the shared idle wait) and cluster (a blocking read per partition):
    a drained partition blocked in its idle wait replays at once after a seek back, and
    after a graceful handoff the next member starts where the seek put the group."""
    await create_topic(target.url, namespace, TOPIC, 2)
    async with Producer(target.url, namespace=namespace) as producer:
        ids = await send(producer, range(6), partition=1)
    seen1: list[int] = []
    c1 = consumer(target.url, namespace)
    task1 = start_processing(c1, recorder(seen1))
    try:
        await eventually(lambda: len(seen1) == 6, 10)
        await asyncio.sleep(0.2)  # let partition 1 settle into its idle wait
        await c1.seek(TOPIC, 1, ids[2])
        await eventually(lambda: len(seen1) == 10, 5, message="the idle partition did not replay")
        assert seen1 == [0, 1, 2, 3, 4, 5, 2, 3, 4, 5]
        c1.pause(TopicPartition(TOPIC, 1))  # c1 reads nothing more: the next member must
        await c1.seek(TOPIC, 1, ids[4])
    finally:
        await stop(c1)
        await task1
    seen2: list[int] = []
    c2 = consumer(target.url, namespace)
    task2 = start_processing(c2, recorder(seen2))
    try:
        await eventually(lambda: len(seen2) >= 2, 10)
        assert seen1[10:] == [] and seen2 == [4, 5]
        stream = Keys(namespace).stream(TOPIC, 1)
        await eventually(
            lambda: _no_rows(target_client.xpending_range(stream, "g", "-", "+", 10)), 5
        )
    finally:
        await stop(c2)
        await task2


async def _no_rows(rows: Any) -> bool:
    return not await rows
