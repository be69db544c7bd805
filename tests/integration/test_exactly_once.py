"""Exactly-once on the producer side (docs/exactly-once.md): dedup keys, durable
producer identity (transactional_id, fencing) and transactions, checked in Redis itself
(XRANGE / XLEN on the partition streams), on one node and on the 3+3 cluster where the
doc says the guarantee holds."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
import redis
from support.entries import as_fields
from support.eventually import eventually
from support.proxy import FaultProxy
from support.servers import AsyncClient, Cluster, Target

from redcurrent import (
    Admin,
    AmbiguousWriteError,
    ConfigError,
    FencedError,
    Producer,
    Record,
    RecordMetadata,
    TopicError,
    TransactionError,
)
from redcurrent.keys import Keys

Factory = Callable[..., Producer]


@pytest_asyncio.fixture
async def make_producer(target: Target, namespace: str) -> AsyncIterator[Factory]:
    made: list[Producer] = []

    def make(**options: Any) -> Producer:
        options.setdefault("namespace", namespace)
        producer = Producer(options.pop("url", target.url), **options)
        made.append(producer)
        return producer

    yield make
    for producer in made:
        await producer.close()


async def total(client: AsyncClient, namespace: str, topic: str, partitions: int) -> int:
    keys = Keys(namespace)
    return sum([await client.xlen(keys.stream(topic, p)) for p in range(partitions)])


async def values(client: AsyncClient, namespace: str, topic: str, partition: int) -> list[bytes]:
    return [as_fields(f)[b"v"] for _, f in await client.xrange(Keys(namespace).stream(topic, partition))]


# ----------------------------------------------------------------------------- dedup keys


async def test_second_send_with_a_dedup_key_writes_nothing_and_returns_the_first(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    info = await admin.create_topic("orders", partitions=4, dedup_window=30.0)
    assert info.config.dedup_window_ms == 30_000  # describe_topic shows it
    producer = make_producer()
    first = await producer.send("orders", {"n": 1}, dedup_key="order-1")
    again = await producer.send("orders", {"n": 2}, dedup_key="order-1")
    keyed = await producer.send("orders", {"n": 3}, key="customer-7", dedup_key="order-2")
    keyed_again = await producer.send("orders", {"n": 4}, key="customer-7", dedup_key="order-2")
    other = await producer.send("orders", {"n": 5}, dedup_key="order-3")
    assert again == first and keyed_again == keyed and other.id != first.id
    assert await total(target_client, namespace, "orders", 4) == 3
    assert await values(target_client, namespace, "orders", first.partition) in (
        [b'{"n":1}'], [b'{"n":1}', b'{"n":3}'], [b'{"n":1}', b'{"n":5}'], [b'{"n":1}', b'{"n":3}', b'{"n":5}'])
    # the entry's dedup memory expires with the window
    pttl = await target_client.pttl(Keys(namespace).dedup("orders", first.partition, "order-1"))
    assert 0 < pttl <= 30_000


async def test_without_a_key_a_record_is_routed_by_its_dedup_key(
    make_producer: Factory, admin: Admin, namespace: str
) -> None:
    """Copies of one record meet in one partition even from different producers (whose
    sticky partitions differ): the dedup key routes it."""
    await admin.create_topic("routed", partitions=8)
    a, b = make_producer(), make_producer()
    metas = [await p.send("routed", i, dedup_key=f"d{i % 5}") for i, p in enumerate([a, b] * 10)]
    by_key: dict[int, set[RecordMetadata]] = {}
    for i, m in enumerate(metas):
        by_key.setdefault(i % 5, set()).add(m)
    assert all(len(ms) == 1 for ms in by_key.values())
    assert len({m.partition for m in metas}) > 1  # really spread by the keys, not one partition


async def test_two_records_with_one_dedup_key_in_one_batch(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    await admin.create_topic("batch", partitions=3)
    producer = make_producer()
    metas = await producer.send_batch("batch", [
        Record({"n": 0}, key="k", dedup_key="x"),
        Record({"n": 1}, key="k"),
        Record({"n": 2}, key="k", dedup_key="x"),
        Record({"n": 3}, dedup_key="y"),
        Record({"n": 4}, dedup_key="y"),
    ])
    assert metas[2] == metas[0] and metas[4] == metas[3] and metas[1] != metas[0]
    assert await total(target_client, namespace, "batch", 3) == 3
    # and a second batch later: every dedup'd record returns its first copy
    again = await producer.send_batch("batch", [Record({"n": 9}, key="k", dedup_key="x"), Record({"n": 8}, dedup_key="y")])
    assert again == [metas[0], metas[3]]
    assert await total(target_client, namespace, "batch", 3) == 3


async def test_two_producers_racing_on_one_dedup_key_store_one_entry(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    """Two Producer instances (their own connections) in concurrent tasks send the same
    50 dedup keys at once: one entry per key, and both are told the same metadata."""
    await admin.create_topic("race", partitions=4)
    a, b = make_producer(), make_producer()
    await asyncio.gather(a.start(), b.start())

    async def run(p: Producer, tag: str) -> list[RecordMetadata]:
        return list(await asyncio.gather(*(p.send("race", {"from": tag, "i": i}, dedup_key=f"k{i}")
                                           for i in range(50))))

    ma, mb = await asyncio.gather(run(a, "a"), run(b, "b"))
    assert ma == mb
    assert await total(target_client, namespace, "race", 4) == 50


def _send_in_a_process(url: str, namespace: str) -> str:
    code = textwrap.dedent(f"""
        import asyncio
        from redcurrent import Producer

        async def main():
            async with Producer({url!r}, namespace={namespace!r}) as p:
                m = await p.send("proc", {{"pid": {0}}}, dedup_key="only-once")
                print(m.partition, m.id)

        asyncio.run(main())
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def test_a_dedup_key_holds_across_processes_and_restarts(
    admin: Admin, target: Target, target_client: AsyncClient, namespace: str
) -> None:
    await admin.create_topic("proc", partitions=4)
    first = await asyncio.to_thread(_send_in_a_process, target.url, namespace)
    second = await asyncio.to_thread(_send_in_a_process, target.url, namespace)  # a new process: a restart
    assert first == second and first
    assert await total(target_client, namespace, "proc", 4) == 1


