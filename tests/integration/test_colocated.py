"""Co-located topics (docs/architecture.md "Co-located topics"): partition p of a topic
created with ``colocate_with`` lives in the hash slot of partition p of its anchor.

Each test runs twice (``target``: single / cluster) in its own namespace.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.crc import key_slot
from support.eventually import eventually
from support.servers import AsyncClient, Target

from redcurrent import (
    Admin,
    Consumer,
    DeadLetter,
    InvalidPartitionsError,
    Message,
    Producer,
    Record,
    ShareConsumer,
    TopicError,
    UnknownTopicError,
)
from redcurrent.keys import Keys

P = 4


async def test_partitions_share_their_anchors_slots(
        target: Target, admin: Admin, target_client: AsyncClient, namespace: str) -> None:
    await admin.create_topic("orders", partitions=P)
    info = await admin.create_topic("invoices", partitions=P, colocate_with="orders")
    assert info.colocate_with == "orders"
    assert (await admin.describe_topic("orders")).colocate_with is None
    keys = Keys(namespace)
    keys.learn("invoices", "orders")
    slots = []
    for p in range(P):
        mine, anchor = keys.stream("invoices", p), keys.stream("orders", p)
        assert mine != anchor
        assert key_slot(mine.encode()) == key_slot(anchor.encode())
        if target.is_cluster:  # as the server computes it
            assert await target_client.cluster_keyslot(mine) == await target_client.cluster_keyslot(anchor)
        assert key_slot(keys.owner("invoices", p, "g").encode()) == key_slot(anchor.encode())
        assert await target_client.exists(keys.topic_version("invoices", p)) == 1  # its markers are there
        slots.append(key_slot(anchor.encode()))
    assert len(set(slots)) > 1  # different partitions still spread over slots


async def test_a_family_shares_the_root_anchor(admin: Admin) -> None:
    await admin.create_topic("a", partitions=P)
    await admin.create_topic("b", partitions=P, colocate_with="a")
    info = await admin.create_topic("c", partitions=P, colocate_with="b")
    assert info.colocate_with == "a"


async def test_colocation_needs_the_same_partition_count(admin: Admin) -> None:
    await admin.create_topic("orders", partitions=P)
    with pytest.raises(InvalidPartitionsError, match="partition count"):
        await admin.create_topic("invoices", partitions=P + 1, colocate_with="orders")
    with pytest.raises(UnknownTopicError):
        await admin.create_topic("invoices", partitions=P, colocate_with="nope")
    assert "invoices" not in await admin.list_topics()


async def test_colocated_topics_refuse_to_grow(admin: Admin) -> None:
    await admin.create_topic("orders", partitions=P)
    await admin.create_topic("invoices", partitions=P, colocate_with="orders")
    for name in ("orders", "invoices"):
        with pytest.raises(InvalidPartitionsError, match="cannot grow"):
            await admin.alter_partitions(name, P + 2)
    assert (await admin.describe_topic("orders")).partitions == P
    assert (await admin.describe_topic("invoices")).partitions == P


async def test_anchor_is_deleted_only_after_its_colocated_topics(
    admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    await admin.create_topic("orders", partitions=P)
    await admin.create_topic("invoices", partitions=P, colocate_with="orders")
    with pytest.raises(TopicError, match="invoices"):
        await admin.delete_topic("orders")
    await admin.delete_topic("invoices")
    keys = Keys(namespace)
    keys.learn("invoices", "orders")
    for p in range(P):
        assert await target_client.exists(keys.stream("invoices", p), keys.topic_version("invoices", p)) == 0
    await admin.delete_topic("orders")  # nothing co-located left
    assert await admin.list_topics() == []
    await admin.create_topic("orders", partitions=P)
    await admin.alter_partitions("orders", P + 1)  # no longer an anchor: it grows


async def test_produce_and_consume_a_colocated_topic(target: Target, admin: Admin, namespace: str) -> None:
    await admin.create_topic("orders", partitions=P)
    await admin.create_topic("invoices", partitions=P, colocate_with="orders")
    turl = target.url
    async with Producer(turl, namespace=namespace) as producer:
        sent = [await producer.send("invoices", {"i": i}, key=f"k{i}") for i in range(40)]
    assert {m.partition for m in sent} == set(range(P))
    info = await admin.describe_topic("invoices")
    assert info.length == 40
    got: list[Message] = []

    async def handle(msg: Message) -> None:
        got.append(msg)

    async with Consumer("invoices", group="g", url=turl, namespace=namespace, start="earliest",
                        heartbeat_interval=0.2, session_timeout=1.5) as consumer:
        task = asyncio.create_task(consumer.process(handle))
        await eventually(lambda: len(got) == 40, timeout=20)
        await consumer.stop()
        await task
    assert sorted(m.value["i"] for m in got) == list(range(40))
    for m in got:
        assert (m.partition, m.id) in {(s.partition, s.id) for s in sent}


async def test_every_component_uses_the_anchors_slots(
        target: Target, admin: Admin, target_client: AsyncClient, namespace: str) -> None:
    """Producer, consumer (dead letters and their requeue), share group, offsets reset,
    trim, group deletion and delete_topic of a co-located topic, each through fresh
    clients that learn the anchor from the metadata: no key of the topic's own
    ``{invoices:P}`` tags is ever written."""
    await admin.create_topic("orders", partitions=P)
    await admin.create_topic("invoices", partitions=P, colocate_with="orders")
    async with Producer(target.url, namespace=namespace) as producer:
        await producer.send_batch("invoices", [Record({"i": i}, key=f"k{i}") for i in range(20)])
    handled: list[int] = []

    async def handle(msg: Message) -> None:
        if msg.value["i"] == 3 and msg.headers.get("rc-requeue-group") is None:
            raise DeadLetter("to the dead letters")
        handled.append(msg.value["i"])

    async with Consumer("invoices", group="g", url=target.url, namespace=namespace, start="earliest",
                        heartbeat_interval=0.2, session_timeout=1.5) as consumer:
        task = asyncio.create_task(consumer.process(handle))
        await eventually(lambda: len(handled) == 19, timeout=20)
        async with Admin(target.url, namespace=namespace) as fresh:
            assert len(await fresh.dead_letters("invoices", "g")) == 1
            assert await fresh.requeue_dead_letters("invoices", "g") == 1
        await eventually(lambda: len(handled) == 20, timeout=20)
        await consumer.stop()
        await task
    shared: list[int] = []

    async def share(msg: Message) -> None:
        shared.append(msg.value["i"])

    async with ShareConsumer("invoices", group="s", url=target.url, namespace=namespace,
                             start="earliest") as sc:
        task = asyncio.create_task(sc.process(share))
        await eventually(lambda: len(shared) >= 20, timeout=20)  # the requeued entry is for "g" only
        await sc.stop()
        await task
    async with Admin(target.url, namespace=namespace) as fresh:
        assert sum(p.pending for p in (await fresh.describe_group("invoices", "g")).partitions) == 0
        await fresh.reset_offsets("invoices", "g", "earliest")
        assert await fresh.trim("invoices", safe=False, maxlen=0) == 21
        await fresh.delete_group("invoices", "g")
        assert [k async for k in target_client.scan_iter(match=f"{namespace}:{{invoices:*")] == []
        assert [k async for k in target_client.scan_iter(match=f"{namespace}:@invoices:*")] != []
        await fresh.delete_topic("invoices")
    assert [k async for k in target_client.scan_iter(match=f"{namespace}:@invoices:*")] == []
    assert (await admin.describe_topic("orders")).partitions == P
