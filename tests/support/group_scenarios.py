"""Consumer-group behaviours written once, run on one node and on the 3-master cluster.

Each scenario takes the server URL, a fresh namespace and a raw client (``Redis`` or
``RedisCluster``) for reading the coordinator's state, and asserts the guarantee it is
named after.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redcurrent import Admin, Producer
from redcurrent.testing import Sent, check_history
from support.consuming import (
    HB,
    Seen,
    create_topic,
    full_and_disjoint,
    group_state,
    make_consumer,
    produce,
    settled,
    start_processing,
    stop_all,
    tps,
)
from support.eventually import eventually

TOPIC = "orders"
KEYS20 = [f"k{i}" for i in range(20)]
GROWTH_BOUND = 2 * HB + 0.3  # two heartbeat intervals, plus scheduling slack


async def every_message_once_in_per_key_order(url: str, ns: str, client: Any) -> None:
    """Two members split the partitions; each message is handled once, per-key in order."""
    await create_topic(url, ns, TOPIC, 4)
    seen = Seen()
    a = make_consumer(url, ns, TOPIC, member_id="a")
    b = make_consumer(url, ns, TOPIC, member_id="b")
    ta, tb = start_processing(a, seen.handler("a")), start_processing(b, seen.handler("b"))
    try:
        state = await eventually(
            lambda: settled(client, ns, TOPIC, [a, b], 4), 5, message="rebalanced"
        )
        assert state.assignment == {"a": [0, 2], "b": [1, 3]}
        async with Producer(url, namespace=ns) as producer:
            sent = await produce(producer, TOPIC, KEYS20, 10)
        await eventually(lambda: seen.count() >= len(sent), 10, message="all delivered")
        await asyncio.sleep(2 * HB)  # no late duplicates
        owned = {"a": a.assignment(), "b": b.assignment()}
    finally:
        await stop_all((a, ta), (b, tb))
    report = check_history(sent, seen.events)
    assert report.ok and not report.duplicated, report.summary()
    for name in ("a", "b"):  # each handled exactly its own partitions
        assert {m.partition for m in seen.handled(name)} == {tp.partition for tp in owned[name]}


async def graceful_stop_hands_over_within_2s_without_duplicates(
    url: str, ns: str, client: Any
) -> None:
    """A member that stops gracefully hands its partitions over at once: the survivor
    consumes them within 2 s, and no message is handled twice."""
    await create_topic(url, ns, TOPIC, 4)
    seen = Seen()
    a = make_consumer(url, ns, TOPIC, member_id="a")
    b = make_consumer(url, ns, TOPIC, member_id="b")
    ta, tb = (
        start_processing(a, seen.handler("a", 0.002)),
        start_processing(b, seen.handler("b", 0.002)),
    )
    sent: list[Sent] = []
    flowing = asyncio.Event()

    async def keep_producing(producer: Producer) -> None:
        seq = 0
        while not flowing.is_set():
            sent.extend(await produce(producer, TOPIC, KEYS20, 1, first_seq=seq))
            seq += 1
            await asyncio.sleep(0.02)

    try:
        await eventually(lambda: settled(client, ns, TOPIC, [a, b], 4), 5)
        moved = sorted(tp.partition for tp in a.assignment())
        async with Producer(url, namespace=ns) as producer:
            pump = asyncio.create_task(keep_producing(producer))
            await eventually(lambda: len(seen.handled("a")) > 50, 5)
            t_stop = time.monotonic_ns()
            await stop_all((a, ta))
            await eventually(
                lambda: b.assignment() == tps(TOPIC, 0, 1, 2, 3), 2, message="survivor owns all"
            )
            resumed = await eventually(lambda: _all_resumed(seen, t_stop, moved, "b"), 2.5)
            flowing.set()
            await pump
        await eventually(lambda: seen.count() >= len(sent), 10, message="every message delivered")
        await asyncio.sleep(2 * HB)
    finally:
        flowing.set()
        await stop_all((a, ta), (b, tb))
    took = (max(resumed) - t_stop) / 1e9
    assert took < 2.0, f"handoff took {took:.2f}s"
    report = check_history(sent, seen.events)
    assert report.ok and not report.duplicated, report.summary()


def _all_resumed(seen: Seen, t_ns: int, partitions: list[int], name: str) -> list[int] | None:
    firsts = [seen.first_after(t_ns, p, name) for p in partitions]
    return None if None in firsts else firsts  # type: ignore[return-value]


async def growth_bumps_the_epoch_once_and_new_partitions_are_consumed_from_the_start(
    url: str, ns: str, client: Any
) -> None:
    """alter_partitions: exactly one epoch bump, a full non-overlapping assignment, and
    entries written to the new partitions before anyone noticed are consumed, soon."""
    await create_topic(url, ns, TOPIC, 2)
    seen = Seen()
    a = make_consumer(url, ns, TOPIC, member_id="a")
    b = make_consumer(url, ns, TOPIC, member_id="b")
    ta, tb = start_processing(a, seen.handler("a")), start_processing(b, seen.handler("b"))
    try:
        before = await eventually(lambda: settled(client, ns, TOPIC, [a, b], 2), 5)
        async with Admin(url, namespace=ns) as admin:
            t_grow = time.monotonic_ns()
            await admin.alter_partitions(TOPIC, 4)
        async with Producer(url, namespace=ns) as p:  # a fresh producer sees 4 partitions
            written = [
                await p.send(TOPIC, {"seq": i}, key="g", partition=2 + i % 2) for i in range(4)
            ]
        await eventually(lambda: seen.count() >= 4, 3, message="new partitions consumed")
        took = (max(e.t_ns for e in seen.events if e.event == "handled") - t_grow) / 1e9
        await eventually(lambda: settled(client, ns, TOPIC, [a, b], 4), 2)
        await asyncio.sleep(5 * HB)  # several more heartbeats: no further bump
        after = await group_state(client, ns, TOPIC)
    finally:
        await stop_all((a, ta), (b, tb))
    assert after.epoch == before.epoch + 1
    assert after.partitions == 4 and full_and_disjoint(after.assignment, 4)
    assert after.assignment == {"a": [0, 2], "b": [1, 3]}
    assert sorted(m.id for m in seen.handled()) == sorted(w.id for w in written)
    assert took < GROWTH_BOUND, f"new partitions consumed {took:.2f}s after growth"
