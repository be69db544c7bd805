"""Share-group throughput by number of members, each member in its own process.

    python benchmarks/share.py [--server valkey|redis62|URL] [--members 1,2,4,8]
                               [--per-member 500] [--work-ms 10] [--reps 1]

For each member count N: a fresh namespace, a topic of 8 partitions, N processes each
running one ``ShareConsumer.process`` (default settings, start="latest") with a handler
that awaits ``--work-ms``; once all N have started, ``N * --per-member`` ~210-byte JSON
dicts are sent (one ``send_batch`` call per 500) and the clock runs from the first send
until the share group has nothing left to deliver or in flight (``Admin.describe_share_group``,
polled every 20 ms). Reports msg/s per N and the ratio to N = 1. The ideal with a
10 ms handler is N x 100 msg/s; the machine's cores bound it too.

    python benchmarks/share.py member URL NS   (internal: one member process)
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time
import uuid

from _common import (
    PARTITIONS,
    TOPIC,
    drop_namespace,
    payloads,
    server,
    server_version,
    stop_process,
)

from redcurrent import Admin, Message, Producer, Record, ShareConsumer

GROUP = "share"


async def member(url: str, ns: str, work_ms: float) -> None:
    sc = ShareConsumer(TOPIC, group=GROUP, url=url, namespace=ns)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(sc.stop()))

    async def handle(msg: Message) -> None:
        await asyncio.sleep(work_ms / 1000)

    async with sc:
        print("READY", flush=True)
        await sc.process(handle)


async def _drained(admin: Admin) -> bool:
    info = await admin.describe_share_group(TOPIC, GROUP)
    return info.lag == 0 and not info.in_flight and info.released == 0


def _spawn(url: str, ns: str, work_ms: float) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, "member", url, ns, str(work_ms)],
                            stdout=subprocess.PIPE, text=True)


async def one_run(url: str, n: int, per_member: int, work_ms: float) -> float:
    ns = "bshare" + uuid.uuid4().hex[:8]
    async with Admin(url, namespace=ns) as admin:
        await admin.create_topic(TOPIC, PARTITIONS)
    procs = [_spawn(url, ns, work_ms) for _ in range(n)]
    try:
        for p in procs:  # every member has joined (the group exists at "latest")
            assert p.stdout is not None
            line = await asyncio.to_thread(p.stdout.readline)
            if not line.startswith("READY"):
                raise RuntimeError(f"a member failed to start: {line!r}")
        count = n * per_member
        records = [Record(v, key=v["key"]) for v in payloads(count)]
        async with Producer(url, namespace=ns) as producer, Admin(url, namespace=ns) as admin:
            began = time.perf_counter()
            for i in range(0, count, 500):
                await producer.send_batch(TOPIC, records[i : i + 500])
            while not await _drained(admin):
                await asyncio.sleep(0.02)
            return count / (time.perf_counter() - began)
    finally:
        for p in procs:
            stop_process(p)
        drop_namespace(url, ns)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "member":
        asyncio.run(member(sys.argv[2], sys.argv[3], float(sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="valkey")
    parser.add_argument("--members", default="1,2,4,8")
    parser.add_argument("--per-member", type=int, default=500)
    parser.add_argument("--work-ms", type=float, default=10.0)
    parser.add_argument("--reps", type=int, default=1)
    args = parser.parse_args()
    counts = [int(x) for x in args.members.split(",")]
    with server(args.server) as url:
        print(f"server: {server_version(url)}; {PARTITIONS} partitions; handler {args.work_ms} ms; "
              f"{args.per_member} messages per member")
        rates: dict[int, list[float]] = {n: [] for n in counts}
        for _ in range(args.reps):
            for n in counts:
                rates[n].append(asyncio.run(one_run(url, n, args.per_member, args.work_ms)))
        base = sorted(rates[counts[0]])[len(rates[counts[0]]) // 2]
        print(f"| members | msg/s | x members={counts[0]} | ideal (N x 1000/work_ms) |")
        print("|---:|---:|---:|---:|")
        for n in counts:
            rate = sorted(rates[n])[len(rates[n]) // 2]
            print(f"| {n} | {rate:,.0f} | {rate / base:.2f} | {n * 1000 / args.work_ms:,.0f} |")


if __name__ == "__main__":
    main()
