"""Consumers that must not stall when the server goes away mid-retry.

A handler that is failing while the server is SIGKILLed and back a second later (AOF
on, data kept): the retry bookkeeping meets a connection error. It used to kill the
partition's fetch task while the coordinator kept renewing its lease: 7 of 10 messages
never handled and nobody else allowed to take the partition. Now every call of the
consume path retries until ``request_timeout``, so all 10 are handled, in key order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support.eventually import eventually
from support.servers import ServerProcess

from redcurrent import (
    Admin,
    Backoff,
    Consumer,
    Message,
    Producer,
    Record,
    RedcurrentError,
    ShareConsumer,
    TopicExistsError,
)
from redcurrent.keys import Keys

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]


@pytest.fixture
def aof_server(server_binary: str) -> Iterator[ServerProcess]:
    with ServerProcess(server_binary, appendonly=True, appendfsync="always") as server:
        yield server


@pytest.mark.parametrize("batch", [False, True])
async def test_a_server_restart_while_a_handler_is_failing_stalls_no_partition(
    aof_server: ServerProcess, namespace: str, batch: bool
) -> None:
    url = aof_server.url
    async with Admin(url, namespace=namespace) as admin:
        await admin.create_topic("t", 2)
    async with Producer(url, namespace=namespace) as p:
        await p.send_batch("t", [Record({"n": i, "key": f"k{i % 3}"}, key=f"k{i % 3}") for i in range(10)])
    calls: dict[int, int] = {}
    handled: list[tuple[str, int]] = []
    failing = asyncio.Event()

    def attempt(msgs: list[Message]) -> None:
        """Each message fails its first two tries; a batch fails or succeeds whole."""
        for m in msgs:
            calls[m.value["n"]] = calls.get(m.value["n"], 0) + 1
        if any(calls[m.value["n"]] <= 2 for m in msgs):
            failing.set()
            raise RuntimeError("downstream unavailable")
        handled.extend((m.value["key"], m.value["n"]) for m in msgs)

    async def handle(msg: Message) -> None:
        attempt([msg])

    async def handle_batch(msgs: list[Message]) -> None:
        attempt(msgs)

    c = Consumer("t", group="g", url=url, namespace=namespace, start="earliest",
                 heartbeat_interval=0.2, session_timeout=3.0, rebalance_timeout=2.0,
                 backoff=Backoff(initial=0.3, multiplier=1.5, max=1.0, jitter=0.0), max_attempts=50)
    async with c:
        task = asyncio.create_task(c.process_batch(handle_batch) if batch else c.process(handle))
        await asyncio.wait_for(failing.wait(), 10)
        aof_server.kill()  # SIGKILL while the handler is in its retries
        await asyncio.sleep(1.0)
        await asyncio.to_thread(aof_server.restart)
        t_up = time.monotonic()
        await eventually(lambda: len({n for _, n in handled}) == 10, timeout=30,
                         message=f"every message handled after the restart: {handled}")
        took = time.monotonic() - t_up
        await c.stop()
        await asyncio.wait_for(task, 10)
    for key in ("k0", "k1", "k2"):
        ns = [n for k, n in handled if k == key]
        assert ns == sorted(set(ns)), handled  # key order, each once after its failures
    print(f"\nall handled {took:.2f}s after the restart; stats {c.stats()}")


async def test_a_backlog_drained_in_batches_of_500_through_a_restart_loses_nothing_and_leaves_nothing_pending(
    aof_server: ServerProcess, namespace: str
) -> None:
    """The README's process_batch with batch_size=500 over a backlog: reads that large
    fetch with WATCH/MULTI and ack with XACK inside it. One batch handler call raises
    once, one entry mid-backlog is corrupt (the common shape, JSON that does not parse),
    and the server is SIGKILLed mid-drain and comes back with its data. Every good record
    is handled, the corrupt one is dead-lettered, and in the end nothing is pending."""
    url = aof_server.url
    async with Admin(url, namespace=namespace) as admin:
        await admin.create_topic("t", 2)
    n = 3000
    async with Producer(url, namespace=namespace) as p:
        await p.send_batch("t", [Record({"n": i}, key=f"k{i % 50}") for i in range(n // 2)])
        with aof_server.client() as raw:  # a corrupt entry in the common shape
            raw.xadd(Keys(namespace).stream("t", 0), {"2jsk0": "{not json"})
        await p.send_batch("t", [Record({"n": i}, key=f"k{i % 50}") for i in range(n // 2, n)])
    handled: list[int] = []
    calls = 0
    first_batch = asyncio.Event()

    async def handle_batch(msgs: list[Message]) -> None:
        nonlocal calls
        calls += 1
        first_batch.set()
        await asyncio.sleep(0.05)
        if calls == 2:
            raise RuntimeError("downstream hiccup")  # the batch is retried whole
        handled.extend(m.value["n"] for m in msgs)

    c = Consumer("t", group="g", url=url, namespace=namespace, start="earliest", batch_size=500,
                 heartbeat_interval=0.2, session_timeout=3.0, rebalance_timeout=2.0,
                 backoff=Backoff(initial=0.05, multiplier=1.0, max=0.05, jitter=0.0))
    async with c:
        task = asyncio.create_task(c.process_batch(handle_batch))
        await asyncio.wait_for(first_batch.wait(), 10)
        aof_server.kill()
        await asyncio.sleep(0.5)
        await asyncio.to_thread(aof_server.restart)
        await eventually(lambda: set(handled) >= set(range(n)), timeout=40,
                         message=f"every record handled after the restart: {len(set(handled))} of {n}")
        await eventually(lambda: c.stats().get("decode_failures", 0) >= 1, timeout=10)
        await c.stop()
        await asyncio.wait_for(task, 10)
    async with Admin(url, namespace=namespace) as admin:
        [dead] = await admin.dead_letters("t", "g")
        info = await admin.describe_group("t", "g")
    assert dead.reason == "decode_error"
    assert info.pending == 0 and info.lag == 0  # every read entry acked, the bad one too


@pytest.fixture
def plain_server(server_binary: str) -> Iterator[ServerProcess]:
    with ServerProcess(server_binary) as server:  # no AOF, no RDB: a restart comes back empty
        yield server


async def _share_produce(url: str, namespace: str, first: int, n: int) -> set[str]:
    async with Producer(url, namespace=namespace) as p:
        metas = await p.send_batch("t", [Record({"n": i}, key=f"k{i % 10}") for i in range(first, first + n)])
    return {f"{m.partition}/{m.id}" for m in metas}


async def test_a_server_restart_with_aof_under_a_share_group_loses_nothing(
    aof_server: ServerProcess, namespace: str
) -> None:
    """Two share-group members accepting while the server is SIGKILLed and back after
    longer than the lock timeout (AOF on, data kept): both keep processing, every
    message is accepted, and nothing is left in flight."""
    url = aof_server.url
    async with Admin(url, namespace=namespace) as admin:
        await admin.create_topic("t", 2)
    accepted: set[str] = set()

    async def handle(msg: Message) -> None:
        await asyncio.sleep(0.002)
        accepted.add(f"{msg.partition}/{msg.id}")

    members = [ShareConsumer("t", group="g", url=url, namespace=namespace, start="earliest",
                             lock_timeout=1.0, batch_size=20) for _ in range(2)]
    for sc in members:
        await sc.start()
    tasks = [asyncio.create_task(sc.process(handle)) for sc in members]
    try:
        ids = await _share_produce(url, namespace, 0, 600)
        await eventually(lambda: len(accepted) >= 100, timeout=15)
        aof_server.kill()  # SIGKILL, mid-stream
        await asyncio.sleep(1.5)  # longer than the locks
        await asyncio.to_thread(aof_server.restart)
        ids |= await _share_produce(url, namespace, 600, 200)
        await eventually(lambda: accepted >= ids, timeout=45, message="every message accepted after the restart")
        assert not any(t.done() for t in tasks), [t for t in tasks if t.done()]
        async with Admin(url, namespace=namespace) as admin:
            async def settled() -> bool:
                info = await admin.describe_share_group("t", "g")
                return info.in_flight == () and info.lag == 0
            await eventually(settled, timeout=15, message="nothing left in flight")
    finally:
        await asyncio.gather(*(sc.stop() for sc in members))
        await asyncio.gather(*tasks, return_exceptions=True)
    for t in tasks:
        assert t.exception() is None


@pytest.mark.parametrize("kind", ["share", "concurrency"])
async def test_a_server_that_restarts_empty_stalls_no_member(
    plain_server: ServerProcess, namespace: str, kind: str
) -> None:
    """The server comes back with nothing (no persistence): what it held is gone, which
    no client can undo. No member crashes or stalls: once the topic is created again,
    what is produced to it is consumed (share group, or concurrency=8)."""
    url = plain_server.url
    async with Admin(url, namespace=namespace) as admin:
        await admin.create_topic("t", 2)
    handled: set[int] = set()

    async def handle(msg: Message) -> None:
        await asyncio.sleep(0.001)
        handled.add(msg.value["n"])

    if kind == "share":
        members: list[Any] = [ShareConsumer("t", group="g", url=url, namespace=namespace, start="earliest",
                                            lock_timeout=1.0, batch_size=20) for _ in range(2)]
    else:
        members = [Consumer("t", group="g", url=url, namespace=namespace, start="earliest", concurrency=8,
                            heartbeat_interval=0.2, session_timeout=1.5, rebalance_timeout=2.0)]
    for c in members:
        await c.start()
    tasks = [asyncio.create_task(c.process(handle)) for c in members]
    try:
        await _share_produce(url, namespace, 0, 200)
        await eventually(lambda: len(handled) >= 50, timeout=15)
        plain_server.kill()
        await asyncio.sleep(0.5)
        await asyncio.to_thread(plain_server.restart)  # empty
        async with Admin(url, namespace=namespace) as admin:
            await eventually(lambda: _recreated(admin), timeout=15, message="topic created again")
        await _share_produce(url, namespace, 1000, 200)
        await eventually(lambda: set(range(1000, 1200)) <= handled, timeout=45,
                         message="what is produced after the empty restart is consumed")
        assert not any(t.done() for t in tasks), [t for t in tasks if t.done()]
    finally:
        await asyncio.gather(*(c.stop() for c in members))
        await asyncio.gather(*tasks, return_exceptions=True)
    for t in tasks:
        assert t.exception() is None


async def _recreated(admin: Admin) -> bool:
    try:
        await admin.create_topic("t", 2)
    except TopicExistsError:
        return True
    except RedcurrentError:
        return False  # still coming back
    return True
