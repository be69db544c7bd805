"""What exactly-once costs the producer, against plain send / send_batch in the same run.

    python benchmarks/exactly_once.py [--server valkey|redis62|URL] [--count 100000] [--reps 3]
                                      [--only batch,txn100] [--json]

Workload: produce.py's (~210-byte JSON dicts keyed over 1,000 keys, 8 partitions). Each
row runs in its own process; rows are interleaved (rep 1 of each, then rep 2, ...).

  a batch         send_batch of 500 Record(dict, key=...)                    (baseline)
  b batch_dedup   (a), every record with its own (new) dedup_key
  c batch_tid     (a) by a producer with a transactional_id (epoch check + batch digest)
  d send          1,000 tasks awaiting send (one key each)                     (baseline)
  e send_dedup    (d), every send with its own dedup_key
  f send_seq      one task awaiting send after send: latency of one send       (baseline)
  g txn1          transactions of 1 record, one after another
  h batch10       send_batch of 10 records, one call after another             (baseline)
  i txn10         transactions of 10 records
  j batch100      send_batch of 100 records, one call after another            (baseline)
  k txn100        transactions of 100 records (over the 8 partitions)
  l txn100_tid    (k) with a transactional_id

Printed: records/s and the median latency per call (send_batch / send / commit) in ms,
median (min-max) over the reps, and per-rep ratios with their median: each exactly-once
row over its baseline (1 - ratio is its throughput cost). The txn rows use --count/10
(txn1: --count/50) records so a rep stays short; rates are per record either way.
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

METRICS = ("rate", "lat_ms")


def produce(role: str, url: str, ns: str, **kwargs: Any) -> Result:
    return run_worker(role, url=url, ns=ns, **kwargs)


def rows(count: int) -> list[Row]:
    def run(role: str, n: int, **kwargs: Any) -> functools.partial[Result]:
        return functools.partial(produce, role, count=max(1, n), **kwargs)

    small, tiny = count // 10, count // 50
    return [
        Row("batch", "a", "send_batch, 500 a call", run("eo-batch", count), METRICS),
        Row("batch_dedup", "b", "send_batch, 500 a call, each a dedup_key", run("eo-batch", count, dedup=True),
            METRICS),
        Row("batch_tid", "c", "send_batch, 500 a call, transactional_id",
            run("eo-batch", count, transactional=True), METRICS),
        Row("send", "d", "1,000 tasks x send", run("eo-send", count), METRICS),
        Row("send_dedup", "e", "1,000 tasks x send, each a dedup_key", run("eo-send", count, dedup=True), METRICS),
        Row("send_seq", "f", "one task, send after send", run("eo-send", tiny, tasks=1), METRICS),
        Row("txn1", "g", "transactions of 1, one after another", run("eo-txn", tiny, size=1), METRICS),
        Row("batch10", "h", "send_batch of 10, one after another", run("eo-batch", small, size=10), METRICS),
        Row("txn10", "i", "transactions of 10", run("eo-txn", small, size=10), METRICS),
        Row("batch100", "j", "send_batch of 100, one after another", run("eo-batch", small, size=100), METRICS),
        Row("txn100", "k", "transactions of 100", run("eo-txn", small, size=100), METRICS),
        Row("txn100_tid", "l", "transactions of 100, transactional_id",
            run("eo-txn", small, size=100, transactional=True), METRICS),
    ]


RATIOS = [
    Ratio("b/a dedup/batch", "batch_dedup", "batch"),
    Ratio("c/a tid/batch", "batch_tid", "batch"),
    Ratio("e/d dedup/send", "send_dedup", "send"),
    Ratio("g/f txn1/send_seq", "txn1", "send_seq"),
    Ratio("i/h txn10/batch10", "txn10", "batch10"),
    Ratio("k/j txn100/batch100", "txn100", "batch100"),
    Ratio("l/k tid/txn100", "txn100_tid", "txn100"),
    Ratio("g/f latency txn1", "txn1", "send_seq", metric="lat_ms", target="(commit / send latency)"),
    Ratio("k/j latency txn100", "txn100", "batch100", metric="lat_ms", target="(commit / send_batch latency)"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, rows(0))
    args = parser.parse_args()
    chosen = select_rows(rows(args.count), args.only)
    with server(args.server) as url:
        results = Results("exactly_once", args.server, server_version(url),
                          {"count": args.count, "reps": args.reps, "partitions": PARTITIONS})
        run_interleaved(url, chosen, args.reps, results)
    print(f"exactly_once: {results.version} ({args.server}), ~210 B JSON, {PARTITIONS} partitions, "
          f"--count {args.count:,}, {args.reps} reps; records/s and ms per call, median (min-max)")
    print_table(results, chosen)
    print_ratios(results, RATIOS)
    if args.json:
        print_json(results, RATIOS)


if __name__ == "__main__":
    main()
