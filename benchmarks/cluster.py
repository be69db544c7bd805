"""Producer and consumer throughput on a 3 + 3 Redis Cluster beside one node, and consume scaling.

    python benchmarks/cluster.py [--server valkey|redis62] [--count 100000] [--reps 3]
                                 [--only pc_leader,scale4] [--json]

One run starts both from one binary and measures them interleaved (rep 1 of every row,
then rep 2, ...), each row in its own process (``_bench_worker.py``, the roles of
produce.py and consume.py, same ~210-byte JSON workload):

* one node: a primary with one replica, so that ``acks="replica"`` has a replica to wait
  for, like each shard of the cluster;
* the cluster: 3 primaries with one replica each (``redcurrent.embedded.EmbeddedCluster``).

  p1_leader   send_batch of 500 Records, 8 partitions, one node, acks="leader"
  p1_replica  the same, acks="replica"
  pc_leader   the same on the cluster, acks="leader"
  pc_replica  the same on the cluster, acks="replica"
  c1          process_batch drain (batch_size 500) of --count messages, one node
  cc          the same on the cluster
  scale1/2/4  the cluster, 16 partitions filled with --count messages; 1, 2 or 4 consumer
              processes of one group (process_batch, batch_size 500, heartbeat 0.2 s)
              start handling together once all have joined and the assignment settled.
              ``rate``: messages/s between 10% and 90% of the messages handled (every
              process's batches merged on the machine's monotonic clock); ``e2e``: all
              messages / (last handled - the start signal).

Printed: median (min-max) per row, and ratios computed per rep with their median.
Ratios compare rows of one run on one machine; the absolute rates are the machine's.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import redis
from _common import (
    GROUP,
    TOPIC,
    Ratio,
    Result,
    Results,
    Row,
    drop_namespace,
    fmt,
    parse_result,
    print_json,
    print_ratios,
    print_table,
    run_worker,
    select_rows,
    server_binary,
    server_version,
    spawn_worker,
    stop_process,
)
from consume import drain
from redis.cluster import RedisCluster

from redcurrent import Admin
from redcurrent.embedded import HOST, EmbeddedCluster, EmbeddedServer

SCALE_PARTITIONS = 16
_REPL_ARGS = ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]


# -- servers ----------------------------------------------------------------------------

@contextmanager
def one_node(binary: str) -> Iterator[str]:
    """A primary and its replica (no persistence); the primary's URL once the link is up."""
    with ExitStack() as stack:
        primary = EmbeddedServer(binary, extra_args=_REPL_ARGS).start()
        stack.callback(primary.stop)
        replica = EmbeddedServer(binary, extra_args=[*_REPL_ARGS, "--replicaof", HOST, str(primary.port)]).start()
        stack.callback(replica.stop)
        deadline = time.monotonic() + 20
        while True:
            with replica.client() as client:
                if client.info("replication").get("master_link_status") == "up":
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the one-node benchmark's replica never synced")
            time.sleep(0.05)
        yield primary.url


def drop(url: str, ns: str) -> None:
    """Every key of a row's namespace, on one node or every primary of the cluster."""
    with redis.Redis.from_url(url) as r:
        is_cluster = bool(r.info("cluster").get("cluster_enabled"))
    if not is_cluster:
        drop_namespace(url, ns)
        return
    with RedisCluster.from_url(url) as rc:
        keys = list(rc.scan_iter(match=f"{ns}:*", count=1000))
        for i in range(0, len(keys), 500):
            rc.delete(*keys[i : i + 500])  # redis-py splits a DEL by slot


# -- scaling ----------------------------------------------------------------------------

async def _group_until(url: str, ns: str, done: Callable[[Any], bool], timeout: float) -> None:
    async with Admin(url, namespace=ns) as admin:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if done(await admin.describe_group(TOPIC, GROUP)):
                    return
            except Exception:  # no member has joined yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"consumer group not ready within {timeout}s")
            await asyncio.sleep(0.1)


