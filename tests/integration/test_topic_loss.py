"""A producer never writes into a partition its topic does not have.

The produce script checks the partition's marker (written by create_topic and
alter_partitions before the metadata names the partition, deleted by delete_topic after
it) atomically with the write, so a topic deleted under a sending producer, or lost with
a server restarted empty, gets no acked record that nobody can read. A topic the
producer knew is never auto-created again: sends fail with UnknownTopicError until an
operator recreates it. Runs on a single node and on a 3-master cluster.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from support.eventually import eventually
from support.proxy import FaultProxy
from support.servers import AsyncClient, Target

from redcurrent import (
    Admin,
    InvalidPartitionsError,
    Producer,
    Record,
    RecordMetadata,
    UnknownTopicError,
    murmur3_32,
)
from redcurrent.keys import Keys


async def topic_keys(client: AsyncClient, namespace: str, topic: str) -> list[bytes]:
    """Every key of ``topic`` (on a cluster, SCAN visits every primary)."""
    pattern = Keys(namespace).partition_keys_pattern(topic)
    found = [k async for k in client.scan_iter(match=pattern, count=1000)]
    if await client.exists(Keys(namespace).meta(topic)):
        found.append(Keys(namespace).meta(topic).encode())
    return found


async def readable(client: AsyncClient, namespace: str, meta: RecordMetadata) -> bool:
    stream = Keys(namespace).stream(meta.topic, meta.partition)
    return bool(await client.xrange(stream, meta.id, meta.id))


async def test_delete_topic_while_sending_acks_nothing_outside_a_real_partition(
    target: Target, target_client: AsyncClient, admin: Admin, namespace: str
) -> None:
    """Sends keep running while the topic is deleted: every send started after
    delete_topic returned fails with UnknownTopicError, no key of the topic comes back
    (no orphan stream holding acked records), and the producer does not recreate it.
    After an operator recreates it smaller, sends work again, in its real partitions."""
    await admin.create_topic("doomed", partitions=6)
    deleted_at = creating_at = recreated_at = float("inf")
    outcomes: list[tuple[float, float, RecordMetadata | BaseException]] = []
    stop = asyncio.Event()
    # A slow periodic refresh: the in-script marker check has to catch the deletion.
    async with Producer(target.url, namespace=namespace, metadata_max_age=60) as producer:

        async def sender(worker: int) -> None:
            i = 0
            while not stop.is_set():
                started = time.monotonic()
                try:
                    result: RecordMetadata | BaseException = await producer.send(
                        "doomed", {"w": worker, "i": i}, key=f"k{worker}-{i}"
                    )
                except Exception as exc:  # collected and checked below
                    result = exc
                outcomes.append((started, time.monotonic(), result))
                i += 1
                await asyncio.sleep(0.002)

        tasks = [asyncio.create_task(sender(w)) for w in range(8)]
        await eventually(lambda: len(outcomes) > 200, timeout=10)
        await admin.delete_topic("doomed")
        deleted_at = time.monotonic()
        await asyncio.sleep(0.5)
        left = await topic_keys(target_client, namespace, "doomed")
        creating_at = time.monotonic()
        await admin.create_topic("doomed", partitions=2)
        recreated_at = time.monotonic()
        await eventually(
            lambda: any(s > recreated_at and isinstance(r, RecordMetadata) for s, _, r in outcomes),
            timeout=10,
        )
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*tasks)

    assert left == [], f"keys of the deleted topic came back: {left[:5]}"
    # Ended before the operator began recreating it: a send in flight while create_topic
    # runs may land in the recreated topic (its markers come first), a real partition.
    while_gone = [r for s, e, r in outcomes if s > deleted_at and e < creating_at]
    assert while_gone, "no send ran while the topic was gone"
    acked = [r for r in while_gone if isinstance(r, RecordMetadata)]
    assert not acked, f"{len(acked)} sends to the deleted topic were acknowledged"
    for err in while_gone:
        assert isinstance(err, UnknownTopicError) and not err.retriable, repr(err)
        assert "deleted" in str(err) and "recreate" in str(err)
    after = [r for s, _, r in outcomes if s > recreated_at]
    assert after and all(isinstance(r, RecordMetadata) for r in after), after[:3]
    for meta in after:
        assert isinstance(meta, RecordMetadata)
        assert meta.partition < 2 and await readable(target_client, namespace, meta)


async def test_a_known_topic_is_never_auto_created_again(
    target: Target, target_client: AsyncClient, admin: Admin, namespace: str
) -> None:
    meta_key = Keys(namespace).meta("known")
    async with Producer(target.url, namespace=namespace) as producer:
        await producer.send("known", "first")  # auto-created: never seen before
        assert await producer.partitions_for("known") == 1
        await admin.delete_topic("known")
        for _ in range(3):
            with pytest.raises(UnknownTopicError, match="an operator must recreate it") as err:
                await producer.send("known", "lost")
            assert not err.value.retriable
        with pytest.raises(UnknownTopicError):
            await producer.send_batch("known", ["a", "b"])
        assert await target_client.exists(meta_key) == 0
        assert await topic_keys(target_client, namespace, "known") == []
        await admin.create_topic("known", partitions=3)
        meta = await eventually(lambda: producer.send("known", "back", key="x"), timeout=5)
        assert await readable(target_client, namespace, meta)
        assert await producer.partitions_for("known") == 3


async def test_a_topic_recreated_smaller_gets_records_rerouted_not_orphaned(
    target: Target, target_client: AsyncClient, admin: Admin, namespace: str
) -> None:
    """The producer still routes with 6 partitions; the topic now has 2. Records for
    partitions 2-5 are refused by the script (no marker), then moved by key (murmur3 %
    2); a record pinned to partition 5 fails: that partition does not exist."""
    await admin.create_topic("shrunk", partitions=6)
    async with Producer(target.url, namespace=namespace, metadata_max_age=60) as producer:
        await producer.send("shrunk", "warm", key="w")
        await admin.delete_topic("shrunk")
        await admin.create_topic("shrunk", partitions=2)
        keys = [f"key-{i}" for i in range(60)]
        metas = await producer.send_batch("shrunk", [Record(i, key=k) for i, k in enumerate(keys)])
        single = await asyncio.gather(*(producer.send("shrunk", k, key=k) for k in keys))
        with pytest.raises(InvalidPartitionsError, match="out of range"):
            await producer.send("shrunk", "pinned", partition=5)
    for k, meta in [*zip(keys, metas, strict=True), *zip(keys, single, strict=True)]:
        assert meta.partition == murmur3_32(k.encode()) % 2
        assert await readable(target_client, namespace, meta)
    for p in range(2, 6):
        assert await target_client.exists(Keys(namespace).stream("shrunk", p)) == 0


async def test_a_topic_without_markers_is_repaired_and_written(
    target: Target, target_client: AsyncClient, admin: Admin, namespace: str
) -> None:
    """A topic created by an older redcurrent has no partition markers: the first
    refused batch makes the producer restore them (the metadata says the partitions
    exist), then it is written."""
    await admin.create_topic("old", partitions=3)
    keys = Keys(namespace)
    for p in range(3):
        await target_client.delete(keys.topic_version("old", p))
    async with Producer(target.url, namespace=namespace) as producer:
        metas = await producer.send_batch("old", [Record(i, partition=i % 3) for i in range(9)])
    for meta in metas:
        assert await readable(target_client, namespace, meta)
    for p in range(3):
        assert await target_client.exists(keys.topic_version("old", p)) == 1


async def test_markers_follow_the_topic_life_cycle(
    target: Target, target_client: AsyncClient, admin: Admin, namespace: str
) -> None:
    keys = Keys(namespace)

    async def markers(n: int) -> list[int]:
        return [await target_client.exists(keys.topic_version("life", p)) for p in range(n)]

    await admin.create_topic("life", partitions=2)
    assert await markers(4) == [1, 1, 0, 0]
    await admin.create_topic("life", partitions=4, exist_ok=True)  # exists: nothing added
    assert await markers(4) == [1, 1, 0, 0]
    await admin.alter_partitions("life", 4)
    assert await markers(5) == [1, 1, 1, 1, 0]
    await admin.delete_topic("life")
    assert await markers(5) == [0, 0, 0, 0, 0]


async def test_a_send_made_after_the_topic_was_recreated_never_fails_as_unknown(
    redis_url: str, namespace: str
) -> None:
    """A send that joins a lookup which read Redis before an operator recreated the topic
    asks again instead of failing: once the topic exists, sends to it work."""
    async with FaultProxy.for_url(redis_url) as proxy, Admin(redis_url, namespace=namespace) as admin:
        await admin.create_topic("again", partitions=1)
        async with Producer(proxy.url, namespace=namespace) as producer:
            await producer.send("again", "first")
            await admin.delete_topic("again")
            with pytest.raises(UnknownTopicError):
                await producer.send("again", "gone")
            proxy.set_latency(0.5)  # the next lookup reads at +0.5 s, answers at +1.0 s
            early = asyncio.create_task(producer.send("again", "early"))
            await asyncio.sleep(0.7)
            await admin.create_topic("again", partitions=1)  # after that read
            await asyncio.sleep(0.1)
            late = await producer.send("again", "late")  # joins the lookup still in flight
            assert late.partition == 0
            with pytest.raises(UnknownTopicError):
                await early  # its lookup read Redis before the topic was back
