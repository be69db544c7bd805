"""Format 2: the common record as one stream field, written and read on a real server.

The producer writes a record without headers, TTL or dedup key as an entry of ONE
field: its name is "2", the codec letter (j JSON, b bytes, c custom serializer), the
key type letter (n none, s str, b bytes) and the key bytes; its value is the value
bytes (``XADD stream * 2jsuser-1 {"id":1}``). Anything else stays format 1 (f, v, k,
h, x). Consumers read both; a one-field entry whose name is not a format-2 name is a
foreign entry: dead-lettered with its field kept (``raw.<name>``), and the consumer
goes on. Every layout is checked with XRANGE in Redis itself.
"""

from __future__ import annotations

from typing import Any

import pytest
from support.consuming import make_consumer, start_processing, stop_all
from support.entries import as_fields
from support.eventually import eventually
from support.servers import AsyncClient, Target

from redcurrent import Admin, Consumer, DeadLetter, Message, Producer, Record
from redcurrent.keys import Keys


async def raw_entries(client: AsyncClient, namespace: str, topic: str, partition: int = 0) -> dict[str, dict[bytes, bytes]]:
    """The entries of one partition stream by id, their fields exactly as stored."""
    return {eid.decode(): dict(fields) for eid, fields in await client.xrange(Keys(namespace).stream(topic, partition))}


async def xadd_all(client: AsyncClient, namespace: str, topic: str, entries: list[dict[bytes, bytes]]) -> list[str]:
    stream = Keys(namespace).stream(topic, 0)
    return [(await client.xadd(stream, fields)).decode() for fields in entries]  # type: ignore[arg-type]


class Inbox:
    def __init__(self) -> None:
        self.messages: dict[str, Message] = {}

    async def handle(self, msg: Message) -> None:
        self.messages[msg.id] = msg


async def consume(url: str, namespace: str, topic: str, until: Any, **options: Any) -> Inbox:
    """Run one consumer (group "g", from the start of the topic) until ``until(inbox)``."""
    inbox = Inbox()
    consumer = make_consumer(url, namespace, topic, start="earliest", **options)
    task = start_processing(consumer, inbox.handle)
    try:
        await eventually(lambda: until(inbox), timeout=15, message="not consumed")
    finally:
        await stop_all((consumer, task))
    return inbox


# --------------------------------------------------------------------------- what the producer writes


async def test_the_common_record_is_one_field_and_the_others_stay_format_1(
    target: Target, target_client: AsyncClient, admin: Admin, namespace: str
) -> None:
    await admin.create_topic("fmt", partitions=1)
    async with Producer(target.url, namespace=namespace) as producer:
        keyed = await producer.send("fmt", {"id": 1}, key="user-1")
        keyless = await producer.send("fmt", "x")
        bytes_key = await producer.send("fmt", [1, 2], key=b"\xff\x00")
        bytes_value = await producer.send("fmt", b"\x00raw", key="k")
        empty_key = await producer.send("fmt", 7, key="")
        headed = await producer.send("fmt", {"id": 2}, key="user-2", headers={"src": "web"})
        headed_keyless = await producer.send("fmt", 3, headers={"a": "b"})
        with_ttl = await producer.send("fmt", 4, key="t", ttl=60)
        deduped = await producer.send("fmt", 5, key="d", dedup_key="once")
        # a batch: the inlined keyed JSON path, a bare value, and records of every kind
        batch = await producer.send_batch(
            "fmt",
            [Record({"b": 0}, key="bk"), {"b": 1}, Record(b"\x01", key=b"\x02"), Record({"b": 3}, headers={"h": "1"})],
        )
        # a batch with a dedup key: its plain records are still one field each
        mixed = await producer.send_batch(
            "fmt", [Record("p", key="pk"), Record("q", key="qk", dedup_key="dq"), Record("r")]
        )
    stored = await raw_entries(target_client, namespace, "fmt")
    assert stored[keyed.id] == {b"2jsuser-1": b'{"id":1}'}
    assert stored[keyless.id] == {b"2jn": b'"x"'}
    assert stored[bytes_key.id] == {b"2jb\xff\x00": b"[1,2]"}
    assert stored[bytes_value.id] == {b"2bsk": b"\x00raw"}
    assert stored[empty_key.id] == {b"2js": b"7"}  # an empty key is still a key: "s", no bytes
    assert stored[headed.id] == {b"f": b"1js", b"v": b'{"id":2}', b"k": b"user-2", b"h": b'{"src":"web"}'}
    assert stored[headed_keyless.id] == {b"f": b"1jn", b"v": b"3", b"h": b'{"a":"b"}'}
    ttl_fields = stored[with_ttl.id]
    assert ttl_fields.keys() == {b"f", b"v", b"k", b"x"}
    assert (ttl_fields[b"f"], ttl_fields[b"v"], ttl_fields[b"k"]) == (b"1js", b"4", b"t")
    assert stored[deduped.id] == {b"f": b"1js", b"v": b"5", b"k": b"d"}  # the dedup key is not stored
    assert [stored[m.id] for m in batch] == [
        {b"2jsbk": b'{"b":0}'},
        {b"2jn": b'{"b":1}'},
        {b"2bb\x02": b"\x01"},
        {b"f": b"1jn", b"v": b'{"b":3}', b"h": b'{"h":"1"}'},
    ]
    assert [stored[m.id] for m in mixed] == [
        {b"2jspk": b'"p"'},
        {b"f": b"1js", b"v": b'"q"', b"k": b"qk"},
        {b"2jn": b'"r"'},
    ]
    assert len(stored) == 9 + 4 + 3  # nothing else was written