def _balanced(n: int) -> Callable[[Any], bool]:
    def done(info: Any) -> bool:
        return len(info.members) == n and all(
            p.owner and p.partition in info.assignment.get(p.owner, ()) for p in info.partitions
        )

    return done


def _drained(info: Any) -> bool:
    return bool(info.lag == 0 and info.pending == 0)


def window_rate(points: list[tuple[float, int]], lo: float = 0.1, hi: float = 0.9) -> float:
    """Messages/s between ``lo`` and ``hi`` of all messages handled; ``points`` are
    (time, messages in that batch) from every process."""
    events = sorted(points)
    total = sum(n for _, n in events)
    seen, t_lo, t_hi, n_lo = 0, None, None, 0
    for t, n in events:
        seen += n
        if t_lo is None and seen >= lo * total:
            t_lo, n_lo = t, seen
        if seen >= hi * total:
            t_hi = t
            break
    if t_lo is None or t_hi is None or t_hi <= t_lo:
        return float("nan")
    return (seen - n_lo) / (t_hi - t_lo)


def scale(consumers: int, count: int, url: str, ns: str) -> Result:
    """Fill 16 partitions; ``consumers`` processes join; all start together; drain."""
    run_worker("fill-rc", url=url, ns=ns, count=count, partitions=SCALE_PARTITIONS)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        go, stop = Path(tmp, "go"), Path(tmp, "stop")
        logs = [Path(tmp, f"c{i}.log") for i in range(consumers)]
        readies = [Path(tmp, f"ready{i}") for i in range(consumers)]
        procs = []
        try:
            for log, ready in zip(logs, readies, strict=True):
                with log.open("w") as out:
                    procs.append(spawn_worker("share-consumer", out, url=url, ns=ns, ready=str(ready),
                                              go=str(go), stop=str(stop)))
            asyncio.run(_group_until(url, ns, _balanced(consumers), 60))
            t_go = time.monotonic()
            go.write_text("")
            asyncio.run(_group_until(url, ns, _drained, 300))
            stop.write_text("")
            for proc in procs:
                proc.wait(30)
        finally:
            for proc in procs:
                stop_process(proc)
        results = [parse_result(log.read_text()) for log in logs]
    if any(r is None for r in results):
        raise RuntimeError("a scaling consumer failed:\n" + "\n".join(log.name for log in logs))
    points: list[tuple[float, int]] = []
    for r in results:
        assert r is not None
        prev = 0
        for t, n in r["points"]:
            points.append((t, n - prev))
            prev = n
    handled = sum(n for _, n in points)
    last = max(t for t, _ in points)
    return {"rate": window_rate(points), "e2e": handled / (last - t_go), "handled": handled,
            "per_process": [r["n"] for r in results if r is not None]}


# -- rows -------------------------------------------------------------------------------

def on(target: str, fn: Callable[..., Result], /, **kwargs: Any) -> Callable[[dict[str, str], str], Result]:
    """A row's run: ``fn(url of target, ns, **kwargs)``."""
    def run(urls: dict[str, str], ns: str) -> Result:
        return fn(url=urls[target], ns=ns, **kwargs)
    return run


def produce(url: str, ns: str, count: int, acks: str) -> Result:
    return run_worker("produce-batch", url=url, ns=ns, count=count, acks=acks)


