"""The fault scenarios of the reliability table, each as one async function.

``full=False`` is the short version the README's test command runs (one repetition,
fewer messages); ``full=True`` is the standard run (3 consumers, 8 partitions, 20,000
keyed messages = 100 keys x 200 seqs) that ``benchmarks/faults.py`` prints.
S = session timeout (1.5 s), H = heartbeat interval (0.2 s).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from harness import NS, TOPIC, FaultRun, Report
from redis.crc import key_slot

from redcurrent import Admin
from redcurrent.testing import Event, Sent, check_history

S, H = 1.5, 0.2
Scenario = Callable[[Path, str, bool], Awaitable[Report]]


def _run(
    tmp: Path,
    binary: str,
    name: str,
    full: bool,
    *,
    seqs_short: int = 60,
    rate: float = 1000.0,
    **kw: Any,
) -> FaultRun:
    return FaultRun(
        tmp, binary, name=name, seqs=200 if full else seqs_short, rate=rate, hb=H, session=S, **kw
    )


async def _after_start(run: FaultRun, seconds: float) -> None:
    run.start_producing()
    await asyncio.sleep(seconds)


def _zombie_violations(run: FaultRun, member: str, since_ns: int) -> int:
    """Messages ``member`` handled after ``since_ns`` on partitions not (re)assigned to it
    after that moment: a zombie that kept fetching would show up here."""
    held: set[int] = set()
    bad = 0
    for e in sorted(run.events(), key=lambda e: e.t_ns):
        if e.consumer != member or e.t_ns <= since_ns:
            continue
        if e.event == "assign" and e.partition is not None:
            held.add(e.partition)
        elif e.event in ("revoke", "lost") and e.partition is not None:
            held.discard(e.partition)
        elif e.event == "handled" and e.partition not in held:
            bad += 1
    return bad


async def sigkill(tmp: Path, binary: str, full: bool, **kw: Any) -> Report:
    """SIGKILL a consumer (3 times in full), restarting the victim each time."""
    name = "cluster-sigkill" if kw.get("cluster") else "sigkill"
    async with _run(tmp, binary, name, full, **kw) as run:
        await _after_start(run, 1.0)
        resumes = []
        for _ in range(3 if full else 1):
            parts = run.assigned("w1")
            t = run.signal(1, signal.SIGKILL)
            await run.wait_exit(1)
            await _wait_resumed(run, t, parts, "w1", S + 3 * H + 3)
            resumes.append(run.resumed_after(t, parts, excluding="w1"))
            run.start_worker(1)
            await run.wait_balanced(20)
            await asyncio.sleep(0.5)
        return await run.finish(resume_s=_max(resumes), limit_s=S + 3 * H + 1)


async def sigterm(tmp: Path, binary: str, full: bool) -> Report:
    """SIGTERM a consumer (3 times in full): a graceful handoff, no duplicates."""
    async with _run(tmp, binary, "sigterm", full) as run:
        await _after_start(run, 1.0)
        handoffs = []
        for _ in range(3 if full else 1):
            parts = run.assigned("w1")
            t = run.signal(1, signal.SIGTERM)
            await run.wait_exit(1)
            await _wait_resumed(run, t, parts, "w1", 2 * H + 3)
            handoffs.append(run.resumed_after(t, parts, excluding="w1"))
            run.start_worker(1)
            await run.wait_balanced(20)
            await asyncio.sleep(0.5)
        return await run.finish(handoff_s=_max(handoffs), limit_s=2 * H + 1)


async def zombie(tmp: Path, binary: str, full: bool, **kw: Any) -> Report:
    """SIGSTOP a consumer for 2.7 S, then SIGCONT (twice in full)."""
    name = "cluster-zombie" if kw.get("cluster") else "zombie"
    async with _run(tmp, binary, name, full, seqs_short=80, **kw) as run:
        await _after_start(run, 1.0)
        rejoins, zombie_events = [], 0
        for _ in range(2 if full else 1):
            run.signal(1, signal.SIGSTOP)
            await asyncio.sleep(2.7 * S)
            t_cont = run.signal(1, signal.SIGCONT)
            rejoin = await _wait_assign(run, "w1", t_cont, 2 * H + 5)
            rejoins.append(rejoin)
            await run.wait_balanced(20)
            zombie_events += _zombie_violations(run, "w1", t_cont)
            await asyncio.sleep(0.5)
        return await run.finish(
            rejoin_s=_max(rejoins), limit_s=2 * H + 1, zombie_handled=zombie_events
        )


async def gc_pause(tmp: Path, binary: str, full: bool) -> Report:
    """SIGSTOP a consumer for 0.5 S, 3 times: no rebalance at all."""
    async with _run(tmp, binary, "gc-pause", full) as run:
        await _after_start(run, 1.0)
        for _ in range(3):
            run.signal(1, signal.SIGSTOP)
            await asyncio.sleep(0.5 * S)
            run.signal(1, signal.SIGCONT)
            await asyncio.sleep(0.8)
        return await run.finish()


async def rolling_restart(tmp: Path, binary: str, full: bool) -> Report:
    """5 rounds (1 in short) over the 3 consumers: SIGTERM, start again."""
    async with _run(tmp, binary, "rolling", full, seqs_short=100) as run:
        await _after_start(run, 1.0)
        handoffs = []
        for _ in range(5 if full else 1):
            for i in range(run.consumers):
                parts = run.assigned(f"w{i}")
                t = run.signal(i, signal.SIGTERM)
                await run.wait_exit(i)
                await _wait_resumed(run, t, parts, f"w{i}", 2 * H + 3)
                handoffs.append(run.resumed_after(t, parts, excluding=f"w{i}"))
                run.start_worker(i)
                await run.wait_balanced(20)
        return await run.finish(handoff_s=_max(handoffs), limit_s=2 * H + 1)


async def grow(tmp: Path, binary: str, full: bool) -> Report:
    """Grow 8 to 12 partitions mid-run."""
    async with _run(tmp, binary, "grow", full) as run:
        await _after_start(run, 1.5)
        t = time.monotonic_ns()
        async with Admin(run.server.url, namespace=NS) as admin:
            await admin.alter_partitions(TOPIC, 12)
        new = set(range(8, 12))
        await _wait_resumed(run, t, new, None, 10)
        first = run.resumed_after(t, new)
        report = await run.finish(new_partitions_s=first, limit_s=2.0)
        # Keys remap on growth (as in Kafka): order is promised within a partition.
        per_partition = check_history(
            [Sent((s.key, s.partition), s.seq, s.entry_id, s.partition) for s in run.sent],
            [
                Event(
                    e.consumer,
                    e.event,
                    (e.key, e.partition),
                    e.seq,
                    e.entry_id,
                    e.t_ns,
                    e.partition,
                )
                for e in run.events()
            ],
        )
        report.history.violations = per_partition.violations
        return report


async def grow_ordered(tmp: Path, binary: str, full: bool, **kw: Any) -> Report:
    """Grow 8 to 12 partitions mid-run with preserve_key_order: the order check is keyed
    by the key alone, across the growth (docs/architecture.md §10). ``pause_s``: from the
    growth to the first entry handled that was written after it."""
    name = "cluster-grow-ordered" if kw.get("cluster") else "grow-ordered"
    async with _run(tmp, binary, name, full, **kw) as run:
        await _after_start(run, 1.5)
        t = time.monotonic_ns()
        async with Admin(run.url, namespace=NS) as admin:
            await admin.alter_partitions(TOPIC, 12, preserve_key_order=True)
        grown_ms = time.time_ns() // 1_000_000
        new = set(range(8, 12))
        await _wait_resumed(run, t, new, None, 10)
        report = await run.finish(new_partitions_s=run.resumed_after(t, new), limit_s=5.0)
        later = [e.t_ns for e in run.events() if e.event == "handled" and e.entry_id
                 and int(e.entry_id.split("-")[0]) > grown_ms]
        report.extra["pause_s"] = (min(later) - t) / 1e9 if later else None
        return report


async def redis_restart(tmp: Path, binary: str, full: bool, fsync: str = "everysec") -> Report:
    """SIGKILL redis-server, restart it with AOF after 0.5 s (3 times in full)."""
    async with _run(
        tmp, binary, f"redis-restart-{fsync}", full, appendonly=True, appendfsync=fsync
    ) as run:
        await _after_start(run, 1.0)
        resumes = []
        for _ in range(3 if full else 1):
            run.server.kill()
            await asyncio.sleep(0.5)
            t = time.monotonic_ns()
            await asyncio.to_thread(run.server.restart)
            await _wait_resumed(run, t, set(range(run.partitions)), None, 10)
            resumes.append(run.resumed_after(t, set(range(run.partitions))))
            await asyncio.sleep(1.0)
        return await run.finish(
            resume_s=_max(resumes), limit_s=2.0, entries_unique=run.entry_ids_unique()
        )


async def redis_pause(tmp: Path, binary: str, full: bool) -> Report:
    """SIGSTOP redis-server for 2 s."""
    async with _run(tmp, binary, "redis-pause", full) as run:
        await _after_start(run, 1.0)
        run.server.pause()
        await asyncio.sleep(2.0)
        run.server.resume()
        return await run.finish()


async def latency(tmp: Path, binary: str, full: bool) -> Report:
    """100 ms +- 20 ms each way on every connection."""
    async with _run(tmp, binary, "latency", full, seqs_short=20, rate=400.0, proxies=True) as run:
        for proxy in run.proxies.values():
            proxy.set_latency(0.1, 0.02)
        run.epochs = [await run.epoch()]
        await _after_start(run, 0.5)
        report = await run.finish(timeout=90)
        return report


async def black_hole(tmp: Path, binary: str, full: bool) -> Report:
    """One consumer's connections black-holed (half-open) for 2 S."""
    async with _run(tmp, binary, "black-hole", full, seqs_short=80, proxies=True) as run:
        await _after_start(run, 1.0)
        parts = run.assigned("w1")
        t = time.monotonic_ns()
        run.proxies["w1"].black_hole()
        await _wait_resumed(run, t, parts, "w1", S + 3 * H + 5)
        resumed = run.resumed_after(t, parts, excluding="w1")
        await asyncio.sleep(max(0.0, 2 * S - (time.monotonic_ns() - t) / 1e9))
        t_heal = time.monotonic_ns()
        run.proxies["w1"].heal()
        lease_lost = _last_handled(run, "w1", t_heal)
        await run.wait_balanced(20)
        zombie = _zombie_violations(run, "w1", t_heal)
        return await run.finish(
            resume_s=resumed,
            limit_s=S + 3 * H + 1,
            zombie_handled=zombie,
            victim_stopped_s=None if lease_lost is None else (lease_lost - t) / 1e9,
        )


