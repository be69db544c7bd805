"""One benchmark role in its own process: ``python _bench_worker.py ROLE '{json kwargs}'``.

Prints ``RESULT {json}`` as its last line. Throughput roles time the work only (not
process start, connecting, topic creation or a one-message warm-up) with
``time.perf_counter``; latency roles stamp ``ts`` (``time.time()``) into each payload
when it is sent and the consumer records ``time.time() - ts`` when it handles it.

Roles (kwargs besides url and ns):
  produce-raw-lua, produce-raw-pipe     count             raw redis-py, 500 a call
  produce-batch                         count, idempotent send_batch of 500 Records
                                        (+ acks, partitions: cluster.py)
  produce-send                          count, tasks      ``tasks`` concurrent send() loops
  eo-batch, eo-send, eo-txn             count, size/tasks, dedup, transactional  exactly_once.py
  fill-raw, fill-rc                     count             untimed fill for a drain
  drain-raw, drain-batch, drain-each    count             drain the fill
  lat-raw-producer, lat-rc-producer     rate, total, ready  paced single sends
  lat-raw-consumer, lat-rc-consumer     expected, ready, max_wait (+ mode batch|each)
  fo-consumer                           log, hb, session  logs "<time> <partition>" per message
  fo-producer                           rate              sends until terminated
  share-consumer                        ready, go, stop, partitions  one of N consumers of a
                                        group draining a filled topic (cluster.py's scaling)
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson
from _common import (
    BATCH,
    GROUP,
    PARTITIONS,
    TOPIC,
    make_payload,
    payloads,
    percentile,
    raw_partition,
    raw_streams,
)
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from redcurrent import Admin, Backoff, Consumer, Message, Producer, Record

Result = dict[str, Any]

RAW_LUA = """
for i = 1, #ARGV, 2 do
  redis.call('XADD', KEYS[tonumber(ARGV[i])], '*', 'd', ARGV[i + 1])
