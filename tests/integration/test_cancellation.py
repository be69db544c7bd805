"""Cancellation fuzz through a latency proxy.

Every connection goes through ``support.proxy.FaultProxy`` with 5-20 ms of latency
each way (jitter included), so requests are really in flight when callers give up.
Many tasks call ``Producer.send``/``send_batch`` and ``Consumer.getone``/``ack`` and
are cancelled at random points (``asyncio.wait_for`` with tiny random timeouts, and
``task.cancel()`` after random delays). Then:

* no reply was handed to the wrong caller: each ``RecordMetadata`` points at the entry
  holding *that* caller's value (read back with ``XRANGE id id``), and each message a
  consumer handed out is byte-for-byte the stream entry at its id;
* no message was lost or written twice: every send that returned metadata is stored,
  no value is stored twice (cancelled sends are stored once or not at all);
* after a drain by a fresh member of the group every stored entry was acked, nothing
  is pending and the lag is 0.

The fuzz is seeded: a failure names its seed; replay it with REDCURRENT_FUZZ_SEED=<seed>.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from typing import Any

import orjson
import pytest
import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from support.consuming import make_consumer, start_processing
from support.entries import as_fields
from support.eventually import eventually
from support.proxy import FaultProxy

from redcurrent import Admin, Message, Producer, Record, RecordMetadata
from redcurrent.keys import Keys

TOPIC = "fuzz"
PARTITIONS = 4
LATENCY = (0.0125, 0.0075)  # 5-20 ms each way


def seed() -> int:
    return int(os.environ.get("REDCURRENT_FUZZ_SEED") or random.randrange(2**32))


async def create_topic(url: str, namespace: str) -> None:
    async with Admin(url, namespace=namespace) as admin:
        await admin.create_topic(TOPIC, PARTITIONS)


async def entry_at(
    r: redis.asyncio.Redis, ns: str, partition: int, entry_id: str
) -> dict[bytes, bytes]:
    """The fields of the entry ``entry_id`` of one partition (asserting it exists once),
    in their format-1 view (f, v, k) whichever format they were written in."""
    found = await r.xrange(Keys(ns).stream(TOPIC, partition), entry_id, entry_id)
    assert len(found) == 1, f"{entry_id} not in partition {partition}"
    return as_fields(found[0][1])


Where = tuple[int, str]  # (partition, entry id): ids are per partition, and do repeat


async def all_entries(r: redis.asyncio.Redis, ns: str) -> dict[Where, dict[bytes, bytes]]:
    """Every entry of the topic, by where it is, in its format-1 view (f, v, k)."""
    out: dict[Where, dict[bytes, bytes]] = {}
    for p in range(PARTITIONS):
        for eid, fields in await r.xrange(Keys(ns).stream(TOPIC, p)):
            out[(p, eid.decode())] = as_fields(fields)
    return out


def where(msg: Message) -> Where:
    return (msg.partition, msg.id)


async def cancelled_at_random(coro: Any, rng: random.Random, kind: str, limit: float = 0.06) -> Any:
    """Run ``coro``: to the end, under wait_for with a random timeout, or as a task
    cancelled after a random delay. Returns its result, or None if it was cut short."""
    if kind == "plain":
        return await coro
    if kind == "wait_for":
        try:
            return await asyncio.wait_for(coro, rng.uniform(0, limit))
        except TimeoutError:
            return None
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.sleep(rng.uniform(0, limit))
    finally:
        task.cancel()  # also when we are cancelled ourselves: leave no orphan behind
    try:
        return await task
    except asyncio.CancelledError:
        me = asyncio.current_task()
        if task.cancelled() and not (me is not None and me.cancelling()):
            return None
        raise  # we were cancelled from outside


# --------------------------------------------------------------------------- the proxy itself


async def test_the_latency_proxy_delays_each_way_with_jitter(proxy: FaultProxy) -> None:
    client = redis.asyncio.Redis.from_url(proxy.url)
    try:
        await client.ping()  # connect first: measure round trips only
        proxy.set_latency(*LATENCY, seed=1)
        rtts = []
        for _ in range(10):
            started = time.monotonic()
            await client.ping()
            rtts.append(time.monotonic() - started)
        low, high = LATENCY[0] - LATENCY[1], LATENCY[0] + LATENCY[1]
        assert min(rtts) >= 2 * low * 0.9
        assert max(rtts) - min(rtts) > 0.001  # jitter
        assert sorted(rtts)[len(rtts) // 2] < 2 * high + 0.05
    finally:
        await client.aclose()


async def test_the_proxy_black_holes_resets_cuts_and_refuses(proxy: FaultProxy) -> None:
    opts: dict[str, Any] = {"socket_timeout": 2.0, "retry": Retry(NoBackoff(), 0)}
    client = redis.asyncio.Redis.from_url(proxy.url, **opts)
    try:
        await client.set("proxy-probe", "1")
        proxy.black_hole()  # half-open: the request is held, nothing comes back
        pending = asyncio.ensure_future(client.get("proxy-probe"))
        await asyncio.sleep(0.1)
        assert not pending.done()
        proxy.heal()  # held bytes flow again, as TCP would retransmit them
        assert await asyncio.wait_for(pending, 2) == b"1"

        blocked = asyncio.ensure_future(client.execute_command("BLPOP", "proxy-nothing", 1))
        await asyncio.sleep(0.1)
        assert proxy.reset_all() >= 1  # an RST while BLPOP is in flight
        with pytest.raises(redis.exceptions.ConnectionError):
            await blocked

        proxy.cut_next_reply(b"GET")
        with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            await client.get("proxy-probe")
        assert proxy.cut_replies == 1

        proxy.refuse_new()
        fresh = redis.asyncio.Redis.from_url(proxy.url, **opts)
        with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            await fresh.ping()
        await fresh.aclose()
        assert proxy.refused >= 1
        proxy.heal()
        assert await client.get("proxy-probe") == b"1"
    finally:
        await client.delete("proxy-probe")
        await client.aclose()


# --------------------------------------------------------------------------- producing


async def test_cancelled_sends_never_receive_or_give_away_another_callers_reply(
    proxy: FaultProxy, redis_url: str, r: redis.asyncio.Redis, namespace: str
) -> None:
    s = seed()
    rng = random.Random(s)
    await create_topic(redis_url, namespace)
    proxy.set_latency(*LATENCY, seed=s)
    results: dict[int, RecordMetadata] = {}
    batch_results: dict[int, RecordMetadata] = {}
    cut_short = 0
    async with Producer(
        proxy.url, namespace=namespace, linger=0.002, request_timeout=20
    ) as producer:
        await producer.partitions_for(TOPIC)

        async def one(i: int) -> None:
            nonlocal cut_short
            kind = rng.choice(["plain", "wait_for", "wait_for", "cancel", "cancel"])
            value = {"task": i, "pad": "x" * rng.randrange(64)}
            meta = await cancelled_at_random(
                producer.send(TOPIC, value, key=f"k{i % 13}"), rng, kind
            )
            if meta is None:
                cut_short += 1
            else:
                results[i] = meta

        async def batch(first: int, n: int) -> None:
            nonlocal cut_short
            kind = rng.choice(["plain", "wait_for", "cancel"])
            records = [Record({"task": i}, key=f"k{i % 13}") for i in range(first, first + n)]
            metas = await cancelled_at_random(producer.send_batch(TOPIC, records), rng, kind)
            if metas is None:
                cut_short += 1
            else:
                batch_results.update(zip(range(first, first + n), metas, strict=True))

        for wave in range(8):
            jobs = [one(wave * 1000 + i) for i in range(40)]
            jobs += [batch(wave * 1000 + 500 + 20 * j, rng.randint(1, 12)) for j in range(3)]
            await asyncio.gather(*jobs)
        # Still healthy afterwards: a plain send goes through and nothing hangs.
        last = await producer.send(TOPIC, {"task": -1})
        await asyncio.wait_for(producer.flush(), 10)

    assert cut_short > 20, f"the fuzz cancelled too little (seed {s})"
    assert len(results) > 20, f"the fuzz cancelled too much (seed {s})"
    results.update(batch_results)
    results[-1] = last
    # Every caller that got metadata got its own: the entry there holds its value.
    for task, meta in results.items():
        fields = await entry_at(r, namespace, meta.partition, meta.id)
        assert orjson.loads(fields[b"v"])["task"] == task, (
            f"task {task} got another caller's reply (seed {s})"
        )
        assert meta.timestamp == int(meta.id.split("-")[0])
    # Nothing written twice, even by sends cancelled half-way (idempotent retries).
    stored = Counter(
        orjson.loads(f[b"v"])["task"] for f in (await all_entries(r, namespace)).values()
    )
    assert not [t for t, n in stored.items() if n > 1], f"written twice (seed {s})"
    assert set(results) <= set(stored)


# --------------------------------------------------------------------------- consuming and acking


async def test_cancelled_fetches_and_acks_lose_nothing_and_leave_nothing_pending(
    proxy: FaultProxy, redis_url: str, r: redis.asyncio.Redis, namespace: str
) -> None:
    """One fetch loop (getone under random cancellation, itself cancelled and restarted
    from outside) hands each message to its own ack task (ack under random
    cancellation), so acks are in flight while later messages are fetched.

    The fetch loop is one task at a time here; concurrent getone() callers have their own
    test below."""
    s = seed()
    rng = random.Random(s)
    await create_topic(redis_url, namespace)
    proxy.set_latency(*LATENCY, seed=s)
    total = 300
    handed: Counter[Where] = Counter()  # how often each message was handed out
    messages: list[Message] = []
    acked: set[Where] = set()  # the ack call returned
    maybe_acked: set[Where] = set()  # the ack call was cut short: it may have run
    errors: list[BaseException] = []
    acking: set[asyncio.Task[None]] = set()
    last_handout = [time.monotonic()]
    counts = Counter[str]()

    consumer = make_consumer(
        proxy.url, namespace, TOPIC, start="earliest", auto_ack=False, member_id="fuzzed"
    )
    await consumer.start()
    all_in = asyncio.Event()

    async def produce() -> None:
        async with Producer(redis_url, namespace=namespace) as producer:
            for first in range(0, total, 50):
                batch = [Record({"n": i}, key=f"k{i % 11}") for i in range(first, first + 50)]
                await producer.send_batch(TOPIC, batch)
                await asyncio.sleep(rng.uniform(0, 0.05))
        all_in.set()

    async def ack_one(msg: Message) -> None:
        await asyncio.sleep(rng.uniform(0, 0.03))
        kind = rng.choice(["plain", "wait_for", "wait_for", "cancel"])
        try:
            done = await cancelled_at_random(_acked(consumer, msg), rng, kind, 0.04)
        except Exception as exc:  # anything but a cancellation is a finding
            errors.append(exc)
            return
        if done:
            acked.add(where(msg))
            # An ack that returned OK did ack *this* entry (not another caller's).
            stream = Keys(namespace).stream(TOPIC, msg.partition)
            if await r.xpending_range(stream, "g", min=msg.id, max=msg.id, count=1):
                errors.append(AssertionError(f"{where(msg)} still pending after its ack returned"))
        else:
            maybe_acked.add(where(msg))
            counts["ack_cut"] += 1

    async def fetch_loop() -> None:
        while True:
            kind = rng.choice(["wait_for", "cancel"])
            try:
                msg = await cancelled_at_random(consumer.getone(), rng, kind, 0.05)
            except Exception as exc:
                errors.append(exc)
                return
            if msg is None:
                counts["fetch_cut"] += 1
                continue
            handed[where(msg)] += 1
            messages.append(msg)
            last_handout[0] = time.monotonic()
            task = asyncio.create_task(ack_one(msg))
            acking.add(task)
            task.add_done_callback(acking.discard)

    async def chaos() -> None:
        """The fetch loop is cancelled from outside at random moments, and restarted."""
        fetching = asyncio.create_task(fetch_loop())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            await asyncio.sleep(rng.uniform(0.01, 0.1))
            fetching.cancel()
            counts["loop_cancelled"] += 1
            await asyncio.gather(fetching, return_exceptions=True)
            fetching = asyncio.create_task(fetch_loop())
            # Done once everything is produced and nothing was handed out for a while:
            # a message whose getone was cancelled after taking it is not seen here, and
            # stays pending for the drain.
            if all_in.is_set() and time.monotonic() - last_handout[0] > 0.5:
                break
        fetching.cancel()
        await asyncio.gather(fetching, *acking, return_exceptions=True)

    await asyncio.gather(produce(), chaos())
    await consumer.stop()  # graceful, still through the latency proxy
    assert not errors, f"{errors[:3]} (seed {s})"
    assert counts["fetch_cut"] + counts["loop_cancelled"] > 10, f"{counts} (seed {s})"
    assert counts["ack_cut"] > 10, f"{counts} (seed {s})"
    # One member and no failure: no message is handed out twice before the drain (a
    # message whose caller was cancelled stays pending for the drain instead).
    twice = [w for w, n in handed.items() if n > 1]
    assert not twice, f"handed out twice: {twice[:5]} (seed {s})"

    # Drain: a fresh member takes over what is pending and acks everything.
    drained: list[Message] = []

    async def keep(msg: Message) -> None:
        drained.append(msg)

    survivor = make_consumer(redis_url, namespace, TOPIC, start="earliest", member_id="drain")
    draining = start_processing(survivor, keep)
    try:
        async with Admin(redis_url, namespace=namespace) as admin:

            async def settled() -> bool:
                info = await admin.describe_group(TOPIC, "g")
                return info.pending == 0 and info.lag == 0

            await eventually(
                settled, timeout=20, interval=0.1, message=f"group never settled (seed {s})"
            )
    finally:
        await survivor.stop()
        await asyncio.wait_for(draining, 10)

    stored = await all_entries(r, namespace)
    assert len(stored) == total
    drained_ids = set(map(where, drained))
    # Nothing lost: every entry was handled and acked, by the fuzzed member (an ack that
    # was cut short may still have run) or by the drain; and nothing is pending.
    assert set(stored) == set(acked) | maybe_acked | drained_ids, f"seed {s}"
    assert not set(acked) & drained_ids, f"acked, then redelivered (seed {s})"
    # Each message handed out is exactly the entry stored at its id (no mixed-up reply).
    for msg in messages + drained:
        fields = stored[where(msg)]
        assert msg.value == orjson.loads(fields[b"v"]), f"seed {s}"
        assert msg.key == fields[b"k"].decode()


async def _acked(consumer: Any, msg: Message) -> bool:
    await consumer.ack(msg)
    return True


# --------------------------------------------------------------------------- manual acks


async def test_manual_ack_never_hands_out_a_message_twice_to_a_healthy_member(
    redis_url: str, namespace: str
) -> None:
    await create_topic(redis_url, namespace)
    async with Producer(redis_url, namespace=namespace) as producer:
        await producer.send_batch(TOPIC, [Record(i, partition=0) for i in range(10)])
    consumer = make_consumer(
        redis_url, namespace, TOPIC, start="earliest", auto_ack=False, batch_size=3
    )
    seen: list[int] = []
    async with consumer:
        previous = None
        for _ in range(10):
            msg = await asyncio.wait_for(consumer.getone(), 5)
            seen.append(msg.value)
            if previous is not None:
                await consumer.ack(previous)  # acked once the next one is in hand
            previous = msg
        assert previous is not None
        await consumer.ack(previous)
    assert seen == list(range(10))


# --------------------------------------------------------------------------- concurrent callers, cancelled


async def test_concurrent_getone_callers_do_not_stall_a_partition(
    redis_url: str, namespace: str
) -> None:
    """Two tasks share one consumer (getone, a short sleep, ack) and are cancelled the
    moment the last message is handed out. A cancellation swallowed anywhere on that
    path left a task "cancelling" forever about one round in ten: 200 rounds."""
    for round_ in range(200):
        await _concurrent_getone_round(redis_url, f"{namespace}r{round_}")


async def _concurrent_getone_round(redis_url: str, namespace: str) -> None:
    await create_topic(redis_url, namespace)
    async with Producer(redis_url, namespace=namespace) as producer:
        await producer.send_batch(TOPIC, [Record(i, partition=i % 2) for i in range(10)])
    consumer = make_consumer(redis_url, namespace, TOPIC, start="earliest", auto_ack=False)
    seen: list[int] = []

    async def caller() -> None:
        while True:
            msg = await consumer.getone()
            seen.append(msg.value)
            await asyncio.sleep(0.01)
            await consumer.ack(msg)

    async with consumer:
        callers = [asyncio.create_task(caller()) for _ in range(2)]
        try:
            await eventually(
                lambda: len(seen) >= 10, timeout=3, message=f"stalled after {sorted(seen)}"
            )
        finally:
            for c in callers:
                c.cancel()
            done, _ = await asyncio.wait(callers, timeout=5)
            assert len(done) == 2, "a cancelled getone()/ack() caller swallowed its cancellation"
    assert sorted(seen) == list(range(10))
