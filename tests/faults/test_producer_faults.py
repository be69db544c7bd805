"""Producer guarantees under server faults: what a send's outcome promises.

* redis-server SIGKILLed and restarted without its data while a producer sends to a
  6-partition topic read by 3 consumer processes: every send that returned metadata
  after the restart is readable from a real partition of the topic, or the send raised
  UnknownTopicError; the producer never recreates the topic (an operator does).
* redis-server SIGSTOPped for 3 s with ``request_timeout=1``: the send either returns
  metadata or raises AmbiguousWriteError, and the record is stored exactly once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from harness import NS, TOPIC, FaultRun
from redis.asyncio import Redis
from support.entries import as_fields
from support.eventually import eventually
from support.servers import ServerProcess

from redcurrent import (
    Admin,
    AmbiguousWriteError,
    Producer,
    RecordMetadata,
    RedcurrentConnectionError,
    UnknownTopicError,
)
from redcurrent.keys import Keys

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(300)]

Outcome = tuple[float, float, RecordMetadata | BaseException]  # started, ended, result


async def _real(raw: Redis, meta: RecordMetadata) -> bool:
    """The record is in a partition the topic has (per its metadata) and readable there."""
    keys = Keys(NS)
    partitions = await raw.hget(keys.meta(meta.topic), "partitions")
    if partitions is None or meta.partition >= int(partitions):
        return False
    return bool(await raw.xrange(keys.stream(meta.topic, meta.partition), meta.id, meta.id))


async def test_acked_sends_after_redis_restarts_empty_are_readable_or_fail_typed(
    tmp_path: Path, server_binary: str
) -> None:
    outcomes: list[Outcome] = []
    stop = asyncio.Event()
    run = FaultRun(tmp_path, server_binary, name="empty-restart", partitions=6, consumers=3)
    async with run:
        raw = Redis.from_url(run.server.url)
        try:
            async with Producer(run.server.url, namespace=NS, request_timeout=1.0) as producer:

                async def sender(worker: int) -> None:
                    i = 0
                    while not stop.is_set():
                        started = time.monotonic()
                        try:
                            result: RecordMetadata | BaseException = await producer.send(
                                TOPIC, {"w": worker, "i": i}, key=f"k{worker}-{i}"
                            )
                        except Exception as exc:  # checked below
                            result = exc
                        outcomes.append((started, time.monotonic(), result))
                        i += 1
                        await asyncio.sleep(0.005)

                tasks = [asyncio.create_task(sender(w)) for w in range(6)]
                await eventually(lambda: len(outcomes) > 300, timeout=20)
                run.server.kill()  # no AOF, no RDB: it comes back empty
                await asyncio.sleep(0.3)
                await asyncio.to_thread(run.server.restart)
                restarted = time.monotonic()
                await eventually(lambda: any(s > restarted for s, _, _ in outcomes), timeout=10)
                await asyncio.sleep(2.0)
                # Nobody recreated the topic: not this producer, not the consumers.
                assert await raw.exists(Keys(NS).meta(TOPIC)) == 0
                creating = time.monotonic()
                async with Admin(run.server.url, namespace=NS) as admin:
                    await admin.create_topic(TOPIC, 6)  # the operator
                recreated = time.monotonic()
                await eventually(
                    lambda: sum(
                        s > recreated and isinstance(r, RecordMetadata) for s, _, r in outcomes
                    )
                    > 50,
                    timeout=20,
                )
                stop.set()
                await asyncio.gather(*tasks)

            after_restart = [(s, r) for s, e, r in outcomes if e > restarted]
            acked = [r for _, r in after_restart if isinstance(r, RecordMetadata)]
            errors = [r for _, r in after_restart if not isinstance(r, RecordMetadata)]
            lost = [m for m in acked if not await _real(raw, m)]
            assert not lost, f"{len(lost)} of {len(acked)} acked sends are in no real partition"
            gone = [x for x in errors if isinstance(x, UnknownTopicError)]
            assert gone, "no send saw the topic gone"
            assert all(not x.retriable and "lost its data" in str(x) for x in gone), gone[0]
            others = [x for x in errors if not isinstance(x, UnknownTopicError)]
            assert all(type(x) is RedcurrentConnectionError for x in others), others[:3]
            # Until the operator recreated the topic, no send succeeded (one in flight while
            # create_topic ran may land in the recreated topic: a real partition, checked above).
            assert not [r for _, e, r in outcomes if restarted < e < creating and isinstance(r, RecordMetadata)]
        finally:
            await raw.aclose()


@pytest.mark.parametrize("delivery_timeout", [120.0, 2.0], ids=["delivered", "gave-up"])
async def test_a_send_across_a_3s_redis_pause_is_stored_once_or_ambiguous(
    server_binary: str, delivery_timeout: float
) -> None:
    """Each 1 s attempt times out while Redis is stopped; every attempt reaches its
    socket. Within delivery_timeout the producer's own retries (same sequence) get the
    record stored once; past it, the error says it may be stored, never "retry"."""
    ns = f"pause{int(delivery_timeout)}"
    with ServerProcess(server_binary) as server:
        async with Admin(server.url, namespace=ns) as admin:
            await admin.create_topic("paused", 1)
        raw = Redis.from_url(server.url)
        try:
            async with Producer(
                server.url, namespace=ns, request_timeout=1.0, delivery_timeout=delivery_timeout
            ) as producer:
                await producer.send("paused", "warm-up")
                server.pause()
                try:
                    sending = asyncio.create_task(producer.send("paused", "once"))
                    await asyncio.sleep(3.0)
                finally:
                    server.resume()
                try:
                    outcome: RecordMetadata | BaseException = await sending
                except AmbiguousWriteError as exc:
                    outcome = exc
            stream = Keys(ns).stream("paused", 0)

            async def stored() -> list[bytes]:
                return [eid for eid, f in await raw.xrange(stream) if as_fields(f)[b"v"] == b'"once"']

            ids = await eventually(stored, timeout=5)
            await asyncio.sleep(0.5)  # late attempts still in Redis's socket buffers
            assert await stored() == ids and len(ids) == 1, "stored twice"
            if delivery_timeout > 3:
                assert isinstance(outcome, RecordMetadata) and outcome.id == ids[0].decode()
            else:
                assert isinstance(outcome, AmbiguousWriteError), repr(outcome)
                assert not outcome.retriable
                text = str(outcome)
                assert "may or may not be stored" in text and "resend may store them twice" in text
                assert "no reply within request_timeout=1.0s" in text  # the cause, not "TimeoutError: "
        finally:
            await raw.aclose()