async def resets(tmp: Path, binary: str, full: bool) -> Report:
    """Every connection reset every 2 s for 30 s (6 s in short)."""
    async with _run(tmp, binary, "resets", full, seqs_short=80, proxies=True) as run:
        await _after_start(run, 0.5)
        end = time.monotonic() + (30 if full else 6)
        n = 0
        while time.monotonic() < end:
            await asyncio.sleep(2.0)
            for proxy in run.proxies.values():
                n += proxy.reset_all()
        report = await run.finish(timeout=90, resets=n)
        written = await run.stream_entries()
        report.extra["written_twice"] = written - len(run.sent)
        return report


SCENARIOS: dict[str, Scenario] = {
    "SIGKILL a consumer": sigkill,
    "SIGTERM a consumer": sigterm,
    "SIGSTOP 2.7 S (zombie)": zombie,
    "SIGSTOP 0.5 S (GC pause)": gc_pause,
    "rolling restart": rolling_restart,
    "grow 8 -> 12 partitions": grow,
    "grow 8 -> 12, preserve_key_order": grow_ordered,
    "redis-server SIGKILL + AOF everysec": lambda t, b, f: redis_restart(t, b, f, "everysec"),
    "redis-server SIGKILL + AOF always": lambda t, b, f: redis_restart(t, b, f, "always"),
    "redis-server SIGSTOP 2 s": redis_pause,
    "100 ms +- 20 ms latency": latency,
    "one consumer black-holed 2 S": black_hole,
    "connection resets every 2 s": resets,
}