end
return #ARGV / 2
"""


async def create_topic(url: str, ns: str, partitions: int = PARTITIONS) -> None:
    async with Admin(url, namespace=ns) as admin:
        await admin.create_topic(TOPIC, partitions=partitions, exist_ok=True)


def timed(n: int, t0: float) -> Result:
    elapsed = time.perf_counter() - t0
    return {"n": n, "elapsed": elapsed, "rate": n / elapsed}


# -- produce ----------------------------------------------------------------------------

async def produce_raw_lua(url: str, ns: str, count: int) -> Result:
    """ONE EVALSHA per 500 messages doing the XADDs server-side (peers-bench ad_raw_lua)."""
    data, streams = payloads(count), raw_streams(ns)
    r = Redis.from_url(url)
    sha = await r.script_load(RAW_LUA)
    t0 = time.perf_counter()
    for i in range(0, count, BATCH):
        args: list[Any] = []
        for p in data[i : i + BATCH]:
            args.append(raw_partition(p["key"]) + 1)
            args.append(orjson.dumps(p))
        await r.evalsha(sha, PARTITIONS, *streams, *args)
    res = timed(count, t0)
    await r.aclose()
    return res


async def produce_raw_pipe(url: str, ns: str, count: int) -> Result:
    """One pipeline of 500 XADDs per batch (peers-bench ad_raw w1)."""
    data, streams = payloads(count), raw_streams(ns)
    r = Redis.from_url(url)
    await r.ping()
    t0 = time.perf_counter()
    for i in range(0, count, BATCH):
        pipe = r.pipeline(transaction=False)
        for p in data[i : i + BATCH]:
            pipe.xadd(streams[raw_partition(p["key"])], {"d": orjson.dumps(p)})
        await pipe.execute()
    res = timed(count, t0)
    await r.aclose()
    return res


async def produce_batch(url: str, ns: str, count: int, idempotent: bool = True, warm: bool = True,
                        acks: str = "leader", partitions: int = PARTITIONS) -> Result:
    """send_batch of 500 Record(dict, key=...) a call; values encoded by the producer."""
    data = payloads(count)
    await create_topic(url, ns, partitions)
    async with Producer(url, namespace=ns, idempotent=idempotent, acks=acks) as producer:  # type: ignore[arg-type]
        if warm:  # connection, topic metadata and script loaded before the timing, like raw_lua
            await producer.send(TOPIC, make_payload(0, warm=1), key="warm")
        t0 = time.perf_counter()
        for i in range(0, count, BATCH):
            await producer.send_batch(TOPIC, [Record(p, key=p["key"]) for p in data[i : i + BATCH]])
        await producer.flush()
        return timed(count, t0)


async def produce_send(url: str, ns: str, count: int, tasks: int = 1000) -> Result:
    """``tasks`` concurrent tasks, each awaiting send() over its share (one key per task)."""
    data = payloads(count)
    await create_topic(url, ns)
    async with Producer(url, namespace=ns) as producer:
        await producer.send(TOPIC, make_payload(0, warm=1), key="warm")

        async def loop(share: list[dict[str, Any]]) -> None:
            for p in share:
                await producer.send(TOPIC, p, key=p["key"])

        t0 = time.perf_counter()
        await asyncio.gather(*(loop(data[i::tasks]) for i in range(tasks)))
        await producer.flush()
        return timed(count, t0)


# -- exactly-once (exactly_once.py) -----------------------------------------------------

async def eo_batch(url: str, ns: str, count: int, size: int = BATCH, dedup: bool = False,
                   transactional: bool = False) -> Result:
    """send_batch of ``size`` Records a call, each with a unique dedup key if ``dedup``;
    with a transactional_id if ``transactional``. Latency: per send_batch call."""
    data = payloads(count)
    await create_topic(url, ns)
    tid = f"bench-{ns}" if transactional else None
    async with Producer(url, namespace=ns, transactional_id=tid) as producer:
        await producer.send(TOPIC, make_payload(0, warm=1), key="warm")
        lat = []
        t0 = time.perf_counter()
        for i in range(0, count, size):
            chunk = data[i : i + size]
            t1 = time.perf_counter()
            if dedup:
                await producer.send_batch(TOPIC, [Record(p, key=p["key"], dedup_key=f"d{i + j}")
                                                  for j, p in enumerate(chunk)])
            else:
                await producer.send_batch(TOPIC, [Record(p, key=p["key"]) for p in chunk])
            lat.append(time.perf_counter() - t1)
        await producer.flush()
        res = timed(count, t0)
    return res | {"lat_ms": 1000 * percentile(lat, 50), "p99_ms": 1000 * percentile(lat, 99)}


async def eo_send(url: str, ns: str, count: int, tasks: int = 1000, dedup: bool = False) -> Result:
    """``tasks`` concurrent send() loops (one key each), with unique dedup keys if ``dedup``.
    Latency: per send."""
    data = payloads(count)
    await create_topic(url, ns)
    lat: list[float] = []
    async with Producer(url, namespace=ns) as producer:
        await producer.send(TOPIC, make_payload(0, warm=1), key="warm")

        async def loop(k: int) -> None:
            for i in range(k, count, tasks):
                p = data[i]
                t1 = time.perf_counter()
                await producer.send(TOPIC, p, key=p["key"], dedup_key=f"d{i}" if dedup else None)
                lat.append(time.perf_counter() - t1)

        t0 = time.perf_counter()
        await asyncio.gather(*(loop(k) for k in range(tasks)))
        await producer.flush()
        res = timed(count, t0)
    return res | {"lat_ms": 1000 * percentile(lat, 50), "p99_ms": 1000 * percentile(lat, 99)}


async def eo_txn(url: str, ns: str, count: int, size: int, transactional: bool = False) -> Result:
    """One transaction after another, ``size`` keyed records each (spread over the
    partitions). Latency: per commit (the ``async with`` block)."""
    data = payloads(count)
    await create_topic(url, ns)
    tid = f"bench-{ns}" if transactional else None
    lat = []
    async with Producer(url, namespace=ns, transactional_id=tid) as producer:
        async with producer.transaction() as tx:  # warm-up: connection, metadata, script
            await tx.send(TOPIC, make_payload(0, warm=1), key="warm")
        t0 = time.perf_counter()
        for i in range(0, count, size):
            t1 = time.perf_counter()
            async with producer.transaction() as tx:
                await tx.send_batch(TOPIC, [Record(p, key=p["key"]) for p in data[i : i + size]])
            lat.append(time.perf_counter() - t1)
        res = timed(count, t0)
    return res | {"lat_ms": 1000 * percentile(lat, 50), "p99_ms": 1000 * percentile(lat, 99)}


# -- consume ----------------------------------------------------------------------------

async def fill_raw(url: str, ns: str, count: int) -> Result:
    """XADD {"d": orjson(payload)} into the raw streams, 500 a pipeline."""
    return await produce_raw_pipe(url, ns, count)


async def fill_rc(url: str, ns: str, count: int, partitions: int = PARTITIONS) -> Result:
    """The topic filled by redcurrent's producer (the entry format is the library's)."""
    return await produce_batch(url, ns, count, warm=False, partitions=partitions)


class Drain:
    """Counts handled messages; first/last handle times; done once ``count`` are in."""

    def __init__(self, count: int) -> None:
        self.count, self.n = count, 0
        self.t_start = self.t_first = self.t_last = 0.0
        self.done = asyncio.Event()

    def start(self) -> None:
        self.t_start = time.perf_counter()

    def add(self, n: int) -> None:
        now = time.perf_counter()
        if not self.n:
            self.t_first = now
        self.n += n
        if self.n >= self.count and not self.done.is_set():
            self.t_last = now
            self.done.set()

    def result(self) -> Result:
        """``rate``: messages / (last handled - start of draining, after connect and join).
        ``steady`` is peers-bench's W2 rate (from the first handled), which leaves out the
        first fetch: up to 8 x 500 messages for the raw row, ~500 for redcurrent's."""
        steady = self.t_last - self.t_first
        return {"n": self.n, "rate": self.n / (self.t_last - self.t_start),
                "steady": self.n / steady if steady > 0 else float("nan"),
                "startup_s": self.t_first - self.t_start}