async def test_a_custom_serializer_writes_codec_c_in_the_field_name(
    target: Target, target_client: AsyncClient, admin: Admin, namespace: str
) -> None:
    await admin.create_topic("custom", partitions=1)
    async with Producer(target.url, namespace=namespace, serializer=lambda v: repr(v).encode()) as producer:
        keyless = await producer.send("custom", (1, 2))
        keyed = await producer.send("custom", {"a"}, key="k")
        [batched] = await producer.send_batch("custom", [Record(None, key=b"b")])
    stored = await raw_entries(target_client, namespace, "custom")
    assert stored == {keyless.id: {b"2cn": b"(1, 2)"}, keyed.id: {b"2csk": b"{'a'}"}, batched.id: {b"2cbb": b"None"}}


async def test_what_the_producer_writes_comes_back_unchanged_through_a_consumer(
    target: Target, target_client: AsyncClient, admin: Admin, namespace: str
) -> None:
    """Round trip of every format-2 shape (and the format-1 ones next to them)."""
    await admin.create_topic("rt", partitions=1)
    sent = [
        ({"id": 1}, "user-1", None),
        ("x", None, None),
        ([1, 2], b"\xff\x00", None),
        (b"\x00raw", "k\u00e9", None),
        (b"\x01", b"\x02", None),
        (b"", None, None),
        (None, "", None),
        ({"id": 2}, "user-2", {"src": "web"}),
    ]
    async with Producer(target.url, namespace=namespace) as producer:
        metas = [await producer.send("rt", v, key=k, headers=h) for v, k, h in sent]
    layouts = await raw_entries(target_client, namespace, "rt")
    assert sum(len(f) == 1 for f in layouts.values()) == 7  # all but the one with headers
    inbox = await consume(target.url, namespace, "rt", lambda i: len(i.messages) == len(sent))
    for (value, key, headers), meta in zip(sent, metas, strict=True):
        msg = inbox.messages[meta.id]
        assert (msg.value, msg.key, dict(msg.headers)) == (value, key, headers or {})
        assert type(msg.value) is type(value) and type(msg.key) is type(key)
        assert msg.timestamp == meta.timestamp and msg.expires_at is None


# --------------------------------------------------------------------------- what a foreign producer writes


FOREIGN: list[tuple[dict[bytes, bytes], Any, Any]] = [
    # (the one field, the key, the value a consumer gets)
    ({b"2jsk1": b'{"a":1}'}, "k1", {"a": 1}),
    ({b"2jn": b'"x"'}, None, "x"),
    ({b"2bbkey": b"\x00\x01"}, b"key", b"\x00\x01"),
    ({b"2bs" + "\u00e9".encode(): b"\xff"}, "\u00e9", b"\xff"),
    ({b"2jb\x00": b"[null]"}, b"\x00", [None]),
    ({b"2js": b"1.5"}, "", 1.5),
    ({b"2bn": b""}, None, b""),
    ({b"2cn": b"opaque"}, None, b"opaque"),  # custom without a deserializer: its bytes
    ({b"2cs2js": b"c"}, "2js", b"c"),  # the key is whatever follows the letters
]


