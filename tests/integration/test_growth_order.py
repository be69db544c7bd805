"""Per-key order across partition growth: ``alter_partitions(..., preserve_key_order=True)``.

The growth is a drain barrier (docs/architecture.md §10): no group handles an entry
written after it, in any partition, before it has handled every entry written before
it, in every partition; a producer still routing with the old partition count is
refused and re-routes. Runs on one node and on the cluster (``target``).
"""

from __future__ import annotations

import asyncio
import time

import mmh3
from support.consuming import (
    Seen,
    create_topic,
    make_consumer,
    produce,
    settled,
    start_processing,
    stop_all,
)
from support.entries import as_fields
from support.eventually import eventually
from support.servers import AsyncClient, Target

from redcurrent import Admin, Producer
from redcurrent.keys import Keys
from redcurrent.offsets import id_key
from redcurrent.testing import Sent, check_history

TOPIC = "grow"
KEYS = [f"k{i}" for i in range(100)]


def _moves(key: str, old: int, new: int) -> bool:
    h = mmh3.hash(key.encode(), 0, False)
    return h % old != h % new


async def _barrier_ids(client: AsyncClient, ns: str, partitions: int) -> dict[int, str]:
    keys = Keys(ns)
    out = {}
    for p in range(partitions):
        raw = await client.hget(keys.barrier(TOPIC, p), "id")
        assert raw is not None, f"partition {p} has no barrier"
        out[p] = raw.decode()
    return out


async def test_growth_with_preserve_key_order_keeps_every_keys_order_across_the_growth(
    target: Target, target_client: AsyncClient, namespace: str
) -> None:
    """Grow 8 -> 12 under load with 3 consumers: 0 per-key order violations keyed by the
    key alone (not (key, partition)), nothing lost, and every entry written after the
    growth handled after every entry written before it was handled."""
    url, ns = target.url, namespace
    await create_topic(url, ns, TOPIC, 8)
    seen = Seen()
    consumers = [make_consumer(url, ns, TOPIC, member_id=f"c{i}", start="earliest") for i in range(3)]
    tasks = [start_processing(c, seen.handler(c.member_id, work=0.0005)) for c in consumers]
    sent: list[Sent] = []
    try:
        await eventually(lambda: settled(target_client, ns, TOPIC, consumers, 8), 10)
        async with Producer(url, namespace=ns) as producer:

            async def load(rounds: int, first: int) -> None:
                for seq in range(first, first + rounds):
                    sent.extend(await produce(producer, TOPIC, KEYS, 1, first_seq=seq))
                    await asyncio.sleep(0.005)

            loading = asyncio.create_task(load(60, 0))
            await eventually(lambda: len(sent) >= 20 * len(KEYS), 20)
            async with Admin(url, namespace=ns) as admin:
                await admin.alter_partitions(TOPIC, 12, preserve_key_order=True)
            await loading
            barrier = await _barrier_ids(target_client, ns, 12)
        await eventually(lambda: len(seen.handled()) >= len(sent), 30, message="everything handled")
        await eventually(lambda: settled(target_client, ns, TOPIC, consumers, 12), 10)
    finally:
        await stop_all(*zip(consumers, tasks, strict=True))
    report = check_history(sent, seen.events)  # keyed by the key alone
    assert not report.lost and not report.violations, report.summary()
    moved = {s.key for s in sent if s.seq == 59 and _moves(str(s.key), 8, 12)}
    assert len(moved) > 50  # most keys changed partition: the check above means something
    assert any(id_key(s.entry_id) > id_key(barrier[s.partition]) for s in sent if s.partition is not None
               and s.partition < 8), "entries were written to old partitions after the growth"
    # The barrier itself: the first entry written after the growth was handled only after
    # the last one written before it had been handled (its handler returned).
    before = {s.entry_id for s in sent if s.partition is not None
              and id_key(s.entry_id) <= id_key(barrier[s.partition])}
    last_pre_acked = max(e.t_ns for e in seen.events if e.event == "acked" and e.entry_id in before)
    first_post = min(e.t_ns for e in seen.events if e.event == "handled" and e.entry_id not in before)
    assert first_post > last_pre_acked


async def test_a_producer_routing_with_the_old_count_is_refused_and_re_routes(
    target: Target, target_client: AsyncClient, namespace: str
) -> None:
    """The produce script refuses a batch routed with the version before the growth
    (STALE_ROUTE, nothing written); the producer reads the topic and routes it with the
    new count: nothing lands behind the barrier of the partition it first chose."""
    url, ns = target.url, namespace
    await create_topic(url, ns, TOPIC, 8)
    key = next(k for k in KEYS if _moves(k, 8, 12))
    h = mmh3.hash(key.encode(), 0, False)
    async with Producer(url, namespace=ns, metadata_max_age=60) as producer:
        await producer.send(TOPIC, {"warm": 1}, key=key)  # it knows 8 partitions now
        async with Admin(url, namespace=ns) as admin:
            await admin.alter_partitions(TOPIC, 12, preserve_key_order=True)
        assert await producer.partitions_for(TOPIC) == 8  # still routing with the old count
        meta = await producer.send(TOPIC, {"seq": 1}, key=key)
        pinned = await producer.send(TOPIC, {"seq": 2}, partition=h % 8)  # the caller's choice stands
        assert producer.stats()["rerouted"] == 1
        assert await producer.partitions_for(TOPIC) == 12
    assert meta.partition == h % 12
    assert pinned.partition == h % 8
    barrier = await _barrier_ids(target_client, ns, 12)
    stream = Keys(ns).stream(TOPIC, h % 8)
    behind = await target_client.xrange(stream, f"({barrier[h % 8]}", "+")
    assert [e[0].decode() for e in behind] == [pinned.id]  # only the record routed after the growth


