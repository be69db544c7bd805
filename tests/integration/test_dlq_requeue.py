"""Requeueing dead letters: what can go back goes back, what cannot is named by its id.

A dead letter is the group's copy of a message it could not handle; an entry written
by a foreign or broken producer is dead-lettered too, with its fields as they were.
Such a dead letter may not be requeueable (its headers are not JSON), and it must not
stop the requeue of the others nor be lost: it stays in the dead-letter stream and
``RequeueError`` names it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis.asyncio
from support.entries import as_fields
from support.eventually import eventually

import redcurrent
from redcurrent import Admin, Consumer, Message, Producer, Record, RedcurrentError, RequeueError
from redcurrent.keys import Keys

# Format-1 entries whose headers field is broken: a consumer dead-letters them as they are.
NOT_JSON = {b"f": b"1jn", b"v": b'{"n": "broken"}', b"h": b"{not json"}
NOT_AN_OBJECT = {b"f": b"1jn", b"v": b'{"n": "list"}', b"h": b"[1, 2]"}


pytestmark = pytest.mark.single_node  # conftest's admin, on one node


async def dead_letter_all(
    redis_url: str, namespace: str, admin: Admin, r: redis.asyncio.Redis, entries: list[Any]
) -> list[str]:
    """Write ``entries`` to topic t's one partition, in order (an int n: a good message
    {"n": n} with key and headers; a Record: sent as it is; a dict: a raw entry), let
    group g dead-letter every one, and return their
    dead-letter ids in the order of ``entries`` (not the dead-letter stream's order: a
    broken entry is dead-lettered as it is fetched, before the handlers run)."""
    await admin.create_topic("t", 1)
    stream = Keys(namespace).stream("t", 0)
    written: list[str] = []
    async with Producer(redis_url, namespace=namespace) as producer:
        for entry in entries:
            if isinstance(entry, int):
                meta = await producer.send(
                    "t", {"n": entry}, key=f"k{entry}", headers={"trace": str(entry)}
                )
                written.append(meta.id)
            elif isinstance(entry, Record):
                written.append((await producer.send_batch("t", [entry]))[0].id)
            else:
                written.append((await r.xadd(stream, entry)).decode())

    async def give_up(msg: Message) -> None:
        raise redcurrent.DeadLetter("not now")

    async with Consumer(
        "t", group="g", url=redis_url, namespace=namespace, start="earliest",
        heartbeat_interval=0.2, session_timeout=2.0,
    ) as consumer:
        task = asyncio.create_task(consumer.process(give_up))

        async def all_dead() -> bool:
            return await admin.count_dead_letters("t", "g") == len(entries)

        await eventually(all_dead, timeout=15)
        await consumer.stop()
        await task
    by_entry = {d.id: d.dead_letter_id for d in await admin.dead_letters("t", "g")}
    assert sorted(by_entry) == sorted(written)
    return [by_entry[i] for i in written]


async def requeued(r: redis.asyncio.Redis, namespace: str) -> list[dict[bytes, bytes]]:
    """Fields of the entries a requeue wrote to the partition (they carry the group header),
    in their format-1 view."""
    entries = await r.xrange(Keys(namespace).stream("t", 0))
    views = [as_fields(f) for _, f in entries]
    return [f for f in views if b"rc-requeue-group" in f.get(b"h", b"")]


async def test_one_undecodable_dead_letter_does_not_stop_the_requeue_of_the_others(
    redis_url: str, namespace: str, admin: Admin, r: redis.asyncio.Redis
) -> None:
    ids = await dead_letter_all(redis_url, namespace, admin, r, [NOT_JSON, 0, 1, 2])
    broken = ids[0]

    with pytest.raises(RequeueError) as err:
        await admin.requeue_dead_letters("t", "g")

    assert isinstance(err.value, RedcurrentError)
    assert err.value.moved == 3  # the good ones after the broken one too
    assert list(err.value.failed) == [broken]
    assert "headers" in err.value.failed[broken] and "not JSON" in err.value.failed[broken]
    assert broken in str(err.value)
    # The broken one is kept, the others left the dead-letter stream...
    assert [d.dead_letter_id for d in await admin.dead_letters("t", "g")] == [broken]
    # ...and are back on the partition, in order, with their key and headers.
    back = await requeued(r, namespace)
    assert [f[b"v"] for f in back] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    assert [f[b"k"] for f in back] == [b"k0", b"k1", b"k2"]
    assert [json.loads(f[b"h"]) for f in back] == [
        {"trace": str(n), "rc-requeue-group": "g"} for n in range(3)
    ]


async def test_a_requeue_that_cannot_move_a_dead_letter_says_why_every_time(
    redis_url: str, namespace: str, admin: Admin, r: redis.asyncio.Redis
) -> None:
    ids = await dead_letter_all(redis_url, namespace, admin, r, [NOT_JSON, NOT_AN_OBJECT, 5])

    with pytest.raises(RequeueError) as first:
        await admin.requeue_dead_letters("t", "g")
    assert first.value.moved == 1
    assert sorted(first.value.failed) == sorted(ids[:2])
    assert "not a JSON object" in first.value.failed[ids[1]]

    # Asked again, or by id: nothing more moves, the same ids are named, nothing is lost.
    for call in (
        admin.requeue_dead_letters("t", "g"),
        admin.requeue_dead_letters("t", "g", [ids[1]]),
    ):
        with pytest.raises(RequeueError) as again:
            await call
        assert again.value.moved == 0
        assert set(again.value.failed) <= set(ids[:2])
    assert [d.dead_letter_id for d in await admin.dead_letters("t", "g")] == ids[:2]
    assert len(await requeued(r, namespace)) == 1


async def test_requeue_returns_how_many_moved_when_every_one_could_be(
    redis_url: str, namespace: str, admin: Admin, r: redis.asyncio.Redis
) -> None:
    ids = await dead_letter_all(redis_url, namespace, admin, r, [0, 1])
    assert await admin.requeue_dead_letters("t", "g", [ids[1]]) == 1
    assert await admin.requeue_dead_letters("t", "g") == 1
    assert await admin.requeue_dead_letters("t", "g") == 0
    assert len(await requeued(r, namespace)) == 2


async def test_a_dead_letter_whose_message_was_not_kept_is_not_requeued_as_an_empty_entry(
    redis_url: str, namespace: str, admin: Admin, r: redis.asyncio.Redis
) -> None:
    """A dead letter for an entry trimmed while pending has no message to put back."""
    await admin.create_topic("t", 1)
    dlq = Keys(namespace).dead_letters("t", "g")
    trimmed = (
        await r.xadd(
            dlq,
            {"topic": "t", "partition": 0, "id": "1-1", "group": "g", "consumer": "c",
             "reason": "trimmed", "attempts": 1, "time": 1},
        )
    ).decode()
    with pytest.raises(RequeueError) as err:
        await admin.requeue_dead_letters("t", "g")
    assert err.value.moved == 0
    assert "trimmed" in err.value.failed[trimmed]
    assert await r.xlen(Keys(namespace).stream("t", 0)) == 0
    assert await admin.count_dead_letters("t", "g") == 1


async def test_dead_letters_of_format2_entries_go_back_with_their_key_and_value(
    redis_url: str, namespace: str, admin: Admin, r: redis.asyncio.Redis
) -> None:
    """The common record is one field (format 2): its dead letter keeps it as the format-1
    fields it stands for, so a requeue puts back the same key and value; a one-field
    entry that is not format 2 was kept as its raw field and goes back as it was."""
    foreign_ok = {b"2jsk9": b'{"n":9}'}  # a foreign producer's valid format-2 entry
    foreign_bad = {b"2zzk": b"x"}  # not a format-2 name: a decode error
    ids = await dead_letter_all(
        redis_url, namespace, admin, r, [Record({"n": 7}, key="k7"), foreign_ok, Record(b"\x00", key=b"\x01"), foreign_bad]
    )
    by_id = {d.dead_letter_id: d for d in await admin.dead_letters("t", "g")}
    assert [(by_id[i].key, by_id[i].value) for i in ids[:3]] == [("k7", {"n": 7}), ("k9", {"n": 9}), (b"\x01", b"\x00")]
    assert by_id[ids[3]].reason == "decode_error"
    assert await admin.requeue_dead_letters("t", "g") == 4
    back = [f for _, f in await r.xrange(Keys(namespace).stream("t", 0))][4:]
    headers = [json.loads(f.pop(b"h")) for f in back]
    assert headers == [{"rc-requeue-group": "g"}] * 4
    # in the dead-letter stream's order (the decode error was dead-lettered at fetch,
    # before the handlers ran): compared as a set of entries
    expected = [
        {b"f": b"1js", b"v": b'{"n":7}', b"k": b"k7"},
        {b"f": b"1js", b"v": b'{"n":9}', b"k": b"k9"},
        {b"f": b"1bb", b"v": b"\x00", b"k": b"\x01"},
        foreign_bad,
    ]
    assert sorted(back, key=repr) == sorted(expected, key=repr)