async def drain_raw(url: str, ns: str, count: int) -> Result:
    """XREADGROUP COUNT 500 over the 8 streams, orjson.loads each payload, pipelined XACK."""
    r = Redis.from_url(url)
    streams = raw_streams(ns)
    for s in streams:
        await r.xgroup_create(s, GROUP, id="0", mkstream=True)
    drain = Drain(count)
    drain.start()
    await raw_consume(r, lambda batch: drain.add(len(batch)), drain.done.is_set, block_ms=1000, ns=ns)
    await r.aclose()
    return drain.result()


async def raw_consume(r: Redis, on_batch: Callable[[list[dict[str, Any]]], None],
                      stop: Callable[[], bool], block_ms: int, ns: str) -> None:
    """peers-bench ad_raw._consume: decode the batch, "process" it, then ack it."""
    wanted: dict[Any, Any] = {s: ">" for s in raw_streams(ns)}
    while not stop():
        reply: Any = await r.xreadgroup(GROUP, "c0", wanted, count=BATCH, block=block_ms)
        if not reply:
            continue
        batch = []
        pipe = r.pipeline(transaction=False)
        for stream, entries in reply:
            ids = []
            for entry_id, fields in entries:
                batch.append(orjson.loads(fields[b"d"]))
                ids.append(entry_id)
            pipe.xack(stream, GROUP, *ids)
        on_batch(batch)
        await pipe.execute()


async def run_consumer(consumer: Consumer, mode: str, on_messages: Callable[[int, list[Message]], None],
                       until: Callable[[], Coroutine[Any, Any, object]], on_start: Callable[[], None] = lambda: None,
                       ) -> None:
    """process_batch (mode "batch") or process ("each") until ``until()`` returns, then stop."""

    async def many(msgs: list[Message]) -> None:
        on_messages(len(msgs), msgs)

    async def each(msg: Message) -> None:
        on_messages(1, [msg])

    async with consumer:
        on_start()
        task = asyncio.create_task(consumer.process_batch(many) if mode == "batch" else consumer.process(each))
        waiter = asyncio.create_task(until())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        await consumer.stop()
        await task  # raises what process() raised, if it ended on its own


