"""Concurrent process() under SIGKILL (docs/architecture.md §5, §7).

Three consumer processes with ``concurrency=50, ordering="key"`` share 8 partitions
while 100 keys are produced; one is SIGKILLed mid-flight. Its partitions' new owners
re-read the pending entries in id order before new ones, so the history checker finds
nothing lost and no per-key order violation, among first deliveries too. It takes
``target``: the same proof runs on the single node and (``[cluster]``) on the 3 + 3
Redis Cluster, where the partitions' streams live on different primaries.
"""

from __future__ import annotations

import asyncio
import signal
import time
from itertools import pairwise
from pathlib import Path

import pytest
from redis.asyncio import RedisCluster
from support.consuming import create_topic
from support.eventually import eventually
from support.servers import AsyncClient, Target
from test_consumer_faults import (
    MEMBERS,
    PARTITIONS,
    RESUME_BOUND,
    TOPIC,
    _all_of,
    _pending_is,
    all_acked,
    exited_cleanly,
    first_handled_after,
    fleet,
    pumping,
    wait_settled,
)

from redcurrent.keys import Keys
from redcurrent.testing import Event

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

CONCURRENT = ("--concurrency", "50", "--ordering", "key")


def first_delivery_violations(events: list[Event]) -> list[tuple[object, int, int]]:
    """Per key, the first delivery of each seq must come in seq order: (key, seq, after)."""
    first: dict[tuple[object, int], Event] = {}
    for e in sorted(events, key=lambda e: e.t_ns):
        if e.event == "handled":
            first.setdefault((e.key, e.seq), e)
    by_key: dict[object, list[Event]] = {}
    for e in sorted(first.values(), key=lambda e: e.t_ns):
        by_key.setdefault(e.key, []).append(e)
    bad = []
    for key, es in by_key.items():
        bad += [(key, b.seq, a.seq) for a, b in pairwise(es) if b.seq < a.seq]
    return bad


async def test_sigkill_of_a_concurrent_consumer_loses_nothing_and_keeps_key_order(
    target: Target, namespace: str, target_client: AsyncClient, tmp_path: Path
) -> None:
    url, r = target.url, target_client  # a RedisCluster client on [cluster]
    await create_topic(url, namespace, TOPIC, PARTITIONS)
    if isinstance(r, RedisCluster):  # the kill's partitions are spread over the primaries
        await r.initialize()  # the slot map
        streams = [Keys(namespace).stream(TOPIC, p) for p in range(PARTITIONS)]
        assert len({r.get_node_from_key(s).name for s in streams}) > 1
    with fleet(url, namespace, tmp_path) as f:
        for m in MEMBERS:
            f.start(m, work_ms=120.0, extra=CONCURRENT)  # longer than a round: always in flight
        assignment = await wait_settled(r, namespace, f, MEMBERS)
        victim = assignment["w2"]
        async with pumping(url, namespace) as pump:
            await asyncio.sleep(1.5)
            t_kill = time.monotonic_ns()
            f.signal("w2", signal.SIGKILL)
            await eventually(
                lambda: _all_of(first_handled_after(f.events(), t_kill, victim, {"w1", "w3"}), victim),
                RESUME_BOUND + 5,
                0.05,
                message="w2's partitions resumed on survivors",
            )
            await asyncio.sleep(max(0.0, t_kill / 1e9 + 3.0 - time.monotonic()))
        report = await all_acked(f, pump.sent)
        await eventually(lambda: _pending_is(r, namespace, 0), 5, message="nothing left pending")
        events = f.events()
        codes = f.stop()
    print(f"\nconcurrent SIGKILL [{target.kind}]: {report.summary()}")
    assert not report.lost and not report.unacked, report.summary()
    assert report.violations == []
    assert first_delivery_violations(events) == []
    exited_cleanly(codes, "w1", "w3")
    in_flight_at_kill = {
        (e.key, e.seq) for e in events if e.consumer == "w2" and e.event == "handled"
    } - {(e.key, e.seq) for e in events if e.consumer == "w2" and e.event == "acked"}
    assert in_flight_at_kill, "the kill caught nothing in flight: the test proves nothing"
