"""Bad input never corrupts a topic, never crashes a consumer.

Against a real server, with hypothesis (500 examples per strategy):

* every value, key, header mapping, partition, ttl or size the producer cannot store
  faithfully is rejected with a typed error (TypeError / ValueError / a redcurrent
  error) *before anything is written*: the namespace's keys are compared before and
  after, byte for byte, and a never-created topic stays uncreated;
* every good record round-trips through a consumer group unchanged;
* foreign and corrupt stream entries written with raw XADD never crash a consumer:
  each one is handled (when it happens to be valid) or dead-lettered with a reason,
  and the counts agree with ``Admin.count_dead_letters`` and ``stats()``;
* a wrong-typed argument to any public constructor or method raises TypeError,
  ValueError or a redcurrent error with a message, never AttributeError & co.

Examples reuse one producer, consumer and admin per test (one event loop per test,
driven with ``asyncio.Runner``), and most fail in validation before any network I/O.
Each bug this suite found has its own regression test at the end of the file; the
broad strategies leave those inputs out, so a regression fails one named test instead
of a random fuzz example. The strategies live in ``support.bad_input``; the cases that
need no server (constructors, listeners, the header strategy itself) are in
tests/unit/test_bad_arguments.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import redis.asyncio
from hypothesis import assume, given
from hypothesis import strategies as st
from support.bad_input import (
    EXAMPLES,
    PARTITIONS,
    TYPED,
    URL,
    bad_headers,
    bad_keys,
    bad_partitions,
    bad_ttls,
    bad_values,
    fuzz,
    good_headers,
    good_keys,
    good_values,
    is_name,
    is_positive,
    is_positive_int,
    json_values,
    junk,
    optional,
    raises_typed,
)
from support.eventually import eventually

from redcurrent import (
    Admin,
    ConfigError,
    Consumer,
    InvalidPartitionsError,
    Message,
    MessageTooLargeError,
    Producer,
    Record,
    SerializationError,
    TopicPartition,
)
from redcurrent.keys import Keys
from redcurrent.serde import REQUEUE_HEADER, RESERVED_HEADER_PREFIX

SMALL_LIMIT = 1024  # max_message_bytes of the size-boundary producer


# --------------------------------------------------------------------------- helpers


async def snapshot(r: redis.asyncio.Redis, namespace: str) -> dict[bytes, Any]:
    """Every key of the namespace with its full content: any write shows up."""
    out: dict[bytes, Any] = {}
    async for key in r.scan_iter(match=f"{namespace}:*", count=1000):
        kind = (await r.type(key)).decode()
        if kind == "stream":
            groups = await r.execute_command("XINFO", "GROUPS", key)
            out[key] = (await r.xrange(key), repr(groups))
        elif kind == "hash":
            out[key] = await r.hgetall(key)
        elif kind == "set":
            out[key] = await r.smembers(key)
        elif kind == "zset":
            out[key] = await r.zrange(key, 0, -1, withscores=True)
        else:
            out[key] = await r.get(key)
    return out


class Inbox:
    """What a consumer's handler received, by entry id, with a wake-up for waiters."""

    def __init__(self) -> None:
        self.messages: dict[str, Message] = {}
        self.changed = asyncio.Event()

    async def handler(self, msg: Message) -> None:
        self.messages[msg.id] = msg
        self.changed.set()

    async def wait_for(self, entry_id: str, timeout: float = 10.0) -> Message:
        async with asyncio.timeout(timeout):
            while entry_id not in self.messages:
                self.changed.clear()
                await self.changed.wait()
        return self.messages[entry_id]


class World:
    """A namespace with one topic, a producer, an admin and a raw client."""

    def __init__(self, url: str, namespace: str, **producer_options: Any) -> None:
        self.url, self.ns = url, namespace
        self.keys = Keys(namespace)
        self.producer = Producer(url, namespace=namespace, linger=0, **producer_options)
        self.admin = Admin(url, namespace=namespace)
        self.r = redis.asyncio.Redis.from_url(url)
        self.consumer: Consumer | None = None
        self.processing: asyncio.Task[None] | None = None
        self.inbox = Inbox()

    async def start(self, topic: str = "t", *, consume: bool = False, **topic_options: Any) -> None:
        await self.admin.start()
        await self.admin.create_topic(topic, PARTITIONS, **topic_options)
        await self.producer.start()
        await self.producer.partitions_for(topic)  # metadata cached: sends go straight out
        if consume:
            self.consumer = Consumer(
                topic,
                group="g",
                url=self.url,
                namespace=self.ns,
                start="earliest",
                max_attempts=1,
            )
            await self.consumer.start()
            self.processing = asyncio.create_task(self.consumer.process(self.inbox.handler))

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
            assert self.processing is not None
            await asyncio.wait_for(self.processing, 10)
        await self.producer.close()
        await self.admin.close()
        await self.r.aclose()

    async def lengths(self, topic: str = "t") -> list[int]:
        return [int(await self.r.xlen(self.keys.stream(topic, p))) for p in range(PARTITIONS)]


