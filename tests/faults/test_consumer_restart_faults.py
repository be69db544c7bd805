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

import pytest
from support.eventually import eventually
from support.servers import ServerProcess

from redcurrent import Admin, Backoff, Consumer, Message, Producer, Record

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