async def test_format2_entries_of_a_foreign_producer_are_consumed_with_the_right_types(
    target: Target, target_client: AsyncClient, admin: Admin, namespace: str
) -> None:
    await admin.create_topic("foreign", partitions=1)
    ids = await xadd_all(target_client, namespace, "foreign", [fields for fields, _, _ in FOREIGN])
    inbox = await consume(target.url, namespace, "foreign", lambda i: len(i.messages) == len(FOREIGN))
    for eid, (fields, key, value) in zip(ids, FOREIGN, strict=True):
        msg = inbox.messages[eid]
        assert (msg.key, msg.value) == (key, value), fields
        assert type(msg.key) is type(key) and type(msg.value) is type(value), fields
        assert (msg.topic, msg.partition, dict(msg.headers), msg.expires_at) == ("foreign", 0, {}, None)
        assert msg.timestamp == int(eid.split("-")[0]) and msg.attempts == 1
    # read without a group, the same
    read = {m.id: m for m in await admin.read_partition("foreign", 0)}
    for eid, (_, key, value) in zip(ids, FOREIGN, strict=True):
        assert (read[eid].key, read[eid].value, read[eid].headers) == (key, value, {})
    info = await admin.describe_group("foreign", "g")
    assert info.pending == 0 and info.lag == 0
    assert await admin.count_dead_letters("foreign", "g") == 0


async def test_a_deserializer_reads_format2_json_and_custom_values(
    target: Target, target_client: AsyncClient, admin: Admin, namespace: str
) -> None:
    await admin.create_topic("de", partitions=1)
    ids = await xadd_all(
        target_client, namespace, "de", [{b"2cbk": b"custom"}, {b"2jn": b"[1]"}, {b"2bs1": b"raw"}]
    )

    def de(data: bytes) -> Any:
        return ("de", data)

    inbox = await consume(target.url, namespace, "de", lambda i: len(i.messages) == 3, deserializer=de)
    got = [(inbox.messages[i].key, inbox.messages[i].value) for i in ids]
    assert got == [(b"k", ("de", b"custom")), (None, ("de", b"[1]")), ("1", b"raw")]  # raw bytes: untouched


# --------------------------------------------------------------------------- one field, not format 2


NOT_FORMAT_2: list[dict[bytes, bytes]] = [
    {b"2zzk": b"x"},  # unknown codec and key type letters
    {b"hello": b"x"},  # no format at all
    {b"2jxk": b"1"},  # unknown key type
    {b"2qs": b"1"},  # unknown codec
    {b"2j": b"1"},  # too short
    {b"3jsk": b"1"},  # another version
    {b"\x00\xff": b"\xfe"},  # not even text
]


async def dead_letter_fields(client: AsyncClient, namespace: str, topic: str, n: int) -> dict[str, dict[bytes, bytes]]:
    """Group g's dead letters of ``topic`` as raw fields, by original id; asserts there are ``n``."""
    raw = await client.xrange(Keys(namespace).dead_letters(topic, "g"))
    out = {f[b"id"].decode(): dict(f) for _, f in raw}
    assert len(out) == n
    return out


async def test_a_one_field_entry_that_is_not_format2_is_dead_lettered_with_its_field(
    target: Target, target_client: AsyncClient, admin: Admin, namespace: str
) -> None:
    await admin.create_topic("bad", partitions=1)
    bad_ids = await xadd_all(target_client, namespace, "bad", NOT_FORMAT_2)
    [after] = await xadd_all(target_client, namespace, "bad", [{b"2jsok": b'"after"'}])
    inbox = await consume(target.url, namespace, "bad", lambda i: after in i.messages)
    # the consumer went on: the good entry behind them was handled, and only it
    assert list(inbox.messages) == [after] and inbox.messages[after].value == "after"
    assert inbox.messages[after].key == "ok"

    dead = await eventually(lambda: dead_letter_fields(target_client, namespace, "bad", len(NOT_FORMAT_2)),
                            timeout=10, message="not dead-lettered")
    assert sorted(dead) == sorted(bad_ids)  # each once
    for eid, fields in zip(bad_ids, NOT_FORMAT_2, strict=True):
        letter = dead[eid]
        assert letter[b"reason"] == b"decode_error"
        assert letter[b"error"].startswith(b"missing format field: not a redcurrent entry"), letter
        assert letter[b"topic"] == b"bad" and letter[b"partition"] == b"0"
        # nothing lost: the original field, as it was, and no made-up format-1 field
        kept = {k[4:]: v for k, v in letter.items() if k.startswith(b"raw.")}
        assert kept == fields
        assert not {b"f", b"v", b"k"} & letter.keys()
    records = {d.id: d for d in await admin.dead_letters("bad", "g")}
    assert all(records[eid].reason == "decode_error" for eid in bad_ids)
    info = await admin.describe_group("bad", "g")
    assert info.pending == 0 and info.lag == 0