@pytest.fixture
def world(runner: asyncio.Runner, redis_url: str, namespace: str) -> Iterator[World]:
    w = World(redis_url, namespace)
    runner.run(w.start())
    yield w
    runner.run(w.stop())


@pytest.fixture
def consuming(runner: asyncio.Runner, redis_url: str, namespace: str) -> Iterator[World]:
    w = World(redis_url, namespace)
    runner.run(w.start(consume=True, dead_letter_expired=True))
    yield w
    runner.run(w.stop())


def fresh_topic() -> str:
    return "fresh-" + uuid.uuid4().hex[:8]


# --------------------------------------------------------------------------- values, keys, headers


def test_unencodable_values_are_rejected_before_anything_is_written(
    runner: asyncio.Runner, world: World
) -> None:
    before = runner.run(snapshot(world.r, world.ns))

    runs: list[None] = []

    @fuzz
    @given(value=bad_values, to_existing=st.booleans())
    def check(value: Any, to_existing: bool) -> None:
        runs.append(None)
        topic = "t" if to_existing else fresh_topic()
        exc = runner.run(
            raises_typed(lambda: world.producer.send(topic, value), SerializationError)
        )
        assert isinstance(exc, ValueError)  # SerializationError is also a ValueError

    check()
    assert len(runs) >= EXAMPLES
    # Nothing written: no entry, and no never-created topic was auto-created.
    assert runner.run(snapshot(world.r, world.ns)) == before


def test_bad_keys_are_rejected_before_anything_is_written(
    runner: asyncio.Runner, world: World
) -> None:
    before = runner.run(snapshot(world.r, world.ns))

    runs: list[None] = []

    @fuzz
    @given(key=bad_keys, value=good_values, to_existing=st.booleans())
    def check(key: Any, value: Any, to_existing: bool) -> None:
        runs.append(None)
        topic = "t" if to_existing else fresh_topic()
        runner.run(
            raises_typed(lambda: world.producer.send(topic, value, key=key), TypeError, ValueError)
        )

    check()
    assert len(runs) >= EXAMPLES
    assert runner.run(snapshot(world.r, world.ns)) == before


def test_bad_headers_are_rejected_before_anything_is_written(
    runner: asyncio.Runner, world: World
) -> None:
    before = runner.run(snapshot(world.r, world.ns))

    runs: list[None] = []

    @fuzz
    @given(headers=bad_headers, value=good_values, to_existing=st.booleans())
    def check(headers: Any, value: Any, to_existing: bool) -> None:
        runs.append(None)
        topic = "t" if to_existing else fresh_topic()
        runner.run(
            raises_typed(
                lambda: world.producer.send(topic, value, headers=headers), TypeError, ValueError
            )
        )

    check()
    assert len(runs) >= EXAMPLES
    assert runner.run(snapshot(world.r, world.ns)) == before


def test_bad_partitions_are_rejected_before_anything_is_written(
    runner: asyncio.Runner, world: World
) -> None:
    before = runner.run(snapshot(world.r, world.ns))

    runs: list[None] = []

    @fuzz
    @given(partition=bad_partitions, value=good_values, key=good_keys)
    def check(partition: Any, value: Any, key: Any) -> None:
        runs.append(None)
        exc = runner.run(
            raises_typed(lambda: world.producer.send("t", value, key=key, partition=partition))
        )
        assert isinstance(exc, TypeError | InvalidPartitionsError), repr(exc)

    check()
    assert len(runs) >= EXAMPLES
    assert runner.run(snapshot(world.r, world.ns)) == before


def test_bad_ttls_are_rejected_before_anything_is_written(
    runner: asyncio.Runner, world: World
) -> None:
    before = runner.run(snapshot(world.r, world.ns))

    runs: list[None] = []

    @fuzz
    @given(ttl=bad_ttls, value=good_values, to_existing=st.booleans())
    def check(ttl: Any, value: Any, to_existing: bool) -> None:
        runs.append(None)
        topic = "t" if to_existing else fresh_topic()
        runner.run(raises_typed(lambda: world.producer.send(topic, value, ttl=ttl), ConfigError))

    check()
    assert len(runs) >= EXAMPLES
    assert runner.run(snapshot(world.r, world.ns)) == before


