"""Consumer throughput, latency and failover against a raw redis-py baseline, in one run.

    python benchmarks/consume.py [--count 100000]

(a) raw redis-py: XREADGROUP COUNT 500 over 8 partitions + pipelined XACK
(b) one redcurrent Consumer with process_batch (batch_size 500)
(c) one redcurrent Consumer with process (one message at a time)
then end-to-end latency p50/p99 at a steady 2,000 msg/s, and the seconds from
SIGKILL of one of 3 consumer processes until its partitions are consumed again.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from redis.asyncio import Redis

from _common import PARTITIONS, Timer, payloads, rate, server_url
from redcurrent import Admin, Consumer, Message, Producer, Record
from redcurrent.keys import Keys

HERE = Path(__file__).resolve().parent


async def fill(url: str, ns: str, count: int) -> None:
    async with Admin(url, namespace=ns) as admin:
        if "t" in await admin.list_topics():
            await admin.delete_topic("t")
        await admin.create_topic("t", partitions=PARTITIONS)
    data = payloads(count)
    async with Producer(url, namespace=ns) as producer:
        for i in range(0, count, 4000):
            await producer.send_batch("t", [Record(v, key=k) for k, v in data[i : i + 4000]])


async def raw(url: str, ns: str, count: int) -> float:
    r = Redis.from_url(url)
    keys = Keys(ns)
    streams = [keys.stream("t", p) for p in range(PARTITIONS)]
    for s in streams:
        await r.xgroup_create(s, "raw", "0")
    done = 0
    with Timer() as t:
        while done < count:
            reply = await r.xreadgroup("raw", "c1", {s: ">" for s in streams}, count=500)
            pipe = r.pipeline(transaction=False)
            for stream, entries in reply:
                ids = [eid for eid, _fields in entries]
                done += len(ids)
                pipe.xack(stream, "raw", *ids)
            await pipe.execute()
    await r.aclose()
    return rate(count, t.seconds)


async def ours(url: str, ns: str, count: int, batch: bool) -> float:
    got = 0
    finished = asyncio.Event()

    async def each(msg: Message) -> None:
        nonlocal got
        got += 1
        if got >= count:
            finished.set()

    async def many(msgs: list[Message]) -> None:
        nonlocal got
        got += len(msgs)
        if got >= count:
            finished.set()

    group = "batch" if batch else "each"
    consumer = Consumer("t", group=group, url=url, namespace=ns, start="earliest",
                        batch_size=500, max_in_flight=8 * 500)
    async with consumer:
        with Timer() as t:
            task = asyncio.create_task(consumer.process_batch(many) if batch else consumer.process(each))
            await finished.wait()
        await consumer.stop()
        await task
    return rate(count, t.seconds)


async def latency(url: str, ns: str, seconds: float = 5.0, per_s: int = 2000) -> tuple[float, float]:
    async with Admin(url, namespace=ns) as admin:
        await admin.create_topic("lat", partitions=PARTITIONS, exist_ok=True)
    samples: list[float] = []

    async def handle(msg: Message) -> None:
        samples.append(time.time() - msg.value["t"])

    async with Consumer("lat", group="lat", url=url, namespace=ns) as consumer:
        task = asyncio.create_task(consumer.process(handle))
        await asyncio.sleep(0.5)
        async with Producer(url, namespace=ns, linger=0) as producer:
            start = time.monotonic()
            sent = 0
            while time.monotonic() - start < seconds:
                due = int((time.monotonic() - start) * per_s)
                while sent < due:
                    await producer.send("lat", {"t": time.time(), "i": sent}, key=f"k{sent % 1000}")
                    sent += 1
                await asyncio.sleep(0.001)
        await asyncio.sleep(0.5)
        await consumer.stop()
        await task
    samples.sort()
    return statistics.median(samples) * 1000, samples[int(len(samples) * 0.99)] * 1000


async def failover(url: str, ns: str, hb: float, session: float) -> float:
    async with Admin(url, namespace=ns) as admin:
        if "lat" in await admin.list_topics():
            await admin.delete_topic("lat")
        await admin.create_topic("lat", partitions=PARTITIONS)
    tmp = Path(tempfile.mkdtemp())
    logs = [tmp / f"c{i}.log" for i in range(3)]
    procs = [subprocess.Popen([sys.executable, str(HERE / "_consumer_proc.py"), url, ns, str(log), str(hb), str(session)])
             for log in logs]
    try:
        async with Producer(url, namespace=ns, linger=0) as producer:
            async def produce_for(duration: float) -> None:
                end = time.monotonic() + duration
                i = 0
                while time.monotonic() < end:
                    await producer.send("lat", {"i": i}, key=f"k{i % 1000}")
                    i += 1
                    await asyncio.sleep(0.002)
            await produce_for(3.0)
            victim_parts = {int(line.split()[1]) for line in logs[0].read_text().splitlines()}
            killed = time.time()
            os.kill(procs[0].pid, signal.SIGKILL)
            await produce_for(session + 6 * hb + 2.0)
        resumed: dict[int, float] = {}
        for log in logs[1:]:
            for line in log.read_text().splitlines():
                ts, p = line.split()
                if int(p) in victim_parts and float(ts) > killed:
                    resumed[int(p)] = min(resumed.get(int(p), 1e18), float(ts))
        if not victim_parts or len(resumed) < len(victim_parts):
            return float("nan")
        return max(resumed.values()) - killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


async def run(url: str, count: int) -> dict[str, float]:
    ns = "bench-c"
    await fill(url, ns, count)
    res = {"a": await raw(url, ns, count)}
    res["b"] = await ours(url, ns, count, batch=True)
    res["c"] = await ours(url, ns, count, batch=False)
    res["p50_ms"], res["p99_ms"] = await latency(url, ns)
    res["failover_s"] = await failover(url, ns, 0.2, 1.5)
    async with Admin(url, namespace=ns) as admin:
        for t in await admin.list_topics():
            await admin.delete_topic(t)
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000)
    args = parser.parse_args()
    with server_url() as url:
        res = asyncio.run(run(url, args.count))
    a = res["a"]
    print(f"consume benchmark: {args.count} messages, ~200 B JSON, {PARTITIONS} partitions")
    print(f"{'case':4} {'what':48} {'msg/s':>10} {'/a':>6}")
    for key, label in (("a", "raw XREADGROUP COUNT 500 x 8 + pipelined XACK"),
                       ("b", "Consumer.process_batch (batch_size 500)"),
                       ("c", "Consumer.process")):
        print(f"{key:4} {label:48} {res[key]:10.0f} {res[key] / a:6.2f}")
    print(f"latency at 2,000 msg/s: p50 {res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms (target p99 <= 5 ms)")
    print(f"failover (H=0.2 s, S=1.5 s): {res['failover_s']:.2f} s from SIGKILL to its partitions "
          f"consumed again (target <= S + 2H = 1.9 s)")
    print(f"targets: b/a >= 0.70 -> {res['b'] / a:.2f}; c/a >= 0.40 -> {res['c'] / a:.2f}")
    _ = orjson


if __name__ == "__main__":
    main()