async def drain_rc(url: str, ns: str, count: int, mode: str) -> Result:
    drain = Drain(count)
    kwargs: dict[str, Any] = {"batch_size": BATCH} if mode == "batch" else {}
    consumer = Consumer(TOPIC, group=GROUP, url=url, namespace=ns, start="earliest", **kwargs)
    await run_consumer(consumer, mode, lambda n, _msgs: drain.add(n), drain.done.wait, drain.start)
    return drain.result()


async def drain_batch(url: str, ns: str, count: int) -> Result:
    """process_batch, batch_size=500; the handler counts messages."""
    return await drain_rc(url, ns, count, "batch")


async def drain_each(url: str, ns: str, count: int) -> Result:
    """process, default batch_size; the handler counts messages."""
    return await drain_rc(url, ns, count, "each")


# -- latency ----------------------------------------------------------------------------

class Latency:
    """Consumer side: writes ``ready`` at the first message, records ms since each
    non-warm payload's ``ts``, done at ``expected`` or ``max_wait`` s after ready."""

    def __init__(self, expected: int, ready: str, max_wait: float) -> None:
        self.expected, self.ready, self.max_wait = expected, ready, max_wait
        self.ms: list[float] = []
        self.t_ready: float | None = None

    def add(self, values: list[dict[str, Any]]) -> None:
        now = time.time()
        if self.t_ready is None:
            self.t_ready = now
            Path(self.ready).write_text(str(now))
        self.ms.extend((now - v["ts"]) * 1000 for v in values if not v["warm"])

    def done(self) -> bool:
        started = self.t_ready is not None and time.time() - self.t_ready > self.max_wait
        return len(self.ms) >= self.expected or started

    async def wait(self) -> None:
        while not self.done():
            await asyncio.sleep(0.01)

    def result(self) -> Result:
        return {"received": len(self.ms), "expected": self.expected, "p50_ms": percentile(self.ms, 50),
                "p99_ms": percentile(self.ms, 99), "max_ms": max(self.ms, default=float("nan"))}


async def paced(send: Callable[[dict[str, Any]], Awaitable[object]], rate: float, total: int,
                ready: str | None) -> Result:
    """Warm-up messages every 50 ms until the consumer is ready, then ``total`` single
    awaited sends at ``rate`` msg/s (peers-bench paced_send_async)."""
    if ready is not None:
        deadline = time.monotonic() + 60
        i = 0
        while not await asyncio.to_thread(os.path.exists, ready):
            if time.monotonic() > deadline:
                raise RuntimeError("the consumer never became ready")
            await send(make_payload(i, warm=1))
            i += 1
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
    t0, sent = time.perf_counter(), 0
    while sent < total:
        due = min(total, int((time.perf_counter() - t0) * rate))
        if due <= sent:
            await asyncio.sleep(0.001)
            continue
        while sent < due:
            await send(make_payload(sent))
            sent += 1
    elapsed = time.perf_counter() - t0
    return {"sent": sent, "elapsed": elapsed, "rate": sent / elapsed}


async def lat_raw_producer(url: str, ns: str, rate: float, total: int, ready: str) -> Result:
    """One awaited XADD per message."""
    r = Redis.from_url(url)
    streams = raw_streams(ns)

    async def send(p: dict[str, Any]) -> None:
        await r.xadd(streams[raw_partition(p["key"])], {"d": orjson.dumps(p)})

    res = await paced(send, rate, total, ready)
    await r.aclose()
    return res


async def lat_rc_producer(url: str, ns: str, rate: float, total: int, ready: str) -> Result:
    """One awaited send() per message, default Producer settings."""
    await create_topic(url, ns)
    async with Producer(url, namespace=ns) as producer:
        async def send(p: dict[str, Any]) -> None:
            await producer.send(TOPIC, p, key=p["key"])

        return await paced(send, rate, total, ready)


async def lat_raw_consumer(url: str, ns: str, expected: int, ready: str, max_wait: float) -> Result:
    """XREADGROUP BLOCK over the 8 streams (COUNT 500), then pipelined XACK."""
    r = Redis.from_url(url)
    for s in raw_streams(ns):
        try:
            await r.xgroup_create(s, GROUP, id="0", mkstream=True)
        except ResponseError:  # BUSYGROUP
            pass
    lat = Latency(expected, ready, max_wait)
    await raw_consume(r, lat.add, lat.done, block_ms=100, ns=ns)
    await r.aclose()
    return lat.result()