def test_a_batch_with_one_bad_record_writes_nothing(runner: asyncio.Runner, world: World) -> None:
    before = runner.run(snapshot(world.r, world.ns))
    bad_record = st.one_of(
        bad_values.map(Record),
        bad_keys.map(lambda k: Record(1, key=k)),
        bad_headers.map(lambda h: Record(1, headers=h)),
        bad_partitions.map(lambda p: Record(1, partition=p)),
        bad_ttls.map(lambda t: Record(1, ttl=t)),
    )
    good_record = st.builds(Record, good_values, key=good_keys, headers=good_headers)

    runs: list[None] = []

    @fuzz
    @given(good=st.lists(good_record, max_size=8), bad=bad_record, data=st.data())
    def check(good: list[Record], bad: Record, data: st.DataObject) -> None:
        runs.append(None)
        at = data.draw(st.integers(0, len(good)))
        records = [*good[:at], bad, *good[at:]]
        runner.run(raises_typed(lambda: world.producer.send_batch("t", records)))

    check()
    assert len(runs) >= EXAMPLES
    assert runner.run(snapshot(world.r, world.ns)) == before


def test_message_size_limit_is_exact_and_checked_before_writing(
    runner: asyncio.Runner, redis_url: str, namespace: str
) -> None:
    w = World(redis_url, namespace, max_message_bytes=SMALL_LIMIT)
    runner.run(w.start())
    try:
        stored = runner.run(w.lengths())

        runs: list[None] = []

        @fuzz
        @given(
            size=st.integers(SMALL_LIMIT - 64, SMALL_LIMIT + 64),
            key=st.binary(max_size=32),
            headers=st.dictionaries(
                st.text("abc", max_size=4), st.text("xyz", max_size=8), max_size=3
            ),
        )
        def check(size: int, key: bytes, headers: dict[str, str]) -> None:
            runs.append(None)
            nonlocal stored
            value = b"v" * size
            encoded = size + len(key) + (len(orjson.dumps(headers)) if headers else 0)
            if encoded > SMALL_LIMIT:
                runner.run(
                    raises_typed(
                        lambda: w.producer.send("t", value, key=key, headers=headers),
                        MessageTooLargeError,
                    )
                )
                assert runner.run(w.lengths()) == stored
            else:
                meta = runner.run(w.producer.send("t", value, key=key, headers=headers))
                stored[meta.partition] += 1

        check()
        assert len(runs) >= EXAMPLES
        assert runner.run(w.lengths()) == stored
    finally:
        runner.run(w.stop())


