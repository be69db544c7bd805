"""Fleet scale: many members of one group, many partitions, one server or a cluster.

    python benchmarks/fleet.py [--members 100] [--partitions 1024] [--workers 4]
                               [--heartbeat 1.0] [--session 10.0] [--window 10]
                               [--server valkey|redis62|URL] [--cluster]
    python benchmarks/fleet.py --slopes [--window 5]      # the scaling model's slopes
    python benchmarks/fleet.py --assign-cost              # the coordinator script alone

One run: a private server (or a 3-primary cluster with ``--cluster``), a topic of
--partitions empty partitions, and --members consumers of one group spread over
--workers processes (each runs members/workers ``Consumer`` instances with the given
heartbeat and session, ``process()`` with a handler that does nothing). Measured, all
from Redis's side unless said otherwise:

* **converge**: every worker is told to start at the same instant; the time until the
  assignment is complete (every partition has an owner key), balanced (owned counts of
  all members differ by at most one), disjoint (one owner key per partition, each held
  by a live member) and matches the coordinator's target. Polled every 50 ms from the
  owner keys and the group's state hash.
* **steady state** (after convergence and a short settle): connections (``INFO clients``,
  without this script's own), and over --window seconds of idleness the deltas of
  ``INFO commandstats`` (calls/s and µs per call per command; commands run inside a
  script are counted again under their own names, their time is inside the EVALSHA's),
  Redis CPU (``INFO cpu``, user + sys, as a share of one core) and each worker process's
  CPU (``time.process_time``).
* **stop half**: half the members (half of each worker's) stop gracefully at the same
  instant; how many releases failed (the consumers' ``release_errors`` counter and
  warnings that name a release), and the time until the survivors own every partition
  (and until that is balanced again).

``--slopes`` runs the grid the scaling model (docs/scaling.md) is built from: members
10 → 500 at 1,024 partitions, partitions 64 → 8,192 at 50 members, and prints Redis
µs per heartbeat interval against each, with a least-squares slope. ``--assign-cost``
times the coordinator script alone when membership changes (each join recomputes the
assignment) for a grid of members x partitions, from ``INFO commandstats``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

TOPIC = "fleet"
GROUP = "g"
POLL_S = 0.05


# -- worker process -------------------------------------------------------------------------


class _Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.releases = 0
        self.too_many = 0
        self.samples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "release" in text:
            self.releases += 1
        if "Too many connections" in text:
            self.too_many += 1
        if len(self.samples) < 5:
            self.samples.append(text[:300])


async def _worker(args: dict[str, Any]) -> None:
    from redcurrent import Consumer

    counter = _Counter()
    logging.getLogger("redcurrent").addHandler(counter)
    logging.getLogger("redcurrent").setLevel(logging.WARNING)
    consumers = [
        Consumer(TOPIC, group=GROUP, url=args["url"], namespace=args["ns"],
                 heartbeat_interval=args["heartbeat"], session_timeout=args["session"])
        for _ in range(args["count"])
    ]
    tasks: list[asyncio.Task[None]] = []

    async def nothing(_msg: Any) -> None:
        return None

    def say(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    say({"ready": True})
    while True:
        line = (await asyncio.to_thread(sys.stdin.readline)).strip()
        if not line or line == "EXIT":
            break
        if line == "GO":
            t0 = time.monotonic()
            await asyncio.gather(*(c.start() for c in consumers))
            tasks = [asyncio.create_task(c.process(nothing)) for c in consumers]
            say({"started": time.monotonic() - t0})
        elif line == "CPU":
            say({"cpu": time.process_time()})
        elif line == "STOP":
            half = consumers[(len(consumers) + 1) // 2:]
            t0 = time.monotonic()
            res = await asyncio.gather(*(c.stop() for c in half), return_exceptions=True)
            counter.samples += [repr(e) for e in res if isinstance(e, BaseException)][:3]
            errors = sum(c.stats().get("release_errors", 0) for c in half)
            say({"stopped": time.monotonic() - t0, "release_errors": errors,
                 "release_warnings": counter.releases, "too_many": counter.too_many,
                 "samples": counter.samples})
    await asyncio.gather(*(c.stop() for c in consumers), return_exceptions=True)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- orchestrator ---------------------------------------------------------------------------


class Worker:
    def __init__(self, url: str, ns: str, count: int, heartbeat: float, session: float) -> None:
        spec = json.dumps({"url": url, "ns": ns, "count": count, "heartbeat": heartbeat, "session": session})
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", spec], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {self.proc.pid} ended (exit {self.proc.poll()})")
            if line.startswith("{"):
                out: dict[str, Any] = json.loads(line)
                return out

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.send("EXIT")
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


class View:
    """Read-only views of the group from Redis (one client per primary on a cluster)."""

    def __init__(self, url: str, ns: str, partitions: int, cluster: bool) -> None:
        from redcurrent.keys import Keys

        self.keys = Keys(ns)
        self.partitions = partitions
        self.cluster = cluster
        self.client: Any = redis.RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
        self.owner_keys = [self.keys.owner(TOPIC, p, GROUP) for p in range(partitions)]

    def nodes(self) -> list[redis.Redis]:
        if not self.cluster:
            return [self.client]
        return [self.client.get_redis_connection(n) for n in self.client.get_primaries()]

    def owners(self) -> list[str | None]:
        if self.cluster:
            raw = self.client.mget_nonatomic(self.owner_keys)
        else:
            raw = self.client.mget(self.owner_keys)
        return [v.decode().split("|", 1)[0] if v else None for v in raw]

    def members(self) -> set[str]:
        return {m.decode() for m in self.client.hkeys(self.keys.members(TOPIC, GROUP))}

    def target(self) -> dict[str, list[int]]:
        raw = self.client.hget(self.keys.group_state(TOPIC, GROUP), "assignment")
        return json.loads(raw) if raw else {}

    def converged(self, expect: int, among: set[str] | None = None) -> tuple[bool, str]:
        members = self.members()
        if len(members) != expect:
            return False, f"{len(members)} members"
        if among is not None and not members <= among:
            return False, "a stopped member is still registered"
        owners = self.owners()
        if None in owners:
            return False, f"{owners.count(None)} partitions without owner"
        counts = dict.fromkeys(members, 0)
        for o in owners:
            if o not in counts:
                return False, f"owner {o} is not a member"
            counts[o] += 1
        if max(counts.values()) - min(counts.values()) > 1:
            return False, f"unbalanced {min(counts.values())}..{max(counts.values())}"
        target = self.target()
        for m, parts in target.items():
            for p in parts:
                if owners[p] != m:
                    return False, "owners differ from the target"
        return True, "ok"

    def owned_by(self, among: set[str]) -> bool:
        return all(o is not None and o in among for o in self.owners())

    def info(self, section: str) -> list[dict[str, Any]]:
        return [n.info(section) for n in self.nodes()]

    def reset(self) -> None:
        for n in self.nodes():
            n.config_resetstat()

    def close(self) -> None:
        self.client.close()


def _cpu(infos: list[dict[str, Any]]) -> float:
    return sum(float(i["used_cpu_user"]) + float(i["used_cpu_sys"]) for i in infos)


def _commandstats(infos: list[dict[str, Any]]) -> dict[str, tuple[int, float]]:
    out: dict[str, tuple[int, float]] = {}
    for info in infos:
        for name, v in info.items():
            if not name.startswith("cmdstat_"):
                continue
            cmd = name[8:]
            calls, usec = out.get(cmd, (0, 0.0))
            out[cmd] = (calls + int(v["calls"]), usec + float(v["usec"]))
    return out


@contextlib.contextmanager
def target_server(spec: str, cluster: bool) -> Iterator[str]:
    if cluster:
        from _common import server_binary

        from redcurrent.embedded import EmbeddedCluster

        binary = None if "://" in spec else server_binary(spec)
        with EmbeddedCluster(3, 0, binary) as c:
            yield c.url
        return
    from _common import server

    with server(spec) as url:
        yield url


def run_fleet(url: str, *, members: int, partitions: int, workers: int, heartbeat: float, session: float,
              window: float, cluster: bool, stop_half: bool = True, ns: str | None = None,
              timeout: float = 90.0) -> dict[str, Any]:
    """One fleet run (see the module docstring); a dict of what was measured."""
    from redcurrent.admin import Admin

    ns = ns or f"fleet{os.getpid()}x{int(time.time() * 1000) % 100000}"

    async def create() -> None:
        async with Admin(url=url, namespace=ns) as admin:
            await admin.create_topic(TOPIC, partitions=partitions)

    asyncio.run(create())
    view = View(url, ns, partitions, cluster)
    base_clients = sum(int(i["connected_clients"]) for i in view.info("clients"))
    workers = max(1, min(workers, members))
    counts = [members // workers + (1 if i < members % workers else 0) for i in range(workers)]
    fleet = [Worker(url, ns, n, heartbeat, session) for n in counts]
    out: dict[str, Any] = {"members": members, "partitions": partitions, "workers": workers,
                           "heartbeat": heartbeat, "session": session, "cluster": cluster}
    try:
        for w in fleet:
            w.read()
        t0 = time.monotonic()
        for w in fleet:
            w.send("GO")
        why = ""
        converge = None
        while time.monotonic() - t0 < timeout:
            ok, why = view.converged(members)
            if ok:
                converge = time.monotonic() - t0
                break
            time.sleep(POLL_S)
        out["converge_s"] = converge
        if converge is None:
            out["converge_state"] = why
        starts = [w.read()["started"] for w in fleet]
        out["start_call_s"] = max(starts)
        time.sleep(min(3.0, 2 * heartbeat))
        # steady state
        before_cpu = [(w.send("CPU"), w.read()["cpu"])[1] for w in fleet]
        view.reset()
        cpu0, t_start = _cpu(view.info("cpu")), time.monotonic()
        time.sleep(window)
        stats = _commandstats(view.info("commandstats"))
        elapsed = time.monotonic() - t_start
        cpu1 = _cpu(view.info("cpu"))
        after_cpu = [(w.send("CPU"), w.read()["cpu"])[1] for w in fleet]
        clients = sum(int(i["connected_clients"]) for i in view.info("clients")) - base_clients
        per_cmd = {c: {"per_s": calls / elapsed, "usec_per_call": usec / calls if calls else 0.0}
                   for c, (calls, usec) in sorted(stats.items(), key=lambda kv: -kv[1][1])
                   if c not in ("info", "config|resetstat", "config", "client|list", "mget", "hkeys", "hget")}
        out["connections"] = clients
        out["commands"] = per_cmd
        out["evalsha_usec_per_s"] = stats.get("evalsha", (0, 0.0))[1] / elapsed
        sent = ("evalsha", "xread", "xadd", "pexpire", "xrevrange", "del", "ping")
        out["redis_usec_per_s_top"] = sum(stats[c][1] for c in sent if c in stats and c != "pexpire") / elapsed
        out["redis_cpu_pct"] = 100 * (cpu1 - cpu0) / elapsed
        out["client_cpu_pct"] = [round(100 * (a - b) / elapsed, 1) for a, b in zip(after_cpu, before_cpu, strict=True)]
        out["client_cpu_us_per_partition_s"] = 1e6 * sum(a - b for a, b in zip(after_cpu, before_cpu, strict=True)) \
            / elapsed / partitions
        if stop_half:
            everyone = view.members()
            t1 = time.monotonic()
            for w in fleet:
                w.send("STOP")
            owned_s = balanced_s = None
            stopped = []
            survivors_n = sum(n - n // 2 for n in counts)
            while time.monotonic() - t1 < timeout:
                now_members = view.members()
                if len(now_members) == survivors_n and owned_s is None and view.owned_by(now_members):
                    owned_s = time.monotonic() - t1
                if owned_s is not None:
                    ok, why = view.converged(survivors_n, everyone)
                    if ok:
                        balanced_s = time.monotonic() - t1
                        break
                time.sleep(POLL_S)
            stopped = [w.read() for w in fleet]
            out["stop_owned_s"] = owned_s
            out["stop_balanced_s"] = balanced_s
            out["stop_call_s"] = max(s["stopped"] for s in stopped)
            out["release_errors"] = sum(s["release_errors"] for s in stopped)
            out["release_warnings"] = sum(s["release_warnings"] for s in stopped)
            out["too_many_connections"] = sum(s["too_many"] for s in stopped)
            out["warning_samples"] = [x for s in stopped for x in s["samples"]][:3]
    finally:
        for w in fleet:
            w.close()
        with contextlib.suppress(Exception):
            keys = list(view.client.scan_iter(match=f"{ns}:*", count=1000)) if not cluster else []
            for i in range(0, len(keys), 500):
                view.client.delete(*keys[i:i + 500])
        view.close()
    return out


def assign_cost(url: str, members: int, partitions: int, assignor: str = "round_robin", rounds: int = 10) -> float:
    """µs of one coordinator-script call that recomputes the assignment (a join)."""
    from redcurrent import scripts
    from redcurrent.admin import Admin
    from redcurrent.keys import Keys

    ns = f"assign{members}x{partitions}{assignor[0]}"
    keys = Keys(ns)
    s = scripts.script("heartbeat")

    async def go() -> float:
        async with Admin(url=url, namespace=ns) as admin:
            await admin.create_topic(TOPIC, partitions=partitions)
        r = redis.asyncio.Redis.from_url(url)
        kk = keys.coordinator(TOPIC, GROUP)

        async def call(m: str, op: str) -> None:
            await scripts.run(r, s, kk, [GROUP, m, "i", 600_000, 1000, op, "{}", assignor])

        pipe = r.pipeline(transaction=False)
        for i in range(members - 1):
            scripts.queue(pipe, scripts.Call(s, kk, [GROUP, f"m{i:05d}", "i", 600_000, 1000, "join", "{}", assignor]))
        await call("m00000", "join")
        await pipe.execute()
        await r.config_resetstat()
        for i in range(rounds):
            await call(f"x{i}", "join")
            await call(f"x{i}", "leave")
        st = (await r.info("commandstats"))["cmdstat_evalsha"]
        await r.aclose()
        return float(st["usec"]) / int(st["calls"])

    return asyncio.run(go())


def _slope(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def _row(r: dict[str, Any]) -> str:
    conv = f"{r['converge_s']:.1f}" if r.get("converge_s") is not None else f"none ({r.get('converge_state')})"
    return (f"{r['members']:>5} x {r['partitions']:<5} converge {conv:>6} s  conns {r['connections']:>5}  "
            f"redis cpu {r['redis_cpu_pct']:5.2f}%  scripts {r['evalsha_usec_per_s']:8.0f} µs/s  "
            f"client cpu/partition {r['client_cpu_us_per_partition_s']:6.1f} µs/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--members", type=int, default=100)
    p.add_argument("--partitions", type=int, default=1024)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--heartbeat", type=float, default=1.0)
    p.add_argument("--session", type=float, default=10.0)
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--server", default="valkey")
    p.add_argument("--cluster", action="store_true")
    p.add_argument("--no-stop", action="store_true", help="skip the stop-half step")
    p.add_argument("--slopes", action="store_true")
    p.add_argument("--assign-cost", action="store_true")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.worker:
        asyncio.run(_worker(json.loads(a.worker)))
        return
    with target_server(a.server, a.cluster) as url:
        if a.assign_cost:
            for assignor in ("round_robin", "sticky"):
                for m in (10, 100, 500):
                    for n in (64, 1024, 8192):
                        print(f"assign {assignor:11} {m:>4} members x {n:<5} partitions: "
                              f"{assign_cost(url, m, n, assignor):8.0f} µs per recompute", flush=True)
            return
        if a.slopes:
            common = {"workers": a.workers, "heartbeat": a.heartbeat, "session": a.session,
                      "window": a.window, "cluster": a.cluster, "stop_half": False}
            by_members = [run_fleet(url, members=m, partitions=1024, **common) for m in (10, 50, 100, 200, 500)]
            for r in by_members:
                print(_row(r), flush=True)
            by_parts = [run_fleet(url, members=50, partitions=n, **common) for n in (64, 256, 1024, 4096, 8192)]
            for r in by_parts:
                print(_row(r), flush=True)
            hb = a.heartbeat
            ym = [r["redis_cpu_pct"] / 100 * 1e6 * hb for r in by_members]
            yp = [r["redis_cpu_pct"] / 100 * 1e6 * hb for r in by_parts]
            print(f"slope: {_slope([r['members'] for r in by_members], ym):.1f} µs of Redis CPU per heartbeat "
                  f"per member (at 1,024 partitions)")
            print(f"slope: {_slope([r['partitions'] for r in by_parts], yp):.2f} µs of Redis CPU per heartbeat "
                  f"per partition (at 50 members)")
            sm = [r["evalsha_usec_per_s"] * hb for r in by_members]
            sp = [r["evalsha_usec_per_s"] * hb for r in by_parts]
            print(f"slope: {_slope([r['members'] for r in by_members], sm):.1f} µs of scripts per heartbeat per member; "
                  f"{_slope([r['partitions'] for r in by_parts], sp):.2f} per partition")
            print(f"slope: {_slope([r['members'] for r in by_members], [r['connections'] for r in by_members]):.2f} "
                  f"connections per member; {_slope([r['partitions'] for r in by_parts], [r['connections'] for r in by_parts]):.4f} per partition")
            conv = [(r["members"], r["partitions"], r["converge_s"]) for r in by_members + by_parts]
            print("convergence (members, partitions, s):", conv)
            if a.json:
                print(json.dumps({"members": by_members, "partitions": by_parts}))
            return
        r = run_fleet(url, members=a.members, partitions=a.partitions, workers=a.workers, heartbeat=a.heartbeat,
                      session=a.session, window=a.window, cluster=a.cluster, stop_half=not a.no_stop)
        print(_row(r))
        top = list(r["commands"].items())[:8]
        print("idle work: " + ", ".join(f"{c} {v['per_s']:.0f}/s ({v['usec_per_call']:.1f} µs)" for c, v in top))
        print(f"client cpu per worker process: {r['client_cpu_pct']} %")
        if "stop_owned_s" in r:
            print(f"stop half: release errors {r['release_errors']}, release warnings {r['release_warnings']}, "
                  f"MaxConnections {r['too_many_connections']}; survivors own all after {r['stop_owned_s']} s, "
                  f"balanced after {r['stop_balanced_s']} s (stop() took {r['stop_call_s']:.2f} s)")
            for s in r["warning_samples"]:
                print("  warning:", s)
        if a.json:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