async def lat_rc_consumer(url: str, ns: str, expected: int, ready: str, max_wait: float, mode: str) -> Result:
    """Default Consumer settings; process_batch (mode "batch") or process ("each")."""
    await create_topic(url, ns)
    lat = Latency(expected, ready, max_wait)
    consumer = Consumer(TOPIC, group=GROUP, url=url, namespace=ns)
    await run_consumer(consumer, mode, lambda _n, msgs: lat.add([m.value for m in msgs]), lat.wait)
    return lat.result()


# -- failover ---------------------------------------------------------------------------

async def fo_consumer(url: str, ns: str, log: str, hb: float, session: float) -> Result:
    """Appends "<time> <partition>" per handled message (unbuffered, survives SIGKILL)."""
    await create_topic(url, ns)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    async def handle(msg: Message) -> None:
        os.write(fd, b"%f %d\n" % (time.time(), msg.partition))

    async with Consumer(TOPIC, group=GROUP, url=url, namespace=ns, start="earliest",
                        heartbeat_interval=hb, session_timeout=session) as consumer:
        await consumer.process(handle)
    return {}


async def fo_producer(url: str, ns: str, rate: float) -> Result:
    """send() at ``rate`` msg/s until terminated."""
    await create_topic(url, ns)
    async with Producer(url, namespace=ns) as producer:
        async def send(p: dict[str, Any]) -> None:
            await producer.send(TOPIC, p, key=p["key"])

        return await paced(send, rate, 10**9, None)


# -- consume scaling --------------------------------------------------------------------

async def share_consumer(url: str, ns: str, ready: str, go: str, stop: str, hb: float = 0.2,
                         session: float = 1.5, backoff_max: float | None = None) -> Result:
    """One of N consumers of one group on a filled topic: joins, writes ``ready``, starts
    process_batch (batch_size=500) once ``go`` exists, stops once ``stop`` exists.
    ``points``: (time.monotonic(), messages handled so far) per batch; CLOCK_MONOTONIC is
    one clock for every process of the machine, so the orchestrator can merge them."""
    points: list[tuple[float, int]] = []
    n = 0

    async def handle(msgs: list[Message]) -> None:
        nonlocal n
        n += len(msgs)
        points.append((time.monotonic(), n))

    async def wait_for(path: str) -> None:
        while not await asyncio.to_thread(os.path.exists, path):
            await asyncio.sleep(0.01)

    backoff = None if backoff_max is None else Backoff(max=backoff_max)
    consumer = Consumer(TOPIC, group=GROUP, url=url, namespace=ns, start="earliest", batch_size=BATCH,
                        heartbeat_interval=hb, session_timeout=session, backoff=backoff)
    async with consumer:
        await asyncio.to_thread(Path(ready).write_text, "")
        await wait_for(go)
        task = asyncio.create_task(consumer.process_batch(handle))
        await wait_for(stop)
        await consumer.stop()
        await task
    return {"n": n, "points": points}


ROLES: dict[str, Callable[..., Coroutine[Any, Any, Result]]] = {
    "produce-raw-lua": produce_raw_lua,
    "produce-raw-pipe": produce_raw_pipe,
    "produce-batch": produce_batch,
    "produce-send": produce_send,
    "eo-batch": eo_batch,
    "eo-send": eo_send,
    "eo-txn": eo_txn,
    "fill-raw": fill_raw,
    "fill-rc": fill_rc,
    "drain-raw": drain_raw,
    "drain-batch": drain_batch,
    "drain-each": drain_each,
    "lat-raw-producer": lat_raw_producer,
    "lat-rc-producer": lat_rc_producer,
    "lat-raw-consumer": lat_raw_consumer,
    "lat-rc-consumer": lat_rc_consumer,
    "fo-consumer": fo_consumer,
    "fo-producer": fo_producer,
    "share-consumer": share_consumer,
}


def main() -> None:
    role, kwargs = sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    result = asyncio.run(ROLES[role](**kwargs))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
