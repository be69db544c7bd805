"""Producer throughput against raw redis-py baselines, measured in one run.

    python benchmarks/produce.py [--count 100000]

(a1) raw redis-py asyncio: pipelined XADD, one pipeline per batch of 500
(a2) raw redis-py asyncio: ONE EVALSHA per batch of 500 doing the XADDs server-side
(b)  Producer.send_batch (per call 4,000 records -> 8 partition batches of ~500)
(c)  1,000 concurrent tasks calling Producer.send
Idempotence on (default) and off for (b) and (c). Same ~200-byte JSON payloads,
1,000 distinct keys, 8 partitions. Ratios are to (a1) and (a2) of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from redis.asyncio import Redis

from _common import PARTITIONS, Timer, payloads, rate, server_url
from redcurrent import Admin, Producer, Record, partition_for_key

BATCH = 500
RAW_XADD_LUA = """
for i = 1, #ARGV, 2 do redis.call('XADD', KEYS[1], '*', 'k', ARGV[i], 'v', ARGV[i + 1]) end
return #ARGV / 2
"""


def batches(data: list[tuple[str, bytes]]) -> list[tuple[int, list[tuple[str, bytes]]]]:
    """Group messages per partition into batches of 500, in arrival order."""
    open_: dict[int, list[tuple[str, bytes]]] = {}
    out = []
    for key, value in data:
        p = partition_for_key(key, PARTITIONS)
        b = open_.setdefault(p, [])
        b.append((key, value))
        if len(b) == BATCH:
            out.append((p, b))
            open_[p] = []
    out.extend((p, b) for p, b in open_.items() if b)
    return out


async def raw_pipeline(r: Redis, data: list[tuple[str, bytes]], ns: str) -> float:
    with Timer() as t:
        for p, batch in batches(data):
            pipe = r.pipeline(transaction=False)
            stream = f"{ns}:{p}"
            for key, value in batch:
                pipe.xadd(stream, {"k": key, "v": value})
            await pipe.execute()
    return rate(len(data), t.seconds)


async def raw_script(r: Redis, data: list[tuple[str, bytes]], ns: str) -> float:
    sha = await r.script_load(RAW_XADD_LUA)
    with Timer() as t:
        for p, batch in batches(data):
            args = [x for kv in batch for x in kv]
            await r.evalsha(sha, 1, f"{ns}:{p}", *args)
    return rate(len(data), t.seconds)


async def send_batch(url: str, data: list[tuple[str, bytes]], ns: str, idempotent: bool) -> float:
    records = [Record(value, key=key) for key, value in data]
    async with Producer(url, namespace=ns, idempotent=idempotent) as producer:
        await producer.send("t", b"warm-up", key="w")
        with Timer() as t:
            step = BATCH * PARTITIONS
            for i in range(0, len(records), step):
                await producer.send_batch("t", records[i : i + step])
    return rate(len(records), t.seconds)


async def concurrent_sends(url: str, data: list[tuple[str, bytes]], ns: str, idempotent: bool,
                           tasks: int = 1000) -> float:
    async with Producer(url, namespace=ns, idempotent=idempotent) as producer:
        await producer.send("t", b"warm-up", key="w")

        async def worker(chunk: list[tuple[str, bytes]]) -> None:
            for key, value in chunk:
                await producer.send("t", value, key=key)

        chunks = [data[i::tasks] for i in range(tasks)]
        with Timer() as t:
            await asyncio.gather(*(worker(c) for c in chunks))
    return rate(len(data), t.seconds)


async def run(url: str, count: int) -> dict[str, float]:
    data = payloads(count)
    # The values are JSON bytes; the producer sends bytes untouched, like the baselines.
    results: dict[str, float] = {}
    async with Admin(url, namespace="bench-p") as admin:
        for ns in ("bench-p", "bench-p2", "bench-p3", "bench-p4", "bench-p5"):
            async with Admin(url, namespace=ns) as a:
                if "t" in await a.list_topics():
                    await a.delete_topic("t")
                await a.create_topic("t", partitions=PARTITIONS)
        del admin
    r = Redis.from_url(url)
    try:
        await r.delete(*[f"bench-raw1:{p}" for p in range(PARTITIONS)],
                       *[f"bench-raw2:{p}" for p in range(PARTITIONS)])
        results["a1"] = await raw_pipeline(r, data, "bench-raw1")
        results["a2"] = await raw_script(r, data, "bench-raw2")
    finally:
        await r.aclose()
    results["b"] = await send_batch(url, data, "bench-p", idempotent=True)
    results["b_noidem"] = await send_batch(url, data, "bench-p2", idempotent=False)
    results["c"] = await concurrent_sends(url, data, "bench-p3", idempotent=True)
    results["c_noidem"] = await concurrent_sends(url, data, "bench-p4", idempotent=False)
    r = Redis.from_url(url)
    try:  # leave the server as we found it
        for ns in ("bench-raw1", "bench-raw2"):
            await r.delete(*[f"{ns}:{p}" for p in range(PARTITIONS)])
    finally:
        await r.aclose()
    for ns in ("bench-p", "bench-p2", "bench-p3", "bench-p4", "bench-p5"):
        async with Admin(url, namespace=ns) as a:
            if "t" in await a.list_topics():
                await a.delete_topic("t")
    return results


def report(res: dict[str, float], count: int) -> None:
    a1, a2 = res["a1"], res["a2"]
    print(f"produce benchmark: {count} messages, ~200 B JSON, 1,000 keys, {PARTITIONS} partitions, batches of {BATCH}")
    rows = [
        ("a1", "raw redis-py pipelined XADD"),
        ("a2", "raw redis-py one EVALSHA per batch"),
        ("b", "send_batch (idempotent)"),
        ("b_noidem", "send_batch (idempotence off)"),
        ("c", "1,000 tasks x send (idempotent)"),
        ("c_noidem", "1,000 tasks x send (idempotence off)"),
    ]
    print(f"{'case':10} {'what':40} {'msg/s':>10} {'/a1':>6} {'/a2':>6}")
    for key, label in rows:
        v = res[key]
        print(f"{key:10} {label:40} {v:10.0f} {v / a1:6.2f} {v / a2:6.2f}")
    print(f"targets: b/a2 >= 0.75 -> {res['b'] / a2:.2f}; c/a1 >= 1.00 -> {res['c'] / a1:.2f}; "
          f"idempotence cost b {1 - res['b'] / res['b_noidem']:+.1%}, c {1 - res['c'] / res['c_noidem']:+.1%} (<= 10%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000)
    args = parser.parse_args()
    with server_url() as url:
        res = asyncio.run(run(url, args.count))
    report(res, args.count)


if __name__ == "__main__":
    sys.exit(main())