async def test_without_preserve_key_order_a_stale_producer_writes_where_it_routed(
    target: Target, namespace: str
) -> None:
    """preserve_key_order=False (the default) is growth as before: no barrier, no refusal."""
    url, ns = target.url, namespace
    await create_topic(url, ns, TOPIC, 8)
    key = next(k for k in KEYS if _moves(k, 8, 12))
    h = mmh3.hash(key.encode(), 0, False)
    async with Producer(url, namespace=ns, metadata_max_age=60) as producer:
        await producer.send(TOPIC, {"warm": 1}, key=key)
        async with Admin(url, namespace=ns) as admin:
            await admin.alter_partitions(TOPIC, 12)
        meta = await producer.send(TOPIC, {"seq": 1}, key=key)
        assert producer.stats()["rerouted"] == 0
    assert meta.partition == h % 8


async def test_a_group_that_reaches_its_barrier_waits_for_the_slowest_partition(
    target: Target, target_client: AsyncClient, namespace: str
) -> None:
    """One partition's backlog holds every partition of the group at its barrier; a
    group created after the growth (start="earliest") drains the old entries first too."""
    url, ns = target.url, namespace
    await create_topic(url, ns, TOPIC, 2)
    async with Producer(url, namespace=ns) as producer:
        old = [await producer.send(TOPIC, {"seq": i}, partition=i % 2) for i in range(20)]
        async with Admin(url, namespace=ns) as admin:
            await admin.alter_partitions(TOPIC, 4, preserve_key_order=True)
        await producer.partitions_for(TOPIC)
        new = [await producer.send(TOPIC, {"seq": 20 + i}, partition=i % 4) for i in range(8)]
    seen = Seen()
    consumer = make_consumer(url, ns, TOPIC, group="late", start="earliest")
    task = start_processing(consumer, seen.handler("c", work=0.01))
    started = time.monotonic()
    try:
        await eventually(lambda: len(seen.handled()) >= 28, 15, message="everything handled")
    finally:
        await stop_all((consumer, task))
    order = {m.id: i for i, m in enumerate(seen.handled())}
    assert max(order[m.id] for m in old) < min(order[m.id] for m in new), time.monotonic() - started
    assert await target_client.exists(*(Keys(ns).gate(TOPIC, p, "late") for p in range(4))) == 0


async def test_concurrent_sends_keep_each_keys_order_through_the_re_routing(
    target: Target, target_client: AsyncClient, namespace: str
) -> None:
    """Sends in flight, queued and new when the topic grows: refused batches and those
    waiting behind them are routed again ahead of anything routed since, so each key's
    records are stored in send order: its records before the barrier (old partition),
    then those after it (new partition), seqs increasing throughout."""
    url, ns = target.url, namespace
    await create_topic(url, ns, TOPIC, 8)
    keys = [k for k in KEYS if _moves(k, 8, 12)][:10]
    async with Producer(url, namespace=ns, metadata_max_age=60, linger=0.002) as producer:
        await producer.send(TOPIC, {"warm": 1}, key=keys[0])

        def burst(first: int) -> list[asyncio.Task[object]]:
            return [asyncio.ensure_future(producer.send(TOPIC, {"seq": s}, key=k))
                    for s in range(first, first + 30) for k in keys]

        async with Admin(url, namespace=ns) as admin:
            await admin.alter_partitions(TOPIC, 12, preserve_key_order=True)
        sends = burst(0)  # routed with 8 partitions: the first request goes out and is refused
        await asyncio.sleep(0)
        sends += burst(30)  # routed with 8 too, waiting behind the batches in flight
        await eventually(lambda: producer.stats()["rerouted"] >= 1, 5, interval=0.0005)
        sends += burst(60)  # routed with 12, while the waiting ones are not sent yet
        await asyncio.gather(*sends)
        assert producer.stats()["rerouted"] >= 1
    barrier = await _barrier_ids(target_client, ns, 12)
    stored: dict[str, list[tuple[bool, tuple[int, int], int]]] = {k: [] for k in keys}
    for p in range(12):
        for eid, fields in await target_client.xrange(Keys(ns).stream(TOPIC, p)):
            fields = as_fields(fields)
            key, value = fields[b"k"].decode(), fields[b"v"]
            if key in stored and b"seq" in value:
                eid = eid.decode()
                post = id_key(eid) > id_key(barrier[p])
                stored[key].append((post, id_key(eid), int(value.split(b":")[1].rstrip(b"}"))))
    for key, entries in stored.items():
        seqs = [seq for _, _, seq in sorted(entries)]
        assert seqs == list(range(90)), (key, seqs)
