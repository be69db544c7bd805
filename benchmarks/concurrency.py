"""Concurrent process(): a handler that awaits 10 ms, today's default against concurrency.

    python benchmarks/concurrency.py [--server valkey|redis62|URL] [--count 20000]
                                     [--work-ms 10] [--concurrency 200]

One consumer, 8 partitions, --count messages over 1,000 keys (the shared ~210-byte
workload of _common.py), produced before the consumer starts. Each row drains its own
namespace in this process, one row after the other, in the same run:

  default      Consumer.process, concurrency=None (one handler call per partition)
  key          Consumer.process, concurrency=200, ordering="key"

The rate is messages / (last handler return - start of processing, after joining). The
key row also checks that the same key never ran twice at once and that each key's seqs
came in order. Target: key >= 8,000 msg/s against ~800 for default.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from _common import GROUP, KEYS, PARTITIONS, TOPIC, payloads, server, server_version

from redcurrent import Admin, Consumer, Message, Producer, Record


async def fill(url: str, ns: str, count: int) -> None:
    async with Admin(url, namespace=ns) as admin:
        await admin.create_topic(TOPIC, PARTITIONS)
    data = payloads(count)
    async with Producer(url, namespace=ns) as producer:
        for i in range(0, count, 500):
            await producer.send_batch(TOPIC, [Record(p, key=p["key"]) for p in data[i : i + 500]])


async def drain(url: str, ns: str, count: int, work_s: float, **options: Any) -> dict[str, float]:
    done = asyncio.Event()
    handled = 0
    running: set[str] = set()
    last_seq: dict[str, int] = {}
    overlaps = disorder = 0

    async def handle(msg: Message) -> None:
        nonlocal handled, overlaps, disorder
        key, seq = msg.value["key"], msg.value["seq"]
        if key in running:
            overlaps += 1
        if last_seq.get(key, -1) >= seq:
            disorder += 1
        running.add(key)
        last_seq[key] = seq
        await asyncio.sleep(work_s)
        running.discard(key)
        handled += 1
        if handled == count:
            done.set()

    consumer = Consumer(TOPIC, group=GROUP, url=url, namespace=ns, start="earliest", **options)
    async with consumer:
        started = time.perf_counter()
        task = asyncio.create_task(consumer.process(handle))
        await asyncio.wait_for(done.wait(), 600)
        took = time.perf_counter() - started
        await consumer.stop()
        await task
    return {"rate": count / took, "seconds": took, "overlaps": overlaps, "disorder": disorder}


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", default="valkey")
    p.add_argument("--count", type=int, default=20_000)
    p.add_argument("--work-ms", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=200)
    args = p.parse_args()
    rows: list[tuple[str, dict[str, Any]]] = [
        ("default", {}),
        ("key", {"concurrency": args.concurrency, "ordering": "key"}),
    ]
    with server(args.server) as url:
        print(f"server: {server_version(url)}; {args.count} messages over {KEYS} keys, "
              f"{PARTITIONS} partitions, handler awaits {args.work_ms} ms, one consumer")
        rates: dict[str, float] = {}
        for name, options in rows:
            ns = f"bc{uuid.uuid4().hex[:8]}"
            await fill(url, ns, args.count)
            r = await drain(url, ns, args.count, args.work_ms / 1000, **options)
            rates[name] = r["rate"]
            print(f"{name:8s} {options!s:45s} {r['rate']:9,.0f} msg/s  {r['seconds']:6.1f} s  "
                  f"same-key overlaps {r['overlaps']:.0f}  per-key disorder {r['disorder']:.0f}")
        print(f"key / default: {rates['key'] / rates['default']:.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