def rows(count: int) -> list[tuple[str, Row]]:
    """(target, row) pairs; ``Row.run`` gets a dict of URLs by target."""
    p = functools.partial(produce, count=count)
    d = functools.partial(drain, "fill-rc", "drain-batch", count)

    def sc(n: int) -> Callable[..., Result]:
        return lambda url, ns: scale(n, count, url, ns)

    table: list[tuple[str, str, str, str, Callable[..., Result], tuple[str, ...]]] = [
        ("one", "p1_leader", "a", "send_batch 500, one node, acks=leader", functools.partial(p, acks="leader"), ("rate",)),
        ("one", "p1_replica", "b", "send_batch 500, one node, acks=replica", functools.partial(p, acks="replica"), ("rate",)),
        ("cluster", "pc_leader", "c", "send_batch 500, 3+3 cluster, acks=leader", functools.partial(p, acks="leader"), ("rate",)),
        ("cluster", "pc_replica", "d", "send_batch 500, 3+3 cluster, acks=replica", functools.partial(p, acks="replica"), ("rate",)),
        ("one", "c1", "e", "process_batch drain, one node", lambda url, ns: d(url, ns), ("rate",)),
        ("cluster", "cc", "f", "process_batch drain, 3+3 cluster", lambda url, ns: d(url, ns), ("rate",)),
        ("cluster", "scale1", "g", "cluster, 16 partitions, 1 consumer process", sc(1), ("rate", "e2e")),
        ("cluster", "scale2", "h", "cluster, 16 partitions, 2 consumer processes", sc(2), ("rate", "e2e")),
        ("cluster", "scale4", "i", "cluster, 16 partitions, 4 consumer processes", sc(4), ("rate", "e2e")),
    ]
    return [(target, Row(name, letter, label, on(target, fn), metrics))  # type: ignore[arg-type]
            for target, name, letter, label, fn, metrics in table]


RATIOS = [
    Ratio("c/a cluster/one leader", "pc_leader", "p1_leader"),
    Ratio("d/b cluster/one replica", "pc_replica", "p1_replica"),
    Ratio("b/a one replica/leader", "p1_replica", "p1_leader"),
    Ratio("d/c cl. replica/leader", "pc_replica", "pc_leader"),
    Ratio("f/e consume cluster/one", "cc", "c1"),
    Ratio("h/g 2 vs 1 consumers", "scale2", "scale1"),
    Ratio("i/g 4 vs 1 consumers", "scale4", "scale1"),
]


def run_interleaved(urls: dict[str, str], chosen: list[tuple[str, Row]], reps: int, results: Results) -> None:
    """_common.run_interleaved, with each row on its own server (one node or the cluster)."""
    for rep in range(reps):
        for target, row in chosen:
            ns = f"bench-{row.name.replace('_', '-')}-{rep}"
            drop(urls[target], ns)
            try:
                res = row.run(urls, ns)  # type: ignore[arg-type]
            finally:
                drop(urls[target], ns)
            results.rows.setdefault(row.name, []).append(res)
            shown = ", ".join(f"{m} {fmt(res.get(m))}" for m in row.metrics)
            print(f"  rep {rep + 1}/{reps} {row.name:11} {shown}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="valkey", help="valkey | redis62 (the binary of every node)")
    parser.add_argument("--count", type=int, default=100_000, help="messages per row")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--only", default="", help="comma-separated rows: " + ",".join(r.name for _, r in rows(0)))
    parser.add_argument("--json", action="store_true", help="also print one machine-readable line")
    args = parser.parse_args()
    all_rows = rows(args.count)
    names = {r.name for r in select_rows([r for _, r in all_rows], args.only)}
    chosen = [(t, r) for t, r in all_rows if r.name in names]
    binary = server_binary(args.server)
    with one_node(binary) as one, EmbeddedCluster(binary=binary) as cluster:
        urls = {"one": one, "cluster": cluster.url}
        results = Results("cluster", args.server, server_version(one),
                          {"count": args.count, "reps": args.reps, "scale_partitions": SCALE_PARTITIONS})
        run_interleaved(urls, chosen, args.reps, results)
    print(f"cluster: {results.version} ({args.server}), one node (primary + replica) vs 3+3 cluster, "
          f"{args.count:,} msgs of ~210 B JSON, {args.reps} reps; msg/s median (min-max)")
    print_table(results, [r for _, r in chosen])
    print_ratios(results, RATIOS)
    if args.json:
        print_json(results, RATIOS)


if __name__ == "__main__":
    main()