# -- helpers --
async def _wait_resumed(
    run: FaultRun,
    t_ns: int,
    parts: set[int],
    excluding: str | None,
    timeout: float,
    written_after_ms: int | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not parts or run.resumed_after(t_ns, parts, excluding, written_after_ms) is not None:
            return
        await asyncio.sleep(0.05)


async def _wait_assign(run: FaultRun, member: str, since_ns: int, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in run.events():
            if e.consumer == member and e.event == "assign" and e.t_ns > since_ns:
                return (e.t_ns - since_ns) / 1e9
        await asyncio.sleep(0.05)
    return None


def _last_handled(run: FaultRun, member: str, before_ns: int) -> int | None:
    ts = [
        e.t_ns
        for e in run.events()
        if e.consumer == member and e.event == "handled" and e.t_ns < before_ns
    ]
    return max(ts) if ts else None


def _max(values: list[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return max(v for v in values if v is not None)


# -- Redis Cluster (3 primaries + 3 replicas, cluster-node-timeout 1 s) --
NODE_TIMEOUT_S = 1.0


def _cluster_run(tmp: Path, binary: str, name: str, full: bool, acks: str, **kw: Any) -> FaultRun:
    return _run(tmp, binary, name, full, cluster=True, acks=acks, **kw)


def _victim(run: FaultRun, target: str) -> Any:
    """The primary to fail: the coordinator's (``{topic}``), or one holding partitions
    but not the coordinator slot."""
    coordinator = run.coordinator_node()
    if target == "coordinator":
        return coordinator
    assert run.cluster is not None
    return next(n for n in run.cluster.primaries() if n is not coordinator and run.partitions_on(n))


async def cluster_primary_kill(
    tmp: Path, binary: str, full: bool, acks: str = "replica", target: str = "partitions"
) -> Report:
    """SIGKILL a primary (its replica takes over after the node timeout) while the
    producer sends and 3 consumer processes consume.

    With acks="replica" the killed node is restarted once its replica is promoted (as a
    supervisor would), and comes back as the new primary's replica: until then the new
    primary has no replica, so its partitions store sends but confirm none."""
    async with _cluster_run(tmp, binary, f"cluster-kill-{target}-{acks}", full, acks) as run:
        await _after_start(run, 1.0)
        victim = _victim(run, target)
        parts = run.partitions_on(victim) or set(range(run.partitions))
        cluster = run.cluster
        assert cluster is not None
        [replica] = cluster.replicas_of(victim)
        t, t_ms = time.monotonic_ns(), int(time.time() * 1000)
        cluster.kill(victim)
        limit = NODE_TIMEOUT_S + 3
        if acks == "replica":
            await _until(lambda: replica.role == "primary", 20)
            promoted = (time.monotonic_ns() - t) / 1e9
            await asyncio.to_thread(cluster.restart, victim)
        await _wait_resumed(run, t, parts, None, limit + 10, written_after_ms=t_ms)
        resumed = run.resumed_after(t, parts, written_after_ms=t_ms)
        await asyncio.to_thread(cluster.wait_ready)
        report = await run.finish(resume_s=resumed, limit_s=limit)
        report.extra["workers_died"] = len(run.workers_died())
        # Only writes acknowledged before the crash can be lost (acks="leader"): after
        # it, a partition is written on its new primary only.
        stored_ms = {(s.key, s.seq): int(s.entry_id.split("-")[0]) for s in run.sent}
        report.extra["lost_after_kill"] = sum(stored_ms[m] > t_ms for m in report.history.lost)
        if acks == "replica":
            report.extra["promoted_s"] = promoted
        return report


async def _until(done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(done):
        if time.monotonic() > deadline:
            raise AssertionError(f"not done within {timeout}s")
        await asyncio.sleep(0.05)


async def cluster_manual_failover(tmp: Path, binary: str, full: bool, acks: str = "leader") -> Report:
    """CLUSTER FAILOVER on the replica of a primary holding partitions."""
    async with _cluster_run(tmp, binary, f"cluster-failover-{acks}", full, acks) as run:
        await _after_start(run, 1.0)
        victim = _victim(run, "partitions")
        assert run.cluster is not None
        [replica] = run.cluster.replicas_of(victim)
        t, t_ms = time.monotonic_ns(), int(time.time() * 1000)
        await asyncio.to_thread(run.cluster.failover, replica)
        parts = run.partitions_on(replica)
        await _wait_resumed(run, t, parts, None, 10, written_after_ms=t_ms)
        report = await run.finish(
            resume_s=run.resumed_after(t, parts, written_after_ms=t_ms), limit_s=NODE_TIMEOUT_S + 3
        )
        report.extra["workers_died"] = len(run.workers_died())
        return report


async def cluster_slot_move(tmp: Path, binary: str, full: bool, what: str = "partition") -> Report:
    """Move one partition's slot (``{topic:0}``), or the coordinator's (``{topic}``), to
    another primary key by key (SETSLOT IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE)
    while the producer sends and 3 consumer processes consume."""
    async with _cluster_run(tmp, binary, f"cluster-move-{what}", full, "leader") as run:
        await _after_start(run, 1.0)
        key = run.keys_.meta(TOPIC) if what == "coordinator" else run.keys_.stream(TOPIC, 0)
        cluster = run.cluster
        assert cluster is not None
        source = cluster.primary_for_key(key)
        target = next(n for n in cluster.primaries() if n is not source)
        t = time.monotonic()
        moved = await asyncio.to_thread(cluster.migrate_slot, key_slot(key.encode()), target, step_s=0.1)
        took = time.monotonic() - t
        report = await run.finish(keys_moved=moved, move_s=round(took, 2))
        report.extra["workers_died"] = len(run.workers_died())
        report.extra["moved_to_target"] = cluster.primary_for_key(key) is target
        return report


CLUSTER_SCENARIOS: dict[str, Scenario] = {
    "cluster: primary SIGKILL, acks=replica": cluster_primary_kill,
    "cluster: coordinator's primary SIGKILL, acks=leader": lambda t, b, f: cluster_primary_kill(
        t, b, f, acks="leader", target="coordinator"
    ),
    "cluster: manual failover, acks=leader": cluster_manual_failover,
    "cluster: partition slot moved": cluster_slot_move,
    "cluster: coordinator slot moved": lambda t, b, f: cluster_slot_move(t, b, f, "coordinator"),
    "cluster: SIGKILL a consumer": lambda t, b, f: sigkill(t, b, f, cluster=True),
    "cluster: SIGSTOP 2.7 S (zombie)": lambda t, b, f: zombie(t, b, f, cluster=True),
    "cluster: grow 8 -> 12, preserve_key_order": lambda t, b, f: grow_ordered(t, b, f, cluster=True),
}