def _race_in_a_process(url: str, namespace: str, tag: str) -> subprocess.Popen[str]:
    code = textwrap.dedent(f"""
        import asyncio
        from redcurrent import Producer

        async def main():
            async with Producer({url!r}, namespace={namespace!r}) as p:
                metas = await asyncio.gather(*(p.send("racep", {{"from": {tag!r}}}, dedup_key=f"k{{i}}")
                                               for i in range(100)))
                print(" ".join(f"{{m.partition}}/{{m.id}}" for m in metas))

        asyncio.run(main())
    """)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def test_two_processes_racing_on_the_same_dedup_keys_store_each_once(
    admin: Admin, target: Target, target_client: AsyncClient, namespace: str
) -> None:
    await admin.create_topic("racep", partitions=4)
    procs = [_race_in_a_process(target.url, namespace, tag) for tag in ("a", "b")]
    outs = []
    for proc in procs:
        out, err = await asyncio.to_thread(proc.communicate, timeout=60)
        assert proc.returncode == 0, err
        outs.append(out.split())
    assert outs[0] == outs[1] and len(outs[0]) == 100
    assert await total(target_client, namespace, "racep", 4) == 100


@pytest.mark.single_node
async def test_a_dedup_key_is_forgotten_after_the_window(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    await admin.create_topic("short", dedup_window=0.2)
    producer = make_producer()
    first = await producer.send("short", 1, dedup_key="d")
    key = Keys(namespace).dedup("short", 0, "d")
    async def forgotten() -> bool:
        return await target_client.exists(key) == 0

    await eventually(forgotten, timeout=10)
    later = await producer.send("short", 2, dedup_key="d")
    assert later != first and await target_client.xlen(Keys(namespace).stream("short", 0)) == 2


async def test_bad_dedup_keys_and_windows_are_refused(make_producer: Factory, admin: Admin) -> None:
    producer = make_producer()
    with pytest.raises(TypeError):
        await producer.send("bad", 1, dedup_key=b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        await producer.send("bad", 1, dedup_key="")
    with pytest.raises(ConfigError):
        await producer.send("bad", 1, dedup_key="x" * 1025)
    with pytest.raises(ConfigError):
        await admin.create_topic("bad", dedup_window=0)
    with pytest.raises(ConfigError):
        Producer(transactional_id="a:b")


@pytest.mark.single_node
async def test_an_ambiguous_send_with_dedup_keys_is_safe_to_retry(
    proxy: FaultProxy, r: redis.asyncio.Redis, namespace: str
) -> None:
    """Every reply lost until delivery_timeout: the error says the write may be stored;
    with a dedup key on every record it is retriable, and the retry returns the stored
    record instead of a second one."""
    async with Producer(proxy.url, namespace=namespace, metadata_max_age=60, request_timeout=0.5,
                        delivery_timeout=1.0) as producer:
        await producer.send("amb", "warm-up")
        proxy.drop_every_reply(b"EVALSHA")
        with pytest.raises(AmbiguousWriteError) as plain:
            await producer.send("amb", "plain")
        assert not plain.value.retriable and "may store them twice" in str(plain.value)
        with pytest.raises(AmbiguousWriteError) as keyed:
            await producer.send("amb", "keyed", dedup_key="d1")
        assert keyed.value.retriable and "is safe" in str(keyed.value)
        proxy.heal()
        meta = await producer.send("amb", "keyed", dedup_key="d1")
    stored = await r.xrange(Keys(namespace).stream("amb", 0))
    assert [as_fields(f)[b"v"] for _, f in stored] == [b'"warm-up"', b'"plain"', b'"keyed"']
    assert stored[2][0].decode() == meta.id


# ----------------------------------------------------------------------------- transactional_id


async def test_a_new_instance_fences_the_old_one(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    await admin.create_topic("fence", partitions=4)
    await admin.create_topic("other", partitions=2)
    old = make_producer(transactional_id="app-1")
    await old.send("fence", "before", partition=0)
    await old.send("fence", "before", partition=1)
    new = make_producer(transactional_id="app-1")
    await new.start()  # bumps the epoch, fences every partition the id wrote to
    # partition 0: the new instance never wrote there; it is fenced all the same
    with pytest.raises(FencedError, match="newer"):
        await old.send("fence", "zombie", partition=0)
    with pytest.raises(FencedError):  # from now on every send fails at once
        await old.send("other", "zombie", partition=1)
    assert await total(target_client, namespace, "fence", 4) == 2
    assert await total(target_client, namespace, "other", 2) == 0
    assert (await new.send("fence", "after", partition=0)).partition == 0
    assert await total(target_client, namespace, "fence", 4) == 3


async def test_a_new_instance_fences_the_old_one_on_a_co_located_topic(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    """A co-located topic's partition keys carry its anchor's tag: the new instance
    learns the anchor before raising the fence, so the fence is where produce looks."""
    await admin.create_topic("base", partitions=2)
    await admin.create_topic("co", partitions=2, colocate_with="base")
    old = make_producer(transactional_id="app-co")
    await old.send("co", "before", partition=0)
    await make_producer(transactional_id="app-co").start()
    with pytest.raises(FencedError):
        await old.send("co", "zombie", partition=0)
    assert [m.value for m in await admin.read_partition("co", 0)] == ["before"]


async def test_a_fenced_instance_cannot_write_a_partition_it_never_used(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    """The old instance's first write to a partition registers it first: refused once a
    newer instance started, so nothing escapes the fence."""
    await admin.create_topic("fresh", partitions=3)
    old = make_producer(transactional_id="app-2")
    await old.send("fresh", "x", partition=0)
    await make_producer(transactional_id="app-2").start()
    with pytest.raises(FencedError):
        await old.send("fresh", "zombie", partition=2)
    with pytest.raises(FencedError):
        async with old.transaction() as tx:
            await tx.send("fresh", "zombie", partition=1)
    assert await total(target_client, namespace, "fresh", 3) == 1


async def test_a_batch_retried_by_a_new_instance_after_a_crash_is_stored_once(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    """The first instance's script ran (the records are stored) and the process died
    before it learned so; a new instance with the same transactional_id sends the same
    records: they are stored once, and it gets the stored ids."""
    await admin.create_topic("crash", partitions=3)
    records = [Record({"n": i}, key=f"k{i % 6}") for i in range(30)]
    crashed = make_producer(transactional_id="app-3")
    stored = await crashed.send_batch("crash", records)  # its reply "lost": the caller never saw it
    assert await total(target_client, namespace, "crash", 3) == 30
    restarted = make_producer(transactional_id="app-3")
    retried = await restarted.send_batch("crash", records)
    assert retried == stored
    assert await total(target_client, namespace, "crash", 3) == 30
    # its next batches are new ones, written as usual (the same records again included)
    await restarted.send_batch("crash", [Record({"n": 99}, key="k0")])
    await restarted.send_batch("crash", records)
    assert await total(target_client, namespace, "crash", 3) == 61


@pytest.mark.single_node
async def test_a_batch_whose_replies_were_lost_is_stored_once_by_the_next_instance(
    proxy: FaultProxy, redis_url: str, r: redis.asyncio.Redis, namespace: str
) -> None:
    """Real lost replies: every produce reply to the first instance is dropped (the
    script ran), it gives up ambiguous; the next instance's resend is stored once."""
    async with Admin(redis_url, namespace=namespace) as admin:
        await admin.create_topic("lost", partitions=2)
    records = [Record({"n": i}, key=f"k{i}") for i in range(10)]
    first = Producer(proxy.url, namespace=namespace, transactional_id="app-4", request_timeout=0.5,
                     delivery_timeout=1.0)
    try:
        await first.send_batch("lost", [Record("warm-up", partition=p) for p in range(2)])  # registered
        proxy.drop_every_reply(b"EVALSHA")
        with pytest.raises(AmbiguousWriteError):
            await first.send_batch("lost", records)
    finally:
        proxy.heal()
        await first.close()
    assert await total(r, namespace, "lost", 2) == 12
    async with Producer(redis_url, namespace=namespace, transactional_id="app-4") as second:
        metas = await second.send_batch("lost", records)
    assert await total(r, namespace, "lost", 2) == 12
    keys = Keys(namespace)
    for p in range(2):
        ids = [eid.decode() for eid, _ in await r.xrange(keys.stream("lost", p))][1:]
        assert ids == [m.id for m in metas if m.partition == p]


# ----------------------------------------------------------------------------- transactions


@pytest.mark.single_node
async def test_a_transaction_spans_partitions_and_topics_on_one_server(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    await admin.create_topic("ta", partitions=4)
    await admin.create_topic("tb", partitions=2)
    producer = make_producer()
    async with producer.transaction() as tx:
        futs = [await tx.send("ta", {"i": i}, key=f"k{i}") for i in range(20)]
        futs += await tx.send_batch("tb", [Record({"j": j}, partition=j % 2) for j in range(6)])
        assert not any(f.done() for f in futs)  # nothing until the commit
        assert await total(target_client, namespace, "ta", 4) == 0
    metas = [f.result() for f in futs]
    assert await total(target_client, namespace, "ta", 4) == 20
    assert await total(target_client, namespace, "tb", 2) == 6
    keys = Keys(namespace)
    for m in metas:
        [(eid, _)] = await target_client.xrange(keys.stream(m.topic, m.partition), m.id, m.id)
        assert eid.decode() == m.id


async def test_an_exception_in_the_block_aborts_and_writes_nothing(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    await admin.create_topic("abort", partitions=2)
    producer = make_producer()
    with pytest.raises(KeyError, match="boom"):
        async with producer.transaction() as tx:
            futs = [await tx.send("abort", i, partition=0) for i in range(10)]
            raise KeyError("boom")
    assert all(f.cancelled() for f in futs)
    await asyncio.sleep(0.05)
    assert await total(target_client, namespace, "abort", 2) == 0  # a reader finds nothing
    with pytest.raises(TransactionError):
        await tx.send("abort", 1)  # the transaction is over
    async with producer.transaction() as tx2:  # the producer works on
        fut = await tx2.send("abort", "ok", partition=0)
    assert (await fut).partition == 0 and await total(target_client, namespace, "abort", 2) == 1


async def test_a_transaction_in_one_partition_works_on_both_targets(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    """Dedup keys inside a transaction: a record whose key was seen is not written and
    resolves to the first copy; the rest of the transaction is written."""
    await admin.create_topic("one", partitions=4)
    producer = make_producer(transactional_id="app-5")
    before = await producer.send("one", "first", partition=2, dedup_key="seen")
    async with producer.transaction() as tx:
        futs = await tx.send_batch("one", [Record(i, partition=2) for i in range(5)])
        dup = await tx.send("one", "again", partition=2, dedup_key="seen")
    assert await dup == before
    assert [f.result().partition for f in futs] == [2] * 5
    assert await total(target_client, namespace, "one", 4) == 6


@pytest.mark.cluster
async def test_a_cluster_transaction_across_slots_raises_and_writes_nothing(
    cluster: Cluster, namespace: str
) -> None:
    async with Admin(cluster.url, namespace=namespace) as admin:
        await admin.create_topic("spread", partitions=4)
    async with Producer(cluster.url, namespace=namespace) as producer:
        await producer.send("spread", "warm-up", partition=0)
        with pytest.raises(TransactionError, match=r"slot \d+: spread\[\d\]") as err:
            async with producer.transaction() as tx:
                futs = [await tx.send("spread", i, partition=i) for i in range(4)]
        assert "nothing was written" in str(err.value)
        assert all(f.done() and isinstance(f.exception(), TransactionError) for f in futs)
    client = redis.asyncio.RedisCluster.from_url(cluster.url)
    try:
        assert await total(client, namespace, "spread", 4) == 1
    finally:
        await client.aclose()


@pytest.mark.single_node
async def test_a_reader_never_sees_part_of_a_commit(
    make_producer: Factory, admin: Admin, r: redis.asyncio.Redis, namespace: str
) -> None:
    """A reader polls the four partitions' lengths (atomically, MULTI/EXEC) in a tight
    loop while commits of 100 records across 4 partitions run: every total it sees is a
    multiple of 100, never 1..99 past one."""
    await admin.create_topic("atomic", partitions=4)
    keys = Keys(namespace)
    producer = make_producer()
    await producer.start()
    seen: set[int] = set()
    stop = asyncio.Event()

    async def reader() -> None:
        while not stop.is_set():
            pipe = r.pipeline(transaction=True)
            for p in range(4):
                pipe.xlen(keys.stream("atomic", p))
            seen.add(sum(await pipe.execute()))

    task = asyncio.create_task(reader())
    for _ in range(15):
        async with producer.transaction() as tx:
            await tx.send_batch("atomic", [Record({"i": i}, partition=i % 4) for i in range(100)])
        await asyncio.sleep(0)
    stop.set()
    await task
    assert len(seen) > 3  # the reader really saw commits land
    assert all(n % 100 == 0 for n in seen), sorted(seen)
    assert sum([await r.xlen(keys.stream("atomic", p)) for p in range(4)]) == 1500


async def test_a_reader_never_sees_part_of_a_commit_across_co_located_topics(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    """The same proof where it holds on a cluster: partition 0 of four co-located topics
    (one slot), 100 records a commit; the reader sums the four lengths in one script
    (atomic, like the MULTI above) and never sees a partial commit."""
    names = ["a0", "a1", "a2", "a3"]
    await admin.create_topic("a0", partitions=2)
    for name in names[1:]:
        await admin.create_topic(name, partitions=2, colocate_with="a0")
    keys = Keys(namespace)
    for name in names[1:]:
        keys.learn(name, "a0")
    streams = [keys.stream(name, 0) for name in names]
    count = "local n = 0 for i = 1, #KEYS do n = n + redis.call('XLEN', KEYS[i]) end return n"
    producer = make_producer()
    await producer.start()
    seen: set[int] = set()
    stop = asyncio.Event()

    async def reader() -> None:
        while not stop.is_set():
            seen.add(int(await target_client.eval(count, len(streams), *streams)))  # type: ignore[misc]

    task = asyncio.create_task(reader())
    for _ in range(15):
        async with producer.transaction() as tx:
            for j, name in enumerate(names):
                await tx.send_batch(name, [Record({"i": i}, partition=0) for i in range(25 * j, 25 * j + 25)])
        await asyncio.sleep(0)
    stop.set()
    await task
    assert len(seen) > 3  # the reader really saw commits land
    assert all(n % 100 == 0 for n in seen), sorted(seen)
    assert int(await target_client.eval(count, len(streams), *streams)) == 1500  # type: ignore[misc]


@pytest.mark.single_node
async def test_a_commit_to_a_deleted_topic_writes_nothing_anywhere(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    await admin.create_topic("keep", partitions=2)
    await admin.create_topic("gone", partitions=2)
    producer = make_producer()
    with pytest.raises(TopicError, match="nothing of the transaction was written"):
        async with producer.transaction() as tx:
            await tx.send("keep", "a", partition=0)
            await tx.send("gone", "b", partition=1)
            await admin.delete_topic("gone")
    assert await total(target_client, namespace, "keep", 2) == 0


@pytest.mark.single_node
async def test_a_commit_whose_reply_was_lost_is_retried_and_stored_once(
    proxy: FaultProxy, redis_url: str, r: redis.asyncio.Redis, namespace: str
) -> None:
    async with Admin(redis_url, namespace=namespace) as admin:
        await admin.create_topic("txr", partitions=3)
    async with Producer(proxy.url, namespace=namespace, metadata_max_age=60, request_timeout=0.5,
                        delivery_timeout=1.5) as producer:
        async with producer.transaction() as tx:  # metadata read, script loaded
            await tx.send("txr", "warm-up", partition=0)
        proxy.drop_next_reply(b"EVALSHA")
        async with producer.transaction() as tx:
            futs = await tx.send_batch("txr", [Record(i, partition=i % 3) for i in range(9)])
        assert proxy.dropped_replies == 1  # the first commit's reply really was lost
        metas = [f.result() for f in futs]
        proxy.drop_every_reply(b"EVALSHA")
        with pytest.raises(AmbiguousWriteError, match="all of it or none"):
            async with producer.transaction() as tx:
                lost = await tx.send("txr", "maybe", partition=1)
        assert isinstance(lost.exception(), AmbiguousWriteError)
        proxy.heal()
    keys = Keys(namespace)
    assert await total(r, namespace, "txr", 3) == 11  # warm-up, 9 once, and the ambiguous one (stored)
    for p in range(3):
        ids = [eid.decode() for eid, _ in await r.xrange(keys.stream("txr", p))]
        mine = [m.id for m in metas if m.partition == p]
        assert set(mine) <= set(ids) and len(ids) == len(mine) + (p in (0, 1))  # + warm-up / ambiguous one


@pytest.mark.single_node
def test_the_blocking_producer_takes_dedup_keys(redis_url: str, namespace: str) -> None:
    from redcurrent.sync import Producer as SyncProducer

    with SyncProducer(redis_url, namespace=namespace, transactional_id="sync-1") as producer:
        first = producer.send("sync", {"n": 1}, dedup_key="once")
        assert producer.send("sync", {"n": 2}, dedup_key="once") == first
        assert producer.send_batch("sync", [Record(3, dedup_key="once")]) == [first]
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.xlen(Keys(namespace).stream("sync", first.partition)) == 1
    finally:
        client.close()


@pytest.mark.single_node
def test_the_blocking_producer_commits_and_aborts_transactions(redis_url: str, namespace: str) -> None:
    from redcurrent.sync import Producer as SyncProducer

    with SyncProducer(redis_url, namespace=namespace) as producer:
        with producer.transaction() as tx:
            one = tx.send("stx", {"n": 1}, partition=0)
            many = tx.send_batch("stx", [Record(i, partition=0) for i in range(3)])
            assert not one.done()
        assert one.result(5).partition == 0 and len({f.result(5).id for f in many}) == 3
        with pytest.raises(RuntimeError, match="abort"), producer.transaction() as tx:
            dropped = tx.send("stx", "never", partition=0)
            raise RuntimeError("abort")
        assert dropped.cancelled()
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.xlen(Keys(namespace).stream("stx", 0)) == 4
    finally:
        client.close()


@pytest.mark.single_node
async def test_a_fenced_instance_stays_fenced_on_a_recreated_topic(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    """delete_topic removes the partitions' fences; the old instance registers a recreated
    topic's partitions again before writing, and that is refused."""
    await admin.create_topic("again", partitions=2)
    old = make_producer(transactional_id="app-6", metadata_max_age=0.05)
    await old.send("again", "x", partition=0)
    await make_producer(transactional_id="app-6").start()
    await admin.delete_topic("again")
    await admin.create_topic("again", partitions=2)
    await asyncio.sleep(0.3)  # the old instance's metadata refresh sees the new topic
    with pytest.raises(FencedError):
        await old.send("again", "zombie", partition=0)
    assert await total(target_client, namespace, "again", 2) == 0


@pytest.mark.single_node
async def test_a_commit_routed_before_a_key_order_growth_writes_nothing(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    """The route check is part of the commit: records routed with the partition count
    before a growth with preserve_key_order are refused, all of them, and the next
    transaction routes with the new count."""
    from redcurrent.errors import StaleRouteError

    await admin.create_topic("grow", partitions=2)
    await admin.create_topic("side", partitions=1)
    producer = make_producer()
    with pytest.raises(StaleRouteError, match="nothing of the transaction was written") as err:
        async with producer.transaction() as tx:
            await tx.send("side", "with it", partition=0)
            await tx.send_batch("grow", [Record(i, key=f"k{i}") for i in range(10)])
            await admin.alter_partitions("grow", 4, preserve_key_order=True)
    assert err.value.retriable
    assert await total(target_client, namespace, "grow", 4) == 0
    assert await total(target_client, namespace, "side", 1) == 0

    async def committed() -> bool:
        async with producer.transaction() as tx:
            await tx.send_batch("grow", [Record(i, key=f"k{i}") for i in range(10)])
        return True

    await eventually(committed, timeout=10)
    assert await total(target_client, namespace, "grow", 4) == 10


@pytest.mark.single_node
async def test_altering_the_dedup_window_reaches_producers(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    await admin.create_topic("win", dedup_window=60.0)
    producer = make_producer(metadata_max_age=0.05)
    first = await producer.send("win", 1, dedup_key="a")
    info = await admin.alter_topic_config("win", dedup_window=5.0)
    assert info.config.dedup_window_ms == 5_000
    keys = Keys(namespace)

    probes = iter(range(1_000_000))

    async def short_window() -> bool:
        probe = f"probe-{next(probes)}"  # a new key each time: written with the window in use
        await producer.send("win", 2, dedup_key=probe)
        return 0 < await target_client.pttl(keys.dedup("win", 0, probe)) <= 5_000

    await eventually(short_window, timeout=10)  # the producer uses the new window
    assert 5_000 < await target_client.pttl(keys.dedup("win", 0, "a")) <= 60_000  # stored keys keep theirs
    assert await producer.send("win", 3, dedup_key="a") == first
    assert (await admin.alter_topic_config("win", dedup_window=None)).config.dedup_window_ms == 600_000


async def test_a_transaction_run_again_by_a_new_instance_is_stored_once(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    """A crashed instance's last commit, run again (same records) as the new instance's
    first transaction on those partitions: answered with the stored ids."""
    await admin.create_topic("txagain", partitions=2)
    records = [Record({"n": i}, partition=1) for i in range(7)]
    crashed = make_producer(transactional_id="app-7")
    async with crashed.transaction() as tx:
        first = await tx.send_batch("txagain", records)
    restarted = make_producer(transactional_id="app-7")
    async with restarted.transaction() as tx:
        again = await tx.send_batch("txagain", records)
    assert [f.result() for f in again] == [f.result() for f in first]
    assert await total(target_client, namespace, "txagain", 2) == 7
    async with restarted.transaction() as tx:  # and then it commits new ones as usual
        await tx.send_batch("txagain", records)
    assert await total(target_client, namespace, "txagain", 2) == 14
