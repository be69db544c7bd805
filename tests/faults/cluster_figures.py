"""The figures of docs/cluster.md, measured on a 3 + 3 cluster from the test binary.

    .venv/bin/python tests/faults/cluster_figures.py [--reps 3] [--records 100000]

* acks ratio: send_batch of 500 keyed records over 8 partitions, as fast as it goes,
  acks="replica" vs acks="leader", alternating, on one cluster: records/s and the ratio.
* acks="leader" loss per failover: a producer sends keyed batches without pause
  (several concurrent senders); a primary is SIGKILLed; once its replica is promoted
  every metadata the producer got back is looked up; what is missing was acknowledged
  and lost. A fresh cluster each repetition.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

from redis.asyncio import RedisCluster  # noqa: E402
from support.servers import Cluster, find_server_binary  # noqa: E402

from redcurrent import Admin, Producer, Record, RecordMetadata  # noqa: E402
from redcurrent.keys import Keys  # noqa: E402


async def throughput(url: str, ns: str, acks: str, records: int) -> float:
    batch = [Record({"i": i, "pad": "x" * 50}, key=f"k{i}") for i in range(500)]
    async with Producer(url, namespace=ns, acks=acks) as producer:  # type: ignore[arg-type]
        await producer.send_batch("bench", batch)  # warm: metadata, scripts, connections
        started = time.perf_counter()
        for _ in range(records // 500):
            await producer.send_batch("bench", batch)
        return records / (time.perf_counter() - started)


async def acks_ratio(binary: str, reps: int, records: int) -> None:
    with Cluster(binary) as cluster:
        async with Admin(cluster.url, namespace="fig") as admin:
            await admin.create_topic("bench", 8)
        rates: dict[str, list[float]] = {"leader": [], "replica": []}
        for _ in range(reps):
            for acks in ("leader", "replica"):
                rates[acks].append(await throughput(cluster.url, "fig", acks, records))
        leader, replica = statistics.median(rates["leader"]), statistics.median(rates["replica"])
        print(f"send_batch(500) records/s, median of {reps}: leader {leader:,.0f}  replica "
              f"{replica:,.0f}  ratio {replica / leader:.2f}  (all: {rates})")


async def leader_loss(binary: str) -> tuple[int, int]:
    """(acknowledged sends lost, acknowledged sends in the 2 s before the kill)."""
    with Cluster(binary) as cluster:
        ns, keys = "loss", Keys("loss")
        async with Admin(cluster.url, namespace=ns) as admin:
            await admin.create_topic("t", 8)
        acked: list[tuple[float, RecordMetadata]] = []
        stop = asyncio.Event()
        async with Producer(cluster.url, namespace=ns, acks="leader") as producer:

            async def sender(w: int) -> None:
                i = 0
                while not stop.is_set():
                    batch = [Record({"w": w, "i": i + j}, key=f"{w}-{i + j}") for j in range(50)]
                    try:
                        metas = await producer.send_batch("t", batch)
                    except Exception:
                        await asyncio.sleep(0.01)
                        continue
                    now = time.monotonic()
                    acked.extend((now, m) for m in metas)
                    i += 50

            tasks = [asyncio.create_task(sender(w)) for w in range(8)]
            await asyncio.sleep(2.0)
            victim = cluster.primary_for_key(keys.stream("t", 0))
            killed = time.monotonic()
            cluster.kill(victim)
            await asyncio.to_thread(cluster.wait_ready)
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*tasks)
        client = RedisCluster.from_url(cluster.url)
        try:
            stored: dict[int, set[str]] = {}
            for p in range(8):
                entries = await client.xrange(keys.stream("t", p))
                stored[p] = {eid.decode() for eid, _ in entries}
            lost = sum(m.id not in stored[m.partition] for _, m in acked)
        finally:
            await client.aclose()
        recent = sum(killed - 2.0 <= t <= killed for t, _ in acked)
        return lost, recent


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    binary = find_server_binary("auto")
    if args.records:
        await acks_ratio(binary, args.reps, args.records)
    for rep in range(args.reps):
        lost, recent = await leader_loss(binary)
        print(f"acks=leader, primary SIGKILL #{rep + 1}: {lost} acknowledged records lost "
              f"(of {recent} acknowledged in the 2 s before the kill)")


if __name__ == "__main__":
    asyncio.run(main())
