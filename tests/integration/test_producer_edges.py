"""Producer edges: close during the first lookup, cancelled sends, one serializer call
per record, and keys that are not valid text. Real single-node server (through a TCP
latency proxy where timing matters)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import orjson
import pytest
import redis.asyncio
from support.entries import as_fields
from support.eventually import eventually
from support.proxy import FaultProxy

from redcurrent import (
    Admin,
    Producer,
    ProducerClosedError,
    Record,
    RedcurrentError,
    SerializationError,
)
from redcurrent.keys import Keys


async def namespace_keys(r: redis.asyncio.Redis, namespace: str) -> set[bytes]:
    return {k async for k in r.scan_iter(match=f"{namespace}:*", count=1000)}


async def test_close_during_the_first_metadata_lookup_fails_sends_with_producer_closed(
    proxy: FaultProxy, namespace: str
) -> None:
    producer = Producer(proxy.url, namespace=namespace)
    await producer.start()
    proxy.set_latency(0.3)  # the lookup of the new topic is in flight for a while
    sends = [asyncio.create_task(producer.send("fresh", i, key=str(i))) for i in range(100)]
    await asyncio.sleep(0.1)
    await producer.close()
    results = await asyncio.gather(*sends, return_exceptions=True)
    kinds = Counter(type(x).__name__ for x in results)
    assert kinds == {"ProducerClosedError": 100}, kinds
    assert all("closed" in str(x) for x in results)


async def test_cancelled_sends_are_still_stored_once_and_flush_waits_for_them(
    proxy: FaultProxy, r: redis.asyncio.Redis, namespace: str
) -> None:
    """Cancelling the task awaiting send() does not withdraw a queued record (Kafka's
    behaviour, documented on Producer.send): all 1,000 are stored, each once, and
    flush() returns only when the cancelled ones are stored too."""
    async with Admin(proxy.url, namespace=namespace) as admin:
        await admin.create_topic("cancel", partitions=4)
    async with Producer(proxy.url, namespace=namespace, batch_size=100) as producer:
        await producer.partitions_for("cancel")
        proxy.set_latency(0.05)  # every batch takes a while: the cancels land first
        tasks = [asyncio.create_task(producer.send("cancel", i, key=f"k{i}")) for i in range(1000)]
        await asyncio.sleep(0)  # each task runs up to its first await: queued
        for t in tasks[::2]:
            t.cancel()
        await producer.flush()
        keys = Keys(namespace)
        stored = Counter[int]()
        for p in range(4):
            for _, fields in await r.xrange(keys.stream("cancel", p)):
                stored[orjson.loads(as_fields(fields)[b"v"])] += 1
        assert sorted(stored) == list(range(1000)), "flush returned before every record was stored"
        assert set(stored.values()) == {1}, "a record was stored twice"
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert sum(isinstance(x, asyncio.CancelledError) for x in outcomes) == 500


async def test_a_custom_serializer_runs_once_per_record_even_on_the_first_send(
    redis_url: str, r: redis.asyncio.Redis, namespace: str
) -> None:
    calls: list[Any] = []

    def serializer(value: Any) -> bytes:
        calls.append(value)
        return orjson.dumps(value)

    async with Admin(redis_url, namespace=namespace) as admin:
        await admin.create_topic("ttl", partitions=1, ttl=60)
    async with Producer(redis_url, namespace=namespace, serializer=serializer) as producer:
        await producer.send("new", {"n": 1})  # first send: metadata lookup and auto-create
        assert calls == [{"n": 1}]
        await producer.send_batch("new-batch", [Record({"n": i}) for i in range(5)])
        assert len(calls) == 6
        # The topic's default TTL still reaches a record framed before the lookup.
        await producer.send("ttl", {"n": "ttl"})
        assert len(calls) == 7
        await producer.send_batch("ttl-too", [{"n": 0}])
    (_, fields), = await r.xrange(Keys(namespace).stream("ttl", 0))
    # Framed before the lookup as the common record (format 2, one field), it is written
    # in format 1 once the topic's TTL is known: format 2 has no expiry field.
    assert fields.keys() == {b"f", b"v", b"x"}, fields
    assert (fields[b"f"], fields[b"v"]) == (b"1cn", b'{"n":"ttl"}')
    assert int(fields[b"x"]) > 0  # the expiry field from the topic's ttl


@pytest.mark.parametrize("existing", [True, False], ids=["known-topic", "new-topic"])
async def test_a_str_key_with_a_lone_surrogate_is_a_typed_error_and_nothing_is_written(
    redis_url: str, r: redis.asyncio.Redis, namespace: str, existing: bool
) -> None:
    async with Producer(redis_url, namespace=namespace) as producer:
        if existing:
            await producer.send("t", "warm-up")
        before = await namespace_keys(r, namespace)
        lengths = await r.xlen(Keys(namespace).stream("t", 0))
        for key in ("\ud800", "ok\udfffok"):
            with pytest.raises(SerializationError, match="valid Unicode") as err:
                await producer.send("t", "v", key=key)
            assert isinstance(err.value, ValueError) and isinstance(err.value, RedcurrentError)
            with pytest.raises(SerializationError):
                await producer.send_batch("t", [Record("v", key="fine"), Record("v", key=key)])
        await producer.flush()
        assert await namespace_keys(r, namespace) == before
        assert await r.xlen(Keys(namespace).stream("t", 0)) == lengths
        if existing:  # the producer is still healthy
            await eventually(lambda: producer.send("t", "after", key="a"), timeout=2)


async def test_sends_after_close_raise_producer_closed(redis_url: str, namespace: str) -> None:
    producer = Producer(redis_url, namespace=namespace)
    await producer.send("t", 1)
    await producer.close()
    with pytest.raises(ProducerClosedError):
        await producer.send("t", 2)


async def test_flush_waits_for_sends_still_looking_their_topic_up(
    proxy: FaultProxy, r: redis.asyncio.Redis, namespace: str
) -> None:
    """A send started before flush() is flushed by it even while its topic's first
    lookup is in flight (not yet queued in the accumulator)."""
    async with Producer(proxy.url, namespace=namespace) as producer:
        proxy.set_latency(0.1)  # the first lookup (and auto-create) of the topic takes a while
        sends = [asyncio.create_task(producer.send("later", i, key=str(i))) for i in range(20)]
        batch = asyncio.create_task(producer.send_batch("later2", list(range(5))))
        await asyncio.sleep(0.01)  # every send is inside its lookup now
        await producer.flush()
        assert all(t.done() and t.exception() is None for t in sends)
        assert batch.done() and batch.exception() is None
    keys = Keys(namespace)
    assert await r.xlen(keys.stream("later", 0)) == 20
    assert await r.xlen(keys.stream("later2", 0)) == 5


async def test_close_while_the_producer_is_starting_starts_nothing(proxy: FaultProxy, namespace: str) -> None:
    producer = Producer(proxy.url, namespace=namespace)
    proxy.set_latency(0.2)  # connecting (the server probe) takes a while
    starting = asyncio.create_task(producer.start())
    await asyncio.sleep(0.05)
    await producer.close()
    with pytest.raises(ProducerClosedError):
        await starting
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert not names & {"redcurrent-producer-sender", "redcurrent-metadata"}  # no task left behind
    with pytest.raises(ProducerClosedError):
        await producer.send("t", 1)