def test_huge_values_are_refused_and_the_largest_allowed_round_trips(
    runner: asyncio.Runner, consuming: World
) -> None:
    limit = 1024 * 1024  # the default max_message_bytes
    before = runner.run(consuming.lengths())
    for value in (b"x" * (8 * limit), b"x" * (limit + 1), {"blob": "y" * limit}):
        runner.run(
            raises_typed(lambda v=value: consuming.producer.send("t", v), MessageTooLargeError)
        )
    assert runner.run(consuming.lengths()) == before
    biggest = b"\x00\xff" * (limit // 2)
    meta = runner.run(consuming.producer.send("t", biggest))
    got = runner.run(consuming.inbox.wait_for(meta.id))
    assert got.value == biggest


def test_good_records_round_trip_through_a_consumer_unchanged(
    runner: asyncio.Runner, consuming: World
) -> None:
    runs: list[None] = []

    @fuzz
    @given(
        value=good_values,
        key=good_keys,
        headers=good_headers,
        partition=st.none() | st.integers(0, PARTITIONS - 1),
        ttl=st.none() | st.floats(min_value=60.0, max_value=1e6),
        as_bytearray=st.booleans(),
    )
    def check(
        value: Any, key: Any, headers: Any, partition: Any, ttl: Any, as_bytearray: bool
    ) -> None:
        runs.append(None)
        sent = bytearray(value) if as_bytearray and isinstance(value, bytes) else value
        meta = runner.run(
            consuming.producer.send(
                "t", sent, key=key, headers=headers, partition=partition, ttl=ttl
            )
        )
        msg = runner.run(consuming.inbox.wait_for(meta.id))
        assert msg.value == value and type(msg.value) is type(value)
        assert msg.key == key and type(msg.key) is type(key)
        assert dict(msg.headers) == dict(headers or {})
        assert (msg.topic, msg.partition, msg.timestamp) == ("t", meta.partition, meta.timestamp)
        if partition is not None:
            assert meta.partition == partition
        assert (msg.expires_at is not None) == (ttl is not None)

    check()
    assert len(runs) >= EXAMPLES
    assert consuming.consumer is not None
    stats = consuming.consumer.stats()
    assert stats.get("decode_failures", 0) == 0 and stats.get("dead_lettered", 0) == 0


# --------------------------------------------------------------------------- foreign and corrupt entries

field_name = st.binary(max_size=6) | st.sampled_from(
    [
        b"f", b"v", b"k", b"h", b"x", b"t", b"F", b"val",
        # format-2 names (one field: "2", codec, key type, key), valid and near-valid
        b"2js", b"2jsk", b"2jn", b"2bbk", b"2bs\xff", b"2cn", b"2jnk", b"2zzk", b"2j", b"2jx", b"1js",
    ]
)
near_valid_format = st.builds(
    lambda codec, key: b"1" + codec + key,
    st.sampled_from([b"j", b"b", b"c", b"x", b"J"]),
    st.sampled_from([b"n", b"s", b"b", b"z"]),
)
formats = (
    near_valid_format
    | st.sampled_from([b"", b"1", b"1j", b"1jnn", b"2jn", b"0jn", b"\x001jn", b"jn1"])
    | st.binary(max_size=4)
).filter(lambda f: f != b"-")  # "-" was misread as the trimmed marker: own test below
json_bytes = json_values.map(orjson.dumps)
field_value = st.one_of(
    st.binary(max_size=40),
    json_bytes,
    st.sampled_from(
        [
            b"",
            b"{",
            b"[]",
            b"null",
            b"1e400",
            b"NaN",
            b'"\\ud800"',
            b"\xff\xfe",
            b"-5",
            b"99999999999999999999999",
            b" 7 ",
            b"1_0",
            b'{"a":1}',
            b'{"a":"b"}',
        ]
    ),
)


@st.composite
def raw_entries(draw: st.DrawFn) -> dict[bytes, bytes]:
    """Field-value pairs of a stream entry that no redcurrent producer wrote."""
    fields: dict[bytes, bytes] = {}
    if draw(st.booleans()):  # looks like a redcurrent entry, with fields gone bad
        fields[b"f"] = draw(formats)
        for name in (b"v", b"k", b"h", b"x", b"t"):
            if draw(st.booleans()):
                fields[name] = draw(field_value)
    extra = draw(st.dictionaries(field_name, field_value, min_size=0 if fields else 1, max_size=4))
    for name, value in extra.items():
        if name == b"f" and value == b"-":
            value = b"--"
        fields.setdefault(name, value)
    if REQUEUE_HEADER.encode() in fields.get(b"h", b""):
        fields[b"h"] = b"{}"  # a requeue marker is a valid skip, not a decode problem
    return fields


def test_foreign_and_corrupt_entries_never_crash_a_consumer_and_are_dead_lettered(
    runner: asyncio.Runner, consuming: World
) -> None:
    written: list[str] = []
    stream = consuming.keys.stream("t", 0)

    runs: list[None] = []

    @fuzz
    @given(fields=raw_entries())
    def write(fields: dict[bytes, bytes]) -> None:
        runs.append(None)
        eid = runner.run(consuming.r.xadd(stream, fields))  # type: ignore[arg-type]
        written.append(eid.decode())

    write()
    assert len(runs) >= EXAMPLES
    consumer = consuming.consumer
    assert consumer is not None

    async def dead_lettered() -> dict[str, str]:
        out: dict[str, str] = {}
        after = None
        while page := await consuming.admin.dead_letters("t", "g", count=500, after=after):
            out.update({d.id: d.reason for d in page})
            after = page[-1].dead_letter_id
        return out

    async def accounted() -> bool:
        dead = await dead_lettered()
        return len(set(consuming.inbox.messages) | set(dead)) >= len(written)

    runner.run(eventually(accounted, timeout=60, interval=0.1, message="entries left unaccounted"))
    dead = runner.run(dead_lettered())
    handled = set(consuming.inbox.messages)
    assert set(written) == handled | set(dead)  # each entry handled or dead-lettered...
    assert not handled & set(dead)  # ...never both
    assert all(reason.strip() for reason in dead.values())  # always with a reason
    assert "trimmed" not in dead.values()  # nothing here was trimmed
    stats = consumer.stats()
    assert runner.run(consuming.admin.count_dead_letters("t", "g")) == len(dead)
    assert stats.get("decode_failures", 0) + stats.get("expired", 0) == len(dead)
    assert stats.get("decode_failures", 0) == sum(r != "expired" for r in dead.values())
    # The consumer is alive, and the group is fully caught up: nothing pending, no lag.
    assert consuming.processing is not None and not consuming.processing.done()
    info = runner.run(consuming.admin.describe_group("t", "g"))
    assert info.pending == 0 and info.lag == 0
    assert len(written) >= EXAMPLES


def test_dead_letters_of_foreign_entries_keep_every_field(
    runner: asyncio.Runner, consuming: World
) -> None:
    stream = consuming.keys.stream("t", 1)
    fields = {b"\x00bin\xff": b"\xfe\xfd", b"name": b"value", b"v": b"not json"}
    eid = runner.run(consuming.r.xadd(stream, fields)).decode()  # type: ignore[arg-type]

    async def letter() -> Any:
        raw = await consuming.r.xrange(consuming.keys.dead_letters("t", "g"))
        return next((f for _, f in raw if f[b"id"].decode() == eid), None)

    stored = runner.run(eventually(letter, timeout=10))
    assert stored[b"reason"] == b"decode_error"
    assert stored[b"error"].startswith(b"missing format field")
    assert {k[4:]: v for k, v in stored.items() if k.startswith(b"raw.")} == fields


# --------------------------------------------------------------------------- wrong types everywhere


def _to(v: object) -> bool:
    if v in ("earliest", "latest") or isinstance(v, dt.datetime):
        return True
    if not isinstance(v, str):
        return False
    ms, sep, seq = v.partition("-")
    return ms.isdigit() and (not sep or seq.isdigit())


def _iterable_of(*kinds: type) -> Callable[[object], bool]:
    """Valid: any iterable (empty included) whose items are all of ``kinds``."""

    def check(v: object) -> bool:
        try:
            return all(isinstance(x, kinds) for x in v)  # type: ignore[attr-defined]
        except TypeError:
            return False

    return check


# requeue/delete ids: entry ids reach Redis as they are (ints and bytes too), so any
# iterable of scalars is "valid" here; a str was taken as a list of ids (own test below).
_ids = _iterable_of(str, bytes, int, float)


@pytest.fixture
def admin_world(runner: asyncio.Runner, redis_url: str, namespace: str) -> Iterator[World]:
    """Topic t (3 partitions), group g with no live member, an empty dead-letter stream."""
    w = World(redis_url, namespace)
    runner.run(w.start())

    async def make_group() -> None:
        async with Consumer("t", group="g", url=redis_url, namespace=namespace):
            pass

    runner.run(make_group())
    yield w
    runner.run(w.stop())


def admin_cases(a: Admin) -> dict[str, tuple[Callable[[Any], Any], Callable[[object], bool]]]:
    fresh = "never-" + uuid.uuid4().hex[:6]
    name_cases = {
        f"{method}.{arg}": (call, is_name)
        for method, arg, call in [
            ("create_topic", "name", lambda v: a.create_topic(v)),
            ("describe_topic", "name", lambda v: a.describe_topic(v)),
            ("alter_partitions", "name", lambda v: a.alter_partitions(v, 5)),
            ("delete_topic", "name", lambda v: a.delete_topic(v)),
            ("list_groups", "topic", lambda v: a.list_groups(v)),
            ("describe_group", "topic", lambda v: a.describe_group(v, "g")),
            ("describe_group", "group", lambda v: a.describe_group("t", v)),
            ("lag", "topic", lambda v: a.lag(v, "g")),
            ("lag", "group", lambda v: a.lag("t", v)),
            ("reset_offsets", "topic", lambda v: a.reset_offsets(v, "g", dry_run=True)),
            ("reset_offsets", "group", lambda v: a.reset_offsets("t", v, dry_run=True)),
            ("trim", "topic", lambda v: a.trim(v)),
            ("dead_letters", "topic", lambda v: a.dead_letters(v, "g")),
            ("dead_letters", "group", lambda v: a.dead_letters("t", v)),
            ("count_dead_letters", "topic", lambda v: a.count_dead_letters(v, "g")),
            ("count_dead_letters", "group", lambda v: a.count_dead_letters("t", v)),
            ("requeue_dead_letters", "topic", lambda v: a.requeue_dead_letters(v, "g")),
            ("requeue_dead_letters", "group", lambda v: a.requeue_dead_letters("t", v)),
            ("delete_dead_letters", "topic", lambda v: a.delete_dead_letters(v, "g", ["1-0"])),
            ("delete_dead_letters", "group", lambda v: a.delete_dead_letters("t", v, ["1-0"])),
            ("purge_dead_letters", "topic", lambda v: a.purge_dead_letters(v, "g")),
            ("purge_dead_letters", "group", lambda v: a.purge_dead_letters("t", v)),
        ]
    }
    return {
        **name_cases,
        "create_topic.partitions": (
            lambda v: a.create_topic(fresh, v),
            lambda v: is_positive_int(v) and v <= 10_000,  # type: ignore[operator]
        ),
        "create_topic.maxlen": (
            lambda v: a.create_topic(fresh, maxlen=v),
            optional(is_positive_int),
        ),
        "create_topic.retention_ms": (
            lambda v: a.create_topic(fresh, retention_ms=v),
            optional(is_positive_int),
        ),
        # Non-finite and huge ttls were a bug (own test below); left out here.
        "create_topic.ttl": (
            lambda v: a.create_topic(fresh, ttl=v),
            lambda v: v is None or is_positive(v) or (isinstance(v, float) and not math.isfinite(v)),
        ),
        "alter_partitions.new_count": (
            lambda v: a.alter_partitions("t", v),
            lambda v: is_positive_int(v) and v <= 10_000,  # type: ignore[operator]
        ),
        "reset_offsets.to": (lambda v: a.reset_offsets("t", "g", to=v, dry_run=True), _to),
        # A float or bool in range was accepted (own test below): left out here.
        "reset_offsets.partition": (
            lambda v: a.reset_offsets("t", "g", partition=v, dry_run=True),
            lambda v: v is None or (isinstance(v, int | float) and 0 <= v < PARTITIONS),
        ),
        "trim.maxlen": (
            lambda v: a.trim("t", maxlen=v),
            optional(lambda v: isinstance(v, int) and v >= 0),
        ),
        # A negative retention_ms was accepted (own test below), and so is any
        # falsy value (taken for "no retention"): left out here.
        "trim.retention_ms": (
            lambda v: a.trim("t", retention_ms=v),
            lambda v: not v or isinstance(v, int),
        ),
        # Falsy means "from the start"; an int n reaches Redis as the id n-0.
        "dead_letters.after": (
            lambda v: a.dead_letters("t", "g", after=v),
            lambda v: not v or _to(v) or (isinstance(v, int) and v >= 0),  # type: ignore[operator]
        ),
        # A str was taken as an iterable of one-character ids (own test below).
        "requeue_dead_letters.ids": (
            lambda v: a.requeue_dead_letters("t", "g", v),
            lambda v: v is None or _ids(v),
        ),
        "delete_dead_letters.ids": (lambda v: a.delete_dead_letters("t", "g", v), _ids),
    }


def test_wrong_types_to_admin_methods_raise_typed_errors_and_write_nothing(
    runner: asyncio.Runner, admin_world: World
) -> None:
    cases = admin_cases(admin_world.admin)
    before = runner.run(snapshot(admin_world.r, admin_world.ns))

    runs: list[None] = []

    @fuzz
    @given(case=st.sampled_from(sorted(cases)), value=junk)
    def check(case: str, value: Any) -> None:
        call, valid = cases[case]
        assume(not valid(value))
        runs.append(None)
        runner.run(raises_typed(lambda: call(value)))

    check()
    assert len(runs) >= EXAMPLES
    assert runner.run(snapshot(admin_world.r, admin_world.ns)) == before


def test_wrong_types_to_producer_and_consumer_methods_raise_typed_errors(
    runner: asyncio.Runner, consuming: World
) -> None:
    p, c = consuming.producer, consuming.consumer
    assert c is not None
    before = runner.run(consuming.lengths())
    tps = _iterable_of(TopicPartition)
    cases: dict[str, tuple[Callable[[Any], Any], Callable[[object], bool]]] = {
        "send.topic": (lambda v: p.send(v, 1), is_name),
        "send_batch.topic": (lambda v: p.send_batch(v, [1]), is_name),
        "send_batch.records": (
            lambda v: p.send_batch("t", v),
            # Any iterable is a list of bare values: a str is a batch of characters.
            lambda v: isinstance(v, str | bytes | list | tuple | set | dict | range),
        ),
        "partitions_for.topic": (lambda v: p.partitions_for(v), is_name),
        "ack.msg": (lambda v: c.ack(v), lambda v: isinstance(v, Message)),
        "ack_many.msgs": (lambda v: c.ack_many(v), _iterable_of(Message)),
        "pause.partitions": (
            lambda v: c.pause(v),
            lambda v: isinstance(v, TopicPartition) or tps(v),
        ),
        "resume.partitions": (
            lambda v: c.resume(v),
            lambda v: isinstance(v, TopicPartition) or tps(v),
        ),
    }

    runs: list[None] = []

    @fuzz
    @given(case=st.sampled_from(sorted(cases)), value=junk)
    def check(case: str, value: Any) -> None:
        call, valid = cases[case]
        assume(not valid(value))
        runs.append(None)
        runner.run(raises_typed(lambda: call(value)))

    check()
    assert len(runs) >= EXAMPLES
    assert runner.run(consuming.lengths()) == before
    assert consuming.processing is not None and not consuming.processing.done()


# --------------------------------------------------------------------------- regressions: bugs found above


def test_nan_and_infinity_are_rejected_not_stored_as_null(
    runner: asyncio.Runner, world: World
) -> None:
    before = runner.run(world.lengths())
    for value in (math.nan, {"price": math.inf}, [1.0, -math.inf]):
        runner.run(raises_typed(lambda v=value: world.producer.send("t", v), SerializationError))
    assert runner.run(world.lengths()) == before


def test_a_huge_ttl_is_rejected_with_config_error(runner: asyncio.Runner, world: World) -> None:
    runner.run(raises_typed(lambda: world.producer.send("t", 1, ttl=1e300), ConfigError))


def test_falsy_non_mapping_headers_are_rejected(runner: asyncio.Runner, world: World) -> None:
    before = runner.run(world.lengths())
    for headers in (0, "", [], (), set(), 0.0, b""):
        runner.run(
            raises_typed(lambda h=headers: world.producer.send("t", 1, headers=h), TypeError)
        )
    assert runner.run(world.lengths()) == before


def test_reserved_header_names_are_rejected_before_anything_is_written(
    runner: asyncio.Runner, world: World
) -> None:
    """A producer must not forge redcurrent's own headers: a message carrying the requeue
    header naming another group would be skipped by every group but that one."""
    before = runner.run(snapshot(world.r, world.ns))
    for name in (REQUEUE_HEADER, RESERVED_HEADER_PREFIX, RESERVED_HEADER_PREFIX + "x"):
        for call in (
            lambda n=name: world.producer.send("t", "hello", headers={n: "another-group"}),
            lambda n=name: world.producer.send_batch(
                "t", [Record("ok"), Record("hello", headers={"a": "1", n: "g"})]
            ),
        ):
            exc = runner.run(raises_typed(call, ValueError))
            assert "reserved" in str(exc) and repr(name) in str(exc), exc
    assert runner.run(snapshot(world.r, world.ns)) == before
    # Only the prefix is reserved: a name that merely contains it is a plain header.
    meta = runner.run(world.producer.send("t", "hello", headers={"x-rc-": "1", "RC-x": "2"}))
    assert meta.id


@pytest.mark.parametrize("name", [".", "..", "...", "-", "--", "-orders"])
def test_dot_only_and_dash_led_topic_names_are_rejected_before_anything_is_written(
    runner: asyncio.Runner, world: World, name: str
) -> None:
    before = runner.run(snapshot(world.r, world.ns))
    rule = "only of dots" if name.startswith(".") else "cannot start with '-'"
    for call in (
        lambda: world.admin.create_topic(name, 2),
        lambda: world.producer.send(name, 1),  # would auto-create the topic
        lambda: Consumer(name, group="g", url=world.url),
        lambda: world.admin.describe_group("t", name),  # groups follow the same rule
    ):
        exc = runner.run(raises_typed(call, ConfigError))
        assert rule in str(exc), exc
    assert runner.run(snapshot(world.r, world.ns)) == before


def test_a_bad_partition_is_rejected_before_the_topic_is_auto_created(
    runner: asyncio.Runner, world: World
) -> None:
    for partition in (True, 1.5, "0", -1):
        topic = fresh_topic()
        runner.run(
            raises_typed(lambda t=topic, p=partition: world.producer.send(t, 1, partition=p))
        )
        assert not runner.run(world.r.exists(world.keys.meta(topic))), (
            f"partition={partition!r} created {topic}"
        )
    topic = fresh_topic()
    runner.run(raises_typed(lambda: world.producer.send_batch(topic, [Record(1, partition="x")])))
    assert not runner.run(world.r.exists(world.keys.meta(topic)))


def test_a_foreign_entry_with_a_dash_format_is_dead_lettered_with_its_fields(
    runner: asyncio.Runner, consuming: World
) -> None:
    stream = consuming.keys.stream("t", 2)
    eid = runner.run(consuming.r.xadd(stream, {b"f": b"-", b"v": b"foreign data"})).decode()

    async def letter() -> Any:
        raw = await consuming.r.xrange(consuming.keys.dead_letters("t", "g"))
        return next((f for _, f in raw if f[b"id"].decode() == eid), None)

    stored = runner.run(eventually(letter, timeout=10))
    assert stored[b"reason"] != b"trimmed"
    assert stored.get(b"raw.v", stored.get(b"v")) == b"foreign data"


def test_bool_options_reject_non_bools(runner: asyncio.Runner, admin_world: World) -> None:
    a = admin_world.admin
    for make in (
        lambda: Producer(URL, idempotent="no"),
        lambda: Producer(URL, auto_create_topics="no"),
        lambda: Consumer("t", group="g", url=URL, auto_ack="no"),
        lambda: a.create_topic("t", exist_ok="no"),
        lambda: a.create_topic("u", dead_letter_expired="no"),
        lambda: a.reset_offsets("t", "g", force="no", dry_run=True),
        lambda: a.trim("t", safe="no"),
    ):
        runner.run(raises_typed(make))


def test_process_rejects_a_non_callable_handler(runner: asyncio.Runner, consuming: World) -> None:
    async def run() -> None:
        c = Consumer("t", group="other", url=consuming.url, namespace=consuming.ns)
        await c.start()
        try:
            with pytest.raises((TypeError, ConfigError)):
                await asyncio.wait_for(c.process(5), 1.0)  # type: ignore[arg-type]
        finally:
            await c.stop()

    runner.run(run())


def test_admin_ttl_must_be_finite_and_sane(runner: asyncio.Runner, admin_world: World) -> None:
    a = admin_world.admin
    for ttl in (math.inf, math.nan, 1e300):
        topic = fresh_topic()
        runner.run(raises_typed(lambda t=topic, v=ttl: a.create_topic(t, ttl=v), ConfigError))
        assert not runner.run(admin_world.r.exists(admin_world.keys.meta(topic)))


def test_dead_letters_rejects_a_bad_count(runner: asyncio.Runner, admin_world: World) -> None:
    for count in (0, -1, "x", 1.5):
        runner.run(raises_typed(lambda c=count: admin_world.admin.dead_letters("t", "g", count=c)))


def test_requeue_dead_letters_rejects_a_str_for_ids(
    runner: asyncio.Runner, admin_world: World
) -> None:
    runner.run(
        raises_typed(
            lambda: admin_world.admin.requeue_dead_letters("t", "g", "1700000000000-0"), TypeError
        )
    )


def test_trim_rejects_a_negative_retention(runner: asyncio.Runner, admin_world: World) -> None:
    runner.run(raises_typed(lambda: admin_world.admin.trim("t", retention_ms=-1000), ConfigError))


def test_reset_offsets_to_an_impossible_id_changes_nothing(
    runner: asyncio.Runner, admin_world: World
) -> None:
    w = admin_world

    async def run() -> None:
        for i in range(3):
            await w.producer.send("t", i, partition=0)
        stream = w.keys.stream("t", 0)
        await w.r.xreadgroup("g", "someone", {stream: ">"})  # three entries now pending
        before = await snapshot(w.r, w.ns)
        with pytest.raises(TYPED):
            await w.admin.reset_offsets("t", "g", to="18446744073709551617-0", partition=0)
        assert await snapshot(w.r, w.ns) == before

    runner.run(run())


def test_reset_offsets_rejects_a_non_int_partition(
    runner: asyncio.Runner, admin_world: World
) -> None:
    for partition in (1.5, 0.0, True):
        runner.run(
            raises_typed(
                lambda p=partition: admin_world.admin.reset_offsets(
                    "t", "g", partition=p, dry_run=True
                ),
                TypeError,
            )
        )


def test_epoch_of_an_unsubscribed_topic_is_a_typed_error(
    runner: asyncio.Runner, consuming: World
) -> None:
    assert consuming.consumer is not None
    c = consuming.consumer
    for topic in ("not-subscribed", 5):
        with pytest.raises((TypeError, ValueError)):
            c.epoch(topic)  # type: ignore[arg-type]
