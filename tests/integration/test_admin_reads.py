"""Admin's read-only views: read_partition (a partition without a group) and dead_letter."""

from __future__ import annotations

import datetime as dt

import pytest
from support.servers import AsyncClient, Target

from redcurrent import (
    Admin,
    ConfigError,
    Consumer,
    InvalidPartitionsError,
    Message,
    Producer,
    UnknownTopicError,
    next_id,
)
from redcurrent.keys import Keys


async def test_read_partition_reads_without_a_group_and_pages_with_next_id(
    target: Target, target_client: AsyncClient, namespace: str
) -> None:
    async with Admin(target.url, namespace=namespace) as admin, Producer(target.url, namespace=namespace) as p:
        await admin.create_topic("t", partitions=2)
        metas = [await p.send("t", {"i": i}, key="k", partition=1, headers={"n": str(i)} if i == 3 else None)
                 for i in range(25)]
        first = await admin.read_partition("t", 1, count=10)
        assert [m.value for m in first] == [{"i": i} for i in range(10)]
        assert first[0].key == "k" and first[0].attempts == 0 and first[0].id == metas[0].id
        rest = await admin.read_partition("t", 1, next_id(first[-1].id), count=100)
        assert [m.value["i"] for m in rest] == list(range(10, 25))
        assert (await admin.read_partition("t", 1, metas[3].id, count=1))[0].headers == {"n": "3"}  # inclusive
        moment = dt.datetime.fromtimestamp(metas[20].timestamp / 1000, dt.UTC)
        assert (await admin.read_partition("t", 1, moment, count=1))[0].timestamp == metas[20].timestamp
        assert await admin.read_partition("t", 0) == []
        assert await admin.list_groups("t") == []  # reading created no group
        # an entry that is not a redcurrent message comes back marked, not as an error
        await target_client.xadd(Keys(namespace).stream("t", 0), {"junk": "1"})
        [odd] = await admin.read_partition("t", 0)
        assert "rc-decode-error" in odd.headers and odd.key is None


async def test_read_partition_refuses_bad_input_with_typed_errors(redis_url: str, namespace: str) -> None:
    async with Admin(redis_url, namespace=namespace) as admin:
        await admin.create_topic("t", partitions=2)
        with pytest.raises(UnknownTopicError):
            await admin.read_partition("nope", 0)
        with pytest.raises(InvalidPartitionsError):
            await admin.read_partition("t", 2)
        with pytest.raises(InvalidPartitionsError):
            await admin.read_partition("t", -1)
        with pytest.raises(ConfigError):
            await admin.read_partition("t", 0, "not-an-id")
        with pytest.raises(ConfigError):
            await admin.read_partition("t", 0, count=0)


async def test_dead_letter_by_id(redis_url: str, namespace: str) -> None:
    async with Admin(redis_url, namespace=namespace) as admin, Producer(redis_url, namespace=namespace) as p:
        await admin.create_topic("t", partitions=1)
        await p.send("t", "poison", key="x")
        failed: list[Message] = []

        async def handle(msg: Message) -> None:
            failed.append(msg)
            raise ValueError("no")

        async with Consumer("t", group="g", url=redis_url, namespace=namespace, start="earliest",
                            max_attempts=1) as consumer:
            import asyncio

            task = asyncio.create_task(consumer.process(handle))
            while await admin.count_dead_letters("t", "g") == 0:
                await asyncio.sleep(0.02)
            await consumer.stop()
            await task
        [listed] = await admin.dead_letters("t", "g")
        found = await admin.dead_letter("t", "g", listed.dead_letter_id)
        assert found == listed and found.value == "poison" and found.error == "no"
        assert await admin.dead_letter("t", "g", next_id(listed.dead_letter_id)) is None
        with pytest.raises(ConfigError):
            await admin.dead_letter("t", "g", "garbage")


def test_next_id() -> None:
    assert next_id("1700000000000-5") == "1700000000000-6"
    assert next_id("1700000000000") == "1700000000000-1"
    assert next_id("5-18446744073709551615") == "6-0"
    with pytest.raises(ConfigError):
        next_id("x-1")