async def test_a_format2_entry_that_does_not_decode_is_dead_lettered_as_its_format1_fields(
    target: Target, target_client: AsyncClient, admin: Admin, namespace: str
) -> None:
    """A valid format-2 name with a value (or key) that does not decode: the dead letter
    keeps it as the format-1 fields it stands for (f, v, k), so it can be read and
    requeued like any other."""
    await admin.create_topic("poison", partitions=1)
    entries = [{b"2jsk": b"{not json"}, {b"2js\xff": b"1"}, {b"2jn": b"nope"}]
    ids = await xadd_all(target_client, namespace, "poison", [*entries, {b"2jn": b'"after"'}])
    inbox = await consume(target.url, namespace, "poison", lambda i: ids[-1] in i.messages)
    assert list(inbox.messages) == [ids[-1]]

    dead = await eventually(lambda: dead_letter_fields(target_client, namespace, "poison", len(entries)),
                            timeout=10, message="not dead-lettered")
    assert sorted(dead) == sorted(ids[:-1])
    for eid, fields in zip(ids[:-1], entries, strict=True):
        letter = dead[eid]
        assert letter[b"reason"] == b"decode_error", letter
        original = {k: v for k, v in letter.items() if k in (b"f", b"v", b"k", b"h", b"x", b"t")}
        assert original == as_fields(fields)  # f, v and (keyed) k: nothing lost
        assert not any(k.startswith(b"raw.") for k in letter)
    records = {d.id: d for d in await admin.dead_letters("poison", "g")}
    assert records[ids[0]].raw_value == b"{not json" and records[ids[0]].key == b"k"
    assert records[ids[1]].raw_value == b"1" and records[ids[1]].key == b"\xff"  # not UTF-8: kept as bytes
    assert records[ids[2]].raw_value == b"nope" and records[ids[2]].key is None


async def test_a_format2_message_dead_lettered_by_its_handler_is_requeued_with_key_and_value(
    target: Target, target_client: AsyncClient, admin: Admin, namespace: str
) -> None:
    await admin.create_topic("dl", partitions=1)
    async with Producer(target.url, namespace=namespace) as producer:
        metas = [await producer.send("dl", {"n": 1}, key="k1"), await producer.send("dl", b"\x00", key=b"\x01")]
    assert all(len(f) == 1 for f in (await raw_entries(target_client, namespace, "dl")).values())

    async def give_up(msg: Message) -> None:
        raise DeadLetter("not now")

    consumer: Consumer = make_consumer(target.url, namespace, "dl", start="earliest")
    task = start_processing(consumer, give_up)
    try:
        async def both() -> bool:
            return await admin.count_dead_letters("dl", "g") == 2

        await eventually(both, timeout=15)
    finally:
        await stop_all((consumer, task))
    records = {d.id: d for d in await admin.dead_letters("dl", "g")}
    assert (records[metas[0].id].key, records[metas[0].id].value) == ("k1", {"n": 1})
    assert (records[metas[1].id].key, records[metas[1].id].value) == (b"\x01", b"\x00")
    assert await admin.requeue_dead_letters("dl", "g") == 2
    back = [f for eid, f in (await raw_entries(target_client, namespace, "dl")).items()
            if eid not in {m.id for m in metas}]
    # requeued with the group header: format 1, with the key and value of the original
    assert [(f[b"f"], f[b"v"], f[b"k"]) for f in back] == [(b"1js", b'{"n":1}', b"k1"), (b"1bb", b"\x00", b"\x01")]
    assert all(b"rc-requeue-group" in f[b"h"] for f in back)


@pytest.mark.parametrize("value", [{"id": 1}, b"\x00"])
async def test_a_topic_ttl_makes_the_common_record_format_1_with_its_expiry(
    target: Target, target_client: AsyncClient, admin: Admin, namespace: str, value: Any
) -> None:
    """Format 2 has no expiry field: on a topic with a default TTL, the record is format 1."""
    await admin.create_topic("ttl", partitions=1, ttl=60)
    async with Producer(target.url, namespace=namespace) as producer:
        await producer.partitions_for("ttl")  # known before the send: framed with the TTL
        known = await producer.send("ttl", value, key="k")
    async with Producer(target.url, namespace=namespace) as producer:
        first = await producer.send("ttl", value, key="k")  # framed before the lookup
    stored = await raw_entries(target_client, namespace, "ttl")
    codec = b"j" if isinstance(value, dict) else b"b"
    for meta in (known, first):
        fields = stored[meta.id]
        assert fields.keys() == {b"f", b"v", b"k", b"x"}, fields
        assert (fields[b"f"], fields[b"k"]) == (b"1" + codec + b"s", b"k")
        assert abs(int(fields[b"x"]) - (meta.timestamp + 60_000)) < 5_000
