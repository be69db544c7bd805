"""The Producer against a real single node and a real 3-master cluster.

Every claim is checked in Redis itself: entries are read back with XRANGE from the
partition stream (key from ``Keys(namespace).stream``), round trips are counted with
``INFO commandstats``, and lost replies are made real with a TCP proxy
(``support.proxy.FaultProxy``) that closes the connection once the server has answered.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
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
    InvalidPartitionsError,
    MessageTooLargeError,
    Producer,
    ProducerClosedError,
    Record,
    RecordMetadata,
    RedcurrentConnectionError,
    SerializationError,
    UnknownTopicError,
    murmur3_32,
    scripts,
)
from redcurrent.keys import Keys
from redcurrent.serde import RECORD_HEADER

Factory = Callable[..., Producer]


@pytest_asyncio.fixture
async def make_producer(target: Target, namespace: str) -> AsyncIterator[Factory]:
    """Producers on this target and namespace; every one is closed after the test."""
    made: list[Producer] = []

    def make(**options: Any) -> Producer:
        options.setdefault("namespace", namespace)
        url = options.pop("url", None)
        producer = Producer(url or (None if "redis" in options else target.url), **options)
        made.append(producer)
        return producer

    yield make
    for producer in made:
        await producer.close()


async def entries(
    client: AsyncClient, namespace: str, topic: str, partition: int
) -> list[tuple[str, dict[bytes, bytes]]]:
    raw = await client.xrange(Keys(namespace).stream(topic, partition))
    return [(eid.decode(), fields) for eid, fields in raw]


async def lengths(client: AsyncClient, namespace: str, topic: str, partitions: int) -> list[int]:
    keys = Keys(namespace)
    return [await client.xlen(keys.stream(topic, p)) for p in range(partitions)]


def node_urls(target: Target, request: pytest.FixtureRequest) -> list[str]:
    if not target.is_cluster:
        return [target.url]
    started: Cluster = request.getfixturevalue("cluster")
    return [node.url for node in started.nodes]


def evalsha_calls(urls: list[str]) -> int:
    """EVALSHA commands the server(s) executed so far (INFO commandstats)."""
    total = 0
    for url in urls:
        with redis.Redis.from_url(url) as client:
            total += int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
    return total


def frame(values: list[bytes]) -> bytes:
    """Keyless raw-bytes records framed for the produce script (see lua/produce.lua)."""
    return b"".join(RECORD_HEADER.pack(0, 1, 0, len(v), 0, 0) + v for v in values)


def key_for_partition(partition: int, partitions: int, prefix: str = "k") -> str:
    """A key that murmur3 maps to ``partition``."""
    for i in range(100_000):
        key = f"{prefix}{i}"
        if murmur3_32(key.encode()) % partitions == partition:
            return key
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- send


async def test_send_returns_metadata_of_the_stored_entry(
    make_producer: Factory, target_client: AsyncClient, namespace: str
) -> None:
    producer = make_producer()
    before = int(time.time() * 1000)
    meta = await producer.send("orders", {"id": 42}, key="customer-7", headers={"src": "web"})
    after = int(time.time() * 1000)
    assert isinstance(meta, RecordMetadata)
    assert meta.topic == "orders" and meta.partition == 0
    # the timestamp is the entry id's time: Redis's clock when it appended the entry
    assert meta.timestamp == int(meta.id.split("-")[0])
    assert before - 1 <= meta.timestamp <= after + 1
    stored = await entries(target_client, namespace, "orders", 0)
    # format 1 (serde.py): f = version, codec (j = JSON), key type (s = str)
    assert stored == [
        (meta.id, {b"f": b"1js", b"v": b'{"id":42}', b"k": b"customer-7", b"h": b'{"src":"web"}'})
    ]


async def test_same_key_same_partition_murmur3_mod_n(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    await admin.create_topic("keyed", partitions=8)
    producer = make_producer()
    keys = [f"user-{i}" for i in range(40)] + ["héllo", "🙂"]
    first = await asyncio.gather(*(producer.send("keyed", i, key=k) for i, k in enumerate(keys)))
    again = await asyncio.gather(*(producer.send("keyed", i, key=k) for i, k in enumerate(keys)))
    for k, m1, m2 in zip(keys, first, again, strict=True):
        assert m1.partition == m2.partition == murmur3_32(k.encode()) % 8
    # bytes keys hash the same bytes
    meta = await producer.send("keyed", 0, key=b"user-3")
    assert meta.partition == murmur3_32(b"user-3") % 8
    used = {m.partition for m in first}
    assert len(used) >= 6  # keys spread
    for m in first:  # really there, with its key
        [(_eid, fields)] = await target_client.xrange(
            Keys(namespace).stream("keyed", m.partition), m.id, m.id
        )
        fields = as_fields(fields)
        assert fields[b"k"] == keys[orjson.loads(fields[b"v"])].encode()


async def test_explicit_partition_wins_over_the_key(make_producer: Factory, admin: Admin) -> None:
    await admin.create_topic("exp", partitions=4)
    producer = make_producer()
    key = key_for_partition(1, 4)
    assert (await producer.send("exp", "x", key=key, partition=3)).partition == 3
    assert (await producer.send("exp", "x", partition=0)).partition == 0
    [m] = await producer.send_batch("exp", [Record("x", key=key, partition=2)])
    assert m.partition == 2


@pytest.mark.parametrize("bad", [4, 5, -1, 1000])
async def test_out_of_range_partition_fails_before_anything_is_written(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str, bad: int
) -> None:
    await admin.create_topic("range", partitions=4)
    producer = make_producer()
    with pytest.raises(
        InvalidPartitionsError,
        match=r"partition .* is out of range: (topic 'range' has 4 partitions \(0\.\.3\)|partitions are numbered from 0)",
    ):
        await producer.send("range", "x", partition=bad)
    with pytest.raises(InvalidPartitionsError):
        await producer.send_batch(
            "range", [Record("ok", partition=0), Record("bad", partition=bad)]
        )
    await producer.flush()
    assert await lengths(target_client, namespace, "range", 4) == [0, 0, 0, 0]


async def test_partition_of_wrong_type_is_type_error(make_producer: Factory, admin: Admin) -> None:
    await admin.create_topic("pt", partitions=2)
    producer = make_producer()
    for bad in (True, "1", 1.0):
        with pytest.raises(TypeError, match="partition must be an int"):
            await producer.send("pt", "x", partition=bad)  # type: ignore[arg-type]


async def test_keyless_messages_are_sticky_not_spread_per_message(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    await admin.create_topic("sticky", partitions=8)
    producer = make_producer()
    burst = await asyncio.gather(*(producer.send("sticky", {"i": i}) for i in range(200)))
    assert len({m.partition for m in burst}) == 1  # one batch fills one partition
    assert sum(await lengths(target_client, namespace, "sticky", 8)) == 200


async def test_keyless_messages_move_on_after_a_full_batch(
    make_producer: Factory, admin: Admin
) -> None:
    await admin.create_topic("sticky", partitions=8)
    producer = make_producer(batch_size=10)
    parts = [(await producer.send("sticky", i)).partition for i in range(60)]
    runs = [parts[i : i + 10] for i in range(0, 60, 10)]
    assert all(len(set(run)) == 1 for run in runs)  # each batch sticks to one partition
    assert all(a[0] != b[0] for a, b in itertools.pairwise(runs))  # then moves to another
    assert 2 <= len(set(parts)) <= 6


# ----------------------------------------------------------------------------- send_batch


async def test_send_batch_returns_metadata_in_input_order(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    await admin.create_topic("batch", partitions=4)
    producer = make_producer(batch_size=7)  # several script batches per partition
    records: list[Any] = []
    for i in range(100):
        if i % 3 == 0:
            records.append({"i": i})  # a bare value
        elif i % 3 == 1:
            records.append(Record({"i": i}, key=f"key-{i}", headers={"n": str(i)}))
        else:
            records.append(Record({"i": i}, partition=i % 4))
    metas = await producer.send_batch("batch", records)
    assert len(metas) == 100
    stream = Keys(namespace).stream
    for i, (rec, meta) in enumerate(zip(records, metas, strict=True)):
        assert meta.topic == "batch"
        if isinstance(rec, Record) and rec.key is not None:
            assert meta.partition == murmur3_32(rec.key.encode()) % 4  # type: ignore[union-attr]
        if isinstance(rec, Record) and rec.partition is not None:
            assert meta.partition == rec.partition
        [(_, fields)] = await target_client.xrange(
            stream("batch", meta.partition), meta.id, meta.id
        )
        assert orjson.loads(as_fields(fields)[b"v"]) == {"i": i}
    # per partition, input order is stream order
    for p in range(4):
        ids = [m.id for m in metas if m.partition == p]
        assert ids == [eid for eid, _ in await entries(target_client, namespace, "batch", p)]


async def test_send_batch_of_nothing(make_producer: Factory) -> None:
    assert await make_producer().send_batch("empty", []) == []


async def test_send_batch_validates_every_record_before_writing(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    await admin.create_topic("atomic-ish", partitions=2)
    producer = make_producer()
    for bad in (Record(object()), Record("x", key=3), Record("x", headers={"a": 1})):  # type: ignore[arg-type, dict-item]
        with pytest.raises((SerializationError, TypeError)):
            await producer.send_batch("atomic-ish", ["fine", Record("fine", key="k"), bad, "never"])
    await producer.flush()
    assert await lengths(target_client, namespace, "atomic-ish", 2) == [0, 0]


# ----------------------------------------------------------------------------- coalescing


async def test_thousand_concurrent_sends_cost_few_script_calls(
    make_producer: Factory,
    admin: Admin,
    target: Target,
    request: pytest.FixtureRequest,
    target_client: AsyncClient,
    namespace: str,
) -> None:
    await admin.create_topic("busy", partitions=4)
    producer = make_producer()
    assert await producer.partitions_for("busy") == 4  # metadata known: measure the sends only
    urls = node_urls(target, request)
    before = evalsha_calls(urls)

    async def one(i: int) -> RecordMetadata:
        return await producer.send("busy", {"i": i}, key=f"key-{i % 1000}")

    tasks = [asyncio.create_task(one(i)) for i in range(1000)]
    metas = await asyncio.gather(*tasks)
    calls = evalsha_calls(urls) - before
    assert calls < 50, f"1000 sends took {calls} EVALSHA calls"
    assert len({(m.partition, m.id) for m in metas}) == 1000  # ids are unique per partition
    assert sum(await lengths(target_client, namespace, "busy", 4)) == 1000


async def test_send_batch_over_partitions_is_one_script_call_on_a_single_server(
    make_producer: Factory,
    admin: Admin,
    target: Target,
    request: pytest.FixtureRequest,
    target_client: AsyncClient,
    namespace: str,
) -> None:
    """A single server takes the batches of all partitions in one script call; a cluster
    takes one call per partition (a script may only touch one slot)."""
    await admin.create_topic("wide", partitions=8)
    producer = make_producer()
    await producer.send("wide", {"n": -1}, partition=0)  # metadata read, script loaded
    urls = node_urls(target, request)
    before = evalsha_calls(urls)
    records = [Record({"n": i}, key=f"key-{i}") for i in range(500)]
    metas = await producer.send_batch("wide", records)
    calls = evalsha_calls(urls) - before
    assert calls == (8 if target.is_cluster else 1)
    assert [m.partition for m in metas] == [murmur3_32(f"key-{i}".encode()) % 8 for i in range(500)]
    for p in range(8):
        stored = (await entries(target_client, namespace, "wide", p))[1 if p == 0 else 0 :]
        assert [eid for eid, _ in stored] == [m.id for m in metas if m.partition == p]
        assert [orjson.loads(as_fields(f)[b"v"])["n"] for _, f in stored] == [
            i for i, m in enumerate(metas) if m.partition == p
        ]


async def test_one_script_call_checks_each_partitions_batch_on_its_own(
    redis_url: str, r: redis.asyncio.Redis, namespace: str
) -> None:
    """Single server: one call carries three batches. A partition without its marker
    gets NOTOPIC and a batch already written gets DUP, while the third is written; each
    keeps its own producer sequence."""
    keys = Keys(namespace)
    produce = scripts.script("produce")
    streams = [keys.stream("a", 0), keys.stream("b", 0), keys.stream("a", 1)]
    seqs = [keys.producer_seq("a", 0, "p1"), keys.producer_seq("b", 0, "p1"), keys.producer_seq("a", 1, "p1")]
    markers = [keys.topic_version("a", 0), keys.topic_version("b", 0), keys.topic_version("a", 1)]
    barriers = [keys.barrier("a", 0), keys.barrier("b", 0), keys.barrier("a", 1)]
    extras = [(keys.producer_fence(t, p, "p1"), keys.dedup_prefix(t, p)) for t, p in (("a", 0), ("b", 0), ("a", 1))]
    await r.set(markers[0], 3)
    await r.set(markers[2], 3)  # topic "b" has no marker
    [first] = await scripts.run(
        r, produce, [streams[0], seqs[0], markers[0], barriers[0], *extras[0]],
        ["p1", 60_000, "", "", "", "", 1, 3, "", frame([b"x"])]
    )
    call_keys = [k for j in range(3) for k in (streams[j], seqs[j], markers[j], barriers[j], *extras[j])]
    call_args = ["p1", 60_000, "", "", "", "", 1, 3, "", frame([b"x"]), "", "", 1, 3, "", frame([b"y"]),
                 "", "", 1, 3, "", frame([b"z1", b"z2"])]
    dup, notopic, ok = await scripts.run(r, produce, call_keys, call_args)
    assert dup == [b"DUP", first[1], b"3"]
    assert notopic == [b"NOTOPIC"]
    assert ok[0] == b"OK" and ok[2] == b"3"
    assert [eid for eid, _ in await r.xrange(streams[2])] == ok[1].split(b",")
    assert [as_fields(f)[b"v"] for _, f in await r.xrange(streams[0])] == [b"x"]
    assert await r.exists(streams[1], seqs[1]) == 0
    # the third batch's sequence is its own: its next batch starts at 3
    [nxt] = await scripts.run(
        r, produce, [streams[2], seqs[2], markers[2], barriers[2], *extras[2]],
        ["p1", 60_000, "", "", "", "", 3, 3, "", frame([b"z3"])]
    )
    assert nxt[0] == b"OK" and await r.xlen(streams[2]) == 3


# ----------------------------------------------------------------------------- encoding


async def test_send_batch_refuses_nan_in_a_keyed_dict_and_keeps_real_nulls(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    """orjson writes NaN and infinities as null: send_batch refuses the whole call
    (nothing written), while a real None is stored as null."""
    await admin.create_topic("nulls", partitions=4)
    producer = make_producer()
    ok = [Record({"n": i, "note": None}, key=f"k{i}") for i in range(20)]
    for bad in ({"n": 20, "price": math.nan}, {"n": 20, "deep": [{"x": -math.inf}]}):
        with pytest.raises(SerializationError):
            await producer.send_batch("nulls", [*ok[:10], Record(bad, key="k20"), *ok[10:]])
        assert sum(await lengths(target_client, namespace, "nulls", 4)) == 0
    metas = await producer.send_batch("nulls", ok)
    stored = {
        (p, eid): orjson.loads(as_fields(f)[b"v"])
        for p in range(4)
        for eid, f in await entries(target_client, namespace, "nulls", p)
    }
    assert [stored[m.partition, m.id] for m in metas] == [{"n": i, "note": None} for i in range(20)]


async def test_bytes_values_pass_untouched(
    make_producer: Factory, target_client: AsyncClient, namespace: str
) -> None:
    producer = make_producer()
    raw = b'\x00\xff{"not": json}\r\n'
    meta = await producer.send("raw", raw, key=b"\x01\x02")
    [(eid, fields)] = await entries(target_client, namespace, "raw", 0)
    assert eid == meta.id
    # format 2: one field, "2" + codec b (bytes) + key type b (bytes) + the key -> the value
    assert fields == {b"2bb\x01\x02": raw}
    assert as_fields(fields) == {b"f": b"1bb", b"v": raw, b"k": b"\x01\x02"}


async def test_custom_serializer_is_used(
    make_producer: Factory, target_client: AsyncClient, namespace: str
) -> None:
    producer = make_producer(serializer=lambda v: repr(v).encode())
    await producer.send("custom", (1, 2))
    [(_, fields)] = await entries(target_client, namespace, "custom", 0)
    assert fields == {b"2cn": b"(1, 2)"}  # format 2: codec c (custom), no key


async def test_headers_round_trip_in_the_stream_fields(
    make_producer: Factory, target_client: AsyncClient, namespace: str
) -> None:
    producer = make_producer()
    headers = {"trace-id": "abc", "ünï": "çødé", "empty": ""}
    await producer.send("h", 1, headers=headers)
    await producer.send("h", 2)
    [(_, with_h), (_, without)] = await entries(target_client, namespace, "h", 0)
    # with headers: format 1, and absent fields (k) are not written at all
    assert with_h.keys() == {b"f", b"v", b"h"} and with_h[b"f"] == b"1jn" and with_h[b"v"] == b"1"
    assert orjson.loads(with_h[b"h"]) == headers
    assert without == {b"2jn": b"2"}  # the common record: format 2, one field


async def test_ttl_sets_the_expiry_field(
    make_producer: Factory, target_client: AsyncClient, namespace: str
) -> None:
    producer = make_producer()
    meta = await producer.send("ttl", 1, ttl=2.5)
    [(_, fields)] = await entries(target_client, namespace, "ttl", 0)
    # a record with a TTL stays format 1: f, v and the expiry x (no key: no k)
    assert fields.keys() == {b"f", b"v", b"x"} and (fields[b"f"], fields[b"v"]) == (b"1jn", b"1")
    # expiry = local send time + ttl; the timestamp is Redis's append time: a few ms apart
    assert abs(int(fields[b"x"]) - (meta.timestamp + 2500)) < 500
    for bad in (0, -1.0, float("inf"), "5"):
        with pytest.raises(ConfigError, match="ttl must be a positive number"):
            await producer.send("ttl", 1, ttl=bad)  # type: ignore[arg-type]


async def test_wrong_key_type_is_type_error(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    await admin.create_topic("kt")
    producer = make_producer()
    for bad in (42, 1.5, ["k"], bytearray(b"k")):
        with pytest.raises(TypeError, match="key must be str, bytes or None"):
            await producer.send("kt", "x", key=bad)  # type: ignore[arg-type]
    assert await lengths(target_client, namespace, "kt", 1) == [0]


async def test_header_not_str_to_str_is_type_error(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    await admin.create_topic("hdr")
    producer = make_producer()
    for bad in ({"a": 1}, {1: "a"}, {"a": b"b"}, {"a": None}):
        with pytest.raises(TypeError, match="headers must map str to str"):
            await producer.send("hdr", "x", headers=bad)  # type: ignore[arg-type]
    assert await lengths(target_client, namespace, "hdr", 1) == [0]


async def test_value_too_large_fails_and_nothing_is_written(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    await admin.create_topic("big")
    small = make_producer(max_message_bytes=1000)
    with pytest.raises(MessageTooLargeError, match="exceeds max_message_bytes=1000") as err:
        await small.send("big", b"x" * 1001)
    assert isinstance(err.value, ValueError)
    with pytest.raises(MessageTooLargeError):  # key and headers count too
        await small.send("big", b"x" * 900, key="k" * 50, headers={"h": "y" * 50})
    assert (await small.send("big", b"x" * 1000)).partition == 0  # the limit itself is fine
    default = make_producer()
    with pytest.raises(MessageTooLargeError, match="exceeds max_message_bytes=1048576"):
        await default.send("big", b"x" * (1024 * 1024 + 1))
    with pytest.raises(MessageTooLargeError):
        await default.send_batch("big", [b"ok", b"x" * (1024 * 1024 + 1)])
    await default.flush()
    assert await lengths(target_client, namespace, "big", 1) == [1]


async def test_unserializable_value_fails_before_anything_is_written(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    await admin.create_topic("ser", partitions=2)
    producer = make_producer()
    with pytest.raises(SerializationError, match="cannot serialize value of type set"):
        await producer.send("ser", {1, 2})
    with pytest.raises(SerializationError):
        await producer.send("ser", object(), key="k")
    assert await lengths(target_client, namespace, "ser", 2) == [0, 0]


# ----------------------------------------------------------------------------- topics from the producer


async def test_unknown_topic_is_auto_created_with_default_partitions(
    make_producer: Factory, admin: Admin
) -> None:
    producer = make_producer(default_partitions=3)
    meta = await producer.send("fresh", "x", key="k")
    assert meta.partition == murmur3_32(b"k") % 3
    info = await admin.describe_topic("fresh")
    assert info.partitions == 3 and info.length == 1
    assert await admin.list_topics() == ["fresh"]


async def test_auto_create_off_raises_unknown_topic(make_producer: Factory, admin: Admin) -> None:
    producer = make_producer(auto_create_topics=False)
    with pytest.raises(UnknownTopicError, match=r"unknown topic 'nope'.*Admin\.create_topic"):
        await producer.send("nope", "x")
    with pytest.raises(UnknownTopicError):
        await producer.send_batch("nope", ["x"])
    assert await admin.list_topics() == []
    await admin.create_topic("nope", partitions=2)
    assert (await producer.send("nope", "x", partition=1)).partition == 1


async def test_invalid_topic_name_is_value_error(make_producer: Factory) -> None:
    producer = make_producer()
    for bad in ("a:b", "{x}", ""):
        with pytest.raises(ValueError, match="topic name"):
            await producer.send(bad, "x")


async def test_maxlen_trims_the_topic_approximately(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    await admin.create_topic("capped", partitions=1, maxlen=100)
    producer = make_producer()
    for _ in range(4):
        await producer.send_batch("capped", [{"i": i} for i in range(500)])
    length = (await lengths(target_client, namespace, "capped", 1))[0]
    assert 100 <= length < 1000, length  # approximate (~): whole stream nodes are dropped
    # the newest entries are the ones kept
    last = (await target_client.xrevrange(Keys(namespace).stream("capped", 0), count=1))[0][1]
    assert orjson.loads(as_fields(last)[b"v"]) == {"i": 499}


async def test_producer_uses_new_partitions_within_a_second(
    make_producer: Factory, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    await admin.create_topic("growing", partitions=2)
    producer = make_producer()
    assert await producer.partitions_for("growing") == 2
    key = key_for_partition(6, 8)
    assert (await producer.send("growing", "before", key=key)).partition == murmur3_32(
        key.encode()
    ) % 2
    await admin.alter_partitions("growing", 8)
    grown = time.monotonic()

    async def lands_on_new_partition() -> bool:
        return (await producer.send("growing", "after", key=key)).partition == 6

    await eventually(lands_on_new_partition, timeout=2.0, interval=0.05)
    assert time.monotonic() - grown < 1.5
    assert await producer.partitions_for("growing") == 8
    assert (await lengths(target_client, namespace, "growing", 8))[6] >= 1


# ----------------------------------------------------------------------------- lifecycle


async def test_producer_with_a_client_passed_in(
    make_producer: Factory, target_client: AsyncClient, namespace: str
) -> None:
    async with make_producer(redis=target_client) as producer:
        meta = await producer.send("given", "x")
        assert producer.producer_id  # idempotent by default
    assert await target_client.ping() is True  # not ours to close
    assert [eid for eid, _ in await entries(target_client, namespace, "given", 0)] == [meta.id]


async def test_producer_rejects_url_and_client_together(
    target: Target, target_client: AsyncClient
) -> None:
    producer = Producer(target.url, redis=target_client)
    with pytest.raises(ConfigError, match="either url= or redis="):
        await producer.start()
    await producer.close()


async def test_flush_waits_for_everything_sent(
    make_producer: Factory, target_client: AsyncClient, namespace: str
) -> None:
    producer = make_producer(linger=0.05)
    await producer.start()
    await producer.partitions_for("f")
    pending = [asyncio.create_task(producer.send("f", i)) for i in range(50)]
    await asyncio.sleep(0)  # let every task append
    await producer.flush()
    assert await lengths(target_client, namespace, "f", 1) == [50]
    await asyncio.gather(*pending)


async def test_close_flushes(target: Target, target_client: AsyncClient, namespace: str) -> None:
    producer = Producer(target.url, namespace=namespace, linger=0.05)
    await producer.partitions_for("c")
    pending = [asyncio.create_task(producer.send("c", i)) for i in range(20)]
    await asyncio.sleep(0)
    await producer.close()
    assert len(await asyncio.gather(*pending)) == 20
    assert await lengths(target_client, namespace, "c", 1) == [20]
    await producer.close()  # idempotent


async def test_send_after_close_raises_producer_closed(make_producer: Factory) -> None:
    producer = make_producer()
    await producer.send("closed", 1)
    await producer.close()
    with pytest.raises(ProducerClosedError):
        await asyncio.wait_for(producer.send("closed", 2), 1.0)


# ----------------------------------------------------------------------------- idempotence


async def test_produce_script_stores_a_retried_sequence_once(
    target_client: AsyncClient, namespace: str
) -> None:
    """The partition-slot script itself: same producer id + sequence -> one write."""
    keys = Keys(namespace)
    stream, seq_key = keys.stream("idem", 0), keys.producer_seq("idem", 0, "p1")
    marker, barrier = keys.topic_version("idem", 0), keys.barrier("idem", 0)
    extra = [keys.producer_fence("idem", 0, "-"), keys.dedup_prefix("idem", 0)]
    await target_client.set(marker, 1)
    produce = scripts.script("produce")

    def args(pid: str, first_seq: int, values: list[bytes]) -> list[bytes | str | int]:
        return [pid, 60_000, "", "", "", "", first_seq, 1, "", frame(values)]

    [first] = await scripts.run(
        target_client, produce, [stream, seq_key, marker, barrier, *extra], args("p1", 1, [b"a", b"b"])
    )
    [retry] = await scripts.run(
        target_client, produce, [stream, seq_key, marker, barrier, *extra], args("p1", 1, [b"a", b"b"])
    )
    assert first[0] == b"OK" and retry[0] == b"DUP"
    assert retry[1] == first[1]  # the same ids as the first write
    assert [eid for eid, _ in await target_client.xrange(stream)] == first[1].split(b",")
    # the next sequence is written; an older one is refused without writing
    [nxt] = await scripts.run(target_client, produce, [stream, seq_key, marker, barrier, *extra], args("p1", 3, [b"c"]))
    assert nxt[0] == b"OK"
    [stale] = await scripts.run(
        target_client, produce, [stream, seq_key, marker, barrier, *extra], args("p1", 1, [b"zzz"])
    )
    assert stale == [b"STALE", 3]
    assert [as_fields(f)[b"v"] for _, f in await target_client.xrange(stream)] == [b"a", b"b", b"c"]
    # another producer id has its own sequence
    other = keys.producer_seq("idem", 0, "p2")
    assert (
        await scripts.run(target_client, produce, [stream, other, marker, barrier, *extra], args("p2", 1, [b"d"]))
    )[0][0] == b"OK"
    assert await target_client.xlen(stream) == 4


async def test_produce_script_writes_nothing_into_a_partition_without_its_marker(
    target_client: AsyncClient, namespace: str
) -> None:
    """The marker check is inside the script, atomic with the write: no marker (topic
    deleted, or the server lost its data), no entry, no sequence state."""
    keys = Keys(namespace)
    stream, seq_key = keys.stream("nomark", 0), keys.producer_seq("nomark", 0, "p1")
    marker, barrier = keys.topic_version("nomark", 0), keys.barrier("nomark", 0)
    extra = [keys.producer_fence("nomark", 0, "-"), keys.dedup_prefix("nomark", 0)]
    produce = scripts.script("produce")
    args = ["p1", 60_000, "", "", "", "", 1, 7, "", frame([b"a"])]
    assert await scripts.run(target_client, produce, [stream, seq_key, marker, barrier, *extra], args) == [[b"NOTOPIC"]]
    assert await target_client.exists(stream, seq_key) == 0
    await target_client.set(marker, 7)
    [reply] = await scripts.run(target_client, produce, [stream, seq_key, marker, barrier, *extra], args)
    assert reply[0] == b"OK" and reply[2] == b"7"  # the marker's version rides back


async def test_produce_script_without_producer_id_always_writes(
    target_client: AsyncClient, namespace: str
) -> None:
    keys = Keys(namespace)
    stream, seq_key = keys.stream("plain", 0), keys.producer_seq("plain", 0, "-")
    marker, barrier = keys.topic_version("plain", 0), keys.barrier("plain", 0)
    extra = [keys.producer_fence("plain", 0, "-"), keys.dedup_prefix("plain", 0)]
    await target_client.set(marker, 1)
    produce = scripts.script("produce")
    for _ in range(2):
        reply = await scripts.run(
            target_client,
            produce,
            [stream, seq_key, marker, barrier, *extra],
            ["", 60_000, "", "", "", "", 1, 1, "", frame([b"a"])],
        )
        assert reply[0][0] == b"OK"
    assert await target_client.xlen(stream) == 2
    assert await target_client.exists(seq_key) == 0


async def test_send_whose_reply_was_lost_is_retried_and_stored_once(
    proxy: FaultProxy, r: redis.asyncio.Redis, namespace: str
) -> None:
    async with Producer(proxy.url, namespace=namespace, metadata_max_age=60) as producer:
        await producer.send("lost", "warm-up")  # metadata read and script loaded
        proxy.drop_next_reply(b"EVALSHA")
        sent_before = proxy.seen(b"EVALSHA")
        meta = await producer.send("lost", "exactly-once")
        assert proxy.dropped_replies == 1  # the reply really was lost...
        assert proxy.seen(b"EVALSHA") - sent_before >= 2  # ...and the send really was retried
    stored = await entries(r, namespace, "lost", 0)
    assert [as_fields(f)[b"v"] for _, f in stored] == [b'"warm-up"', b'"exactly-once"']
    assert stored[1][0] == meta.id  # the retry reported the id of the first write


async def test_batch_whose_reply_was_lost_is_stored_once(
    proxy: FaultProxy, r: redis.asyncio.Redis, namespace: str
) -> None:
    async with Admin(proxy.url, namespace=namespace) as admin:
        await admin.create_topic("lostb", partitions=4)
    async with Producer(proxy.url, namespace=namespace, metadata_max_age=60) as producer:
        await producer.send_batch("lostb", [Record(p, partition=p) for p in range(4)])
        proxy.drop_next_reply(b"EVALSHA")
        metas = await producer.send_batch("lostb", [Record(i, key=f"k{i}") for i in range(40)])
        assert proxy.dropped_replies == 1
    for p in range(4):
        stored = await entries(r, namespace, "lostb", p)
        assert [eid for eid, _ in stored[1:]] == [m.id for m in metas if m.partition == p]
    assert sum(await lengths(r, namespace, "lostb", 4)) == 44


async def test_lost_replies_are_retried_until_delivery_timeout_then_ambiguous(
    proxy: FaultProxy, r: redis.asyncio.Redis, namespace: str
) -> None:
    """Every attempt reached Redis and lost its reply: the producer retries itself until
    delivery_timeout, then says the write may be stored (not "retry later", which would
    duplicate it). The retries were all DUPs: stored once."""
    async with Producer(
        proxy.url, namespace=namespace, metadata_max_age=60, request_timeout=0.5,
        delivery_timeout=1.5,
    ) as producer:
        await producer.send("down", "warm-up")
        proxy.drop_every_reply(b"EVALSHA")
        started = time.monotonic()
        with pytest.raises(AmbiguousWriteError, match="may or may not be stored") as err:
            await producer.send("down", "once")
        elapsed = time.monotonic() - started
        assert not err.value.retriable
        assert "a plain resend may store them twice" in str(err.value).lower()
        assert "delivery_timeout=1.5" in str(err.value)
        assert 1.2 <= elapsed < 3.0
        assert proxy.dropped_replies >= 3  # retried, with backoff, not once
        proxy.heal()
        assert (await producer.send("down", "after")).partition == 0
    values = [as_fields(f)[b"v"] for _, f in await entries(r, namespace, "down", 0)]
    assert values == [b'"warm-up"', b'"once"', b'"after"']  # every retry was a DUP


async def test_unreachable_redis_is_retriable_only_when_no_attempt_was_sent(
    proxy: FaultProxy, r: redis.asyncio.Redis, namespace: str
) -> None:
    """Every attempt failed to connect: nothing can be stored, so the error is a
    retriable RedcurrentConnectionError (and a resend is safe)."""
    async with Producer(
        proxy.url, namespace=namespace, metadata_max_age=60, request_timeout=0.5,
        delivery_timeout=1.0,
    ) as producer:
        await producer.send("refused", "warm-up")
        await proxy.close()  # nothing listens there now: every connect is refused
        with pytest.raises(RedcurrentConnectionError) as err:
            await producer.send("refused", "never")
        assert type(err.value) is RedcurrentConnectionError and err.value.retriable
        assert "nothing was stored" in str(err.value) and "connecting to" in str(err.value)
    assert [as_fields(f)[b"v"] for _, f in await entries(r, namespace, "refused", 0)] == [b'"warm-up"']


async def test_non_idempotent_send_with_lost_reply_is_ambiguous(
    proxy: FaultProxy, r: redis.asyncio.Redis, namespace: str
) -> None:
    async with Producer(
        proxy.url, namespace=namespace, metadata_max_age=60, idempotent=False
    ) as producer:
        assert producer.producer_id == ""
        await producer.send("amb", "warm-up")
        proxy.drop_next_reply(b"EVALSHA")
        with pytest.raises(AmbiguousWriteError, match="may or may not be stored") as err:
            await producer.send("amb", "maybe")
        assert not err.value.retriable
    assert await r.xlen(Keys(namespace).stream("amb", 0)) == 2  # it was stored; not resent


async def test_retried_pipeline_with_two_batches_of_one_partition_succeeds_once(
    proxy: FaultProxy, r: redis.asyncio.Redis, namespace: str
) -> None:
    async with Producer(
        proxy.url, namespace=namespace, metadata_max_age=60, batch_size=2
    ) as producer:
        await producer.send("two", "warm-up")
        proxy.drop_next_reply(b"EVALSHA")
        try:
            metas = await producer.send_batch("two", [Record(i, partition=0) for i in range(4)])
        finally:
            stored = await entries(r, namespace, "two", 0)
            assert len(stored) == 5  # stored exactly once either way
        assert [m.id for m in metas] == [eid for eid, _ in stored[1:]]


async def test_thousand_concurrent_first_sends_to_a_new_topic(
    redis_url: str, r: redis.asyncio.Redis, namespace: str
) -> None:
    async with Producer(redis_url, namespace=namespace) as producer:
        results = await asyncio.gather(
            *(producer.send("herd", i, key=str(i)) for i in range(1000)), return_exceptions=True
        )
    errors = Counter(type(x).__name__ for x in results if isinstance(x, BaseException))
    assert not errors, errors
    assert await r.xlen(Keys(namespace).stream("herd", 0)) == 1000


def test_producer_repr_never_shows_the_url() -> None:
    producer = Producer("redis://user:secret@localhost:1/0", namespace="app")
    assert "secret" not in repr(producer) and repr(producer) == "<Producer namespace='app' new>"


def test_bad_options_fail_fast() -> None:
    for options in (
        {"linger": -1},
        {"batch_size": 0},
        {"max_message_bytes": 0},
        {"default_partitions": 0},
        {"request_timeout": 0},
        {"acks": "all"},
    ):
        with pytest.raises(ConfigError):
            Producer("redis://localhost:1", **options)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="serializer must be a callable"):
        Producer("redis://localhost:1", serializer=b"nope")  # type: ignore[arg-type]


async def test_growth_reaches_a_producer_through_its_next_batch_not_only_the_periodic_refresh(
    redis_url: str, namespace: str
) -> None:
    """alter_partitions leaves the new metadata version in every partition slot; the
    produce script hands it back, so a producer with a slow periodic refresh still
    uses the new partitions almost at once."""
    import time

    from redcurrent import Admin, Producer

    async with Admin(redis_url, namespace=namespace) as admin:
        await admin.create_topic("grow", partitions=2)
        async with Producer(redis_url, namespace=namespace, metadata_max_age=60.0) as producer:
            await producer.send("grow", "warm", key="a")
            await admin.alter_partitions("grow", 8)
            started = time.monotonic()
            await producer.send("grow", "notify", key="a")  # carries the new version back
            seen: set[int] = set()
            while time.monotonic() - started < 1.0 and not seen & set(range(2, 8)):
                metas = await producer.send_batch("grow", [Record(i, key=f"k{i}") for i in range(50)])
                seen |= {m.partition for m in metas}
            assert seen & set(range(2, 8)), "the producer did not learn of the growth within 1 s"
            assert await producer.partitions_for("grow") == 8


# ----------------------------------------------------------------------------- latency by default


async def test_a_lone_send_is_one_round_trip_at_once(proxy: FaultProxy, namespace: str) -> None:
    async with Producer(proxy.url, namespace=namespace, metadata_max_age=60, linger=1.0) as producer:
        await producer.send("lone", "warm-up")  # metadata read and script loaded
        before = proxy.seen(b"EVALSHA")
        started = time.monotonic()
        await producer.send("lone", "one")
        took = time.monotonic() - started
    assert proxy.seen(b"EVALSHA") - before == 1
    assert took < 0.5  # linger=1.0 did not hold it back: nothing else was in flight


async def test_while_a_request_is_outstanding_other_partitions_go_after_linger(
    proxy: FaultProxy, namespace: str
) -> None:
    """A round trip takes 0.5 s. A record for another partition waits at most ``linger`` behind
    the outstanding request, then goes in a request of its own; a record for the
    partition in flight waits for it (one batch in flight a partition keeps its order)."""
    async with Admin(proxy.url, namespace=namespace) as admin:
        await admin.create_topic("slow", partitions=2)
    async with Producer(proxy.url, namespace=namespace, metadata_max_age=60, linger=0.05) as producer:
        await producer.send("slow", "warm-up", partition=0)
        client = producer._conn.client  # type: ignore[union-attr]
        await asyncio.gather(*(client.ping() for _ in range(3)))  # pooled connections, health-checked
        proxy.set_latency(0.25)  # each way
        started = time.monotonic()
        done: dict[str, float] = {}

        async def send(name: str, partition: int) -> RecordMetadata:
            meta = await producer.send("slow", name, partition=partition)
            done[name] = time.monotonic() - started
            return meta

        first = asyncio.create_task(send("a", 0))
        await asyncio.sleep(0.01)
        other = asyncio.create_task(send("b", 1))
        same = asyncio.create_task(send("c", 0))
        a, _b, c = await asyncio.gather(first, other, same)
    assert done["b"] < done["c"]  # b did not wait for a's reply
    assert done["b"] < 0.5 + 0.05 + 0.25 and done["c"] >= 2 * 0.5 - 0.05  # c waited for a
    assert (a.partition, c.partition) == (0, 0) and tuple(map(int, a.id.split("-"))) < tuple(map(int, c.id.split("-")))
