"""Consumer processes under faults: SIGKILL, SIGSTOP, a Redis restart (docs/architecture.md §3, §4, §12).

Three consumer processes (``tests/support/worker.py``) share 8 partitions while this
test produces 100 keys x N sequence numbers; every scenario ends with the history
checker (``redcurrent.testing``): nothing lost, nothing left unacked, per-key
order kept. Heartbeat 0.2 s, session timeout 1.5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from support.consuming import HB, SESSION, STOP_HANG, create_topic, group_state, produce
from support.eventually import eventually
from support.servers import ServerProcess

from redcurrent import Producer
from redcurrent.keys import Keys
from redcurrent.testing import Event, History, Sent, check_history, read_log

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

TOPIC = "events"
GROUP = "g"
PARTITIONS = 8
KEYS = [f"key-{i:03d}" for i in range(100)]
MEMBERS = ("w1", "w2", "w3")
WORKER = Path(__file__).resolve().parents[1] / "support" / "worker.py"
RESUME_BOUND = SESSION + 2 * HB  # docs/architecture.md §3: a dead member's partitions resume within this
SLACK = 0.6  # scheduling on a 2-core machine running 3 consumers, a producer and Redis


class Fleet:
    """The consumer processes of one test, each with its own log file."""

    def __init__(self, url: str, namespace: str, tmp: Path) -> None:
        self.url, self.namespace, self.tmp = url, namespace, tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def log(self, member: str) -> Path:
        return self.tmp / f"{member}.log"

    def start(self, member: str, work_ms: float = 8.0, extra: tuple[str, ...] = ()) -> None:
        """Start a worker whose handler takes ``work_ms``, so a crash catches some in flight
        (``extra``: more worker options, e.g. ``("--concurrency", "50")``)."""
        args = [
            sys.executable,
            str(WORKER),
            "--url",
            self.url,
            "--namespace",
            self.namespace,
            "--topic",
            TOPIC,
            "--group",
            GROUP,
            "--log",
            str(self.log(member)),
            "--member-id",
            member,
            "--heartbeat",
            str(HB),
            "--session",
            str(SESSION),
            "--work-ms",
            str(work_ms),
            *extra,
        ]
        with open(self.tmp / f"{member}.stderr", "ab") as err:
            self.procs[member] = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )

    def signal(self, member: str, sig: signal.Signals) -> None:
        self.procs[member].send_signal(sig)

    def events(self) -> list[Event]:
        out: list[Event] = []
        for member in self.procs:
            if self.log(member).exists():
                out += read_log(self.log(member))
        return out

    def owned(self, member: str) -> set[int]:
        """What the member's listeners say it owns now."""
        owned: set[int] = set()
        for e in read_log(self.log(member)) if self.log(member).exists() else []:
            if e.event == "assign":
                owned.add(e.partition)  # type: ignore[arg-type]
            elif e.event in ("revoke", "lost"):
                owned.discard(e.partition)  # type: ignore[arg-type]
        return owned

    def stop(self, timeout: float = 10.0) -> dict[str, int | None]:
        """SIGTERM (graceful) every live worker; SIGKILL what does not exit in time."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes: dict[str, int | None] = {}
        for member, proc in self.procs.items():
            try:
                codes[member] = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
                codes[member] = None
        return codes

    def stderr(self) -> str:
        return "\n".join(
            f"--- {m}:\n{(self.tmp / f'{m}.stderr').read_text()[-3000:]}" for m in self.procs
        )


@contextlib.contextmanager
def fleet(url: str, namespace: str, tmp: Path) -> Iterator[Fleet]:
    f = Fleet(url, namespace, tmp)
    try:
        yield f
    finally:
        f.stop()


class Pump:
    """Produces rounds of one record per key (seq = round) until stopped."""

    def __init__(self, producer: Producer, interval: float = 0.1) -> None:
        self.producer, self.interval = producer, interval
        self.sent: list[Sent] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        seq = 0
        while not self._stop.is_set():
            self.sent += await produce(self.producer, TOPIC, KEYS, 1, first_seq=seq)
            seq += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> list[Sent]:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 60)
        return self.sent


@contextlib.asynccontextmanager
async def pumping(url: str, namespace: str) -> AsyncIterator[Pump]:
    async with Producer(url, namespace=namespace) as producer:
        pump = Pump(producer)
        pump.start()
        try:
            yield pump
        finally:
            await pump.stop()


async def wait_settled(
    r: Any, ns: str, f: Fleet, members: tuple[str, ...], timeout: float = 15
) -> dict[str, list[int]]:
    async def settled() -> dict[str, list[int]] | None:
        state = await group_state(r, ns, TOPIC, GROUP)
        if set(state.assignment) != set(members):
            return None
        if sorted(p for ps in state.assignment.values() for p in ps) != list(range(PARTITIONS)):
            return None
        if any(f.owned(m) != set(state.assignment[m]) for m in members):
            return None
        return state.assignment

    return await eventually(settled, timeout, 0.05, message=f"group settled on {members}")


def first_handled_after(
    events: list[Event], t_ns: int, partitions: list[int], by: set[str]
) -> dict[int, int]:
    """Partition -> monotonic ns of the first message ``by`` handled on it after ``t_ns``."""
    out: dict[int, int] = {}
    for e in sorted(events, key=lambda e: e.t_ns):
        if (
            e.event == "handled"
            and e.t_ns > t_ns
            and e.partition in partitions
            and e.consumer in by
        ):
            out.setdefault(e.partition, e.t_ns)  # type: ignore[arg-type]
    return out


async def all_acked(f: Fleet, sent: list[Sent], timeout: float = 20) -> History:
    def done() -> History | None:
        report = check_history(sent, f.events())
        return report if not report.lost and not report.unacked else None

    try:
        return await eventually(done, timeout, 0.2)
    except AssertionError:
        raise AssertionError(
            check_history(sent, f.events()).summary() + "\n" + f.stderr()
        ) from None


def exited_cleanly(codes: dict[str, int | None], *members: str) -> None:
    """Every worker exited 0 after SIGTERM (None: it had to be killed, STOP_HANG)."""
    assert all(codes[m] == 0 for m in members), f"{codes}; None means {STOP_HANG}"


async def pending_total(r: Any, ns: str) -> int:
    keys = Keys(ns)
    total = 0
    for p in range(PARTITIONS):
        info = await r.xpending(keys.stream(TOPIC, p), GROUP)
        total += int(info["pending"])
    return total


# --------------------------------------------------------------------------- crash


async def test_sigkilled_consumer_partitions_resume_on_survivors_nothing_lost_order_kept(
    redis_url: str, namespace: str, r: redis.asyncio.Redis, tmp_path: Path
) -> None:
    await create_topic(redis_url, namespace, TOPIC, PARTITIONS)
    with fleet(redis_url, namespace, tmp_path) as f:
        for m in MEMBERS:
            f.start(m)
        assignment = await wait_settled(r, namespace, f, MEMBERS)
        victim = assignment["w2"]
        async with pumping(redis_url, namespace) as pump:
            await asyncio.sleep(1.0)
            t_kill = time.monotonic_ns()
            f.signal("w2", signal.SIGKILL)
            resumed = await eventually(
                lambda: _all_of(
                    first_handled_after(f.events(), t_kill, victim, {"w1", "w3"}), victim
                ),
                RESUME_BOUND + 5,
                0.05,
                message="w2's partitions resumed on survivors",
            )
            await asyncio.sleep(max(0.0, t_kill / 1e9 + 3.0 - time.monotonic()))
        sent = pump.sent
        report = await all_acked(f, sent)
        await eventually(lambda: _pending_is(r, namespace, 0), 5, message="nothing left pending")
        codes = f.stop()
    took = {p: (t - t_kill) / 1e9 for p, t in resumed.items()}
    print(f"\nSIGKILL: resumed after {took} s; {report.summary()}")
    assert report.ok, report.summary()
    assert report.violations == []
    assert max(took.values()) <= RESUME_BOUND + SLACK, took
    exited_cleanly(codes, "w1", "w3")
    assert {e.consumer for e in f.events() if e.event == "handled" and e.partition in victim} >= {
        "w2"
    }


def _all_of(found: dict[int, int], wanted: list[int]) -> dict[int, int] | None:
    return found if set(found) == set(wanted) else None


async def _pending_is(r: Any, ns: str, n: int) -> bool:
    return await pending_total(r, ns) == n


# --------------------------------------------------------------------------- pause


class Monitor:
    """Collects MONITOR lines (Redis's own, ordered record of every command, scripts included)."""

    def __init__(self, url: str) -> None:
        self.client = redis.asyncio.Redis.from_url(url)
        self.lines: list[tuple[str, str]] = []  # (client type, command line)
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def _run(self) -> None:
        async with self.client.monitor() as m:
            self._ready.set()
            async for ev in m.listen():
                self.lines.append((ev.get("client_type", ""), ev["command"]))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 5)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.client.aclose()


def zombie_partition_writes(
    lines: list[tuple[str, str]], member: str, stream: str, group: str
) -> list[str]:
    """Commands that moved entries of ``stream`` into ``member``'s pending list or acked
    them for ``member``, up to the XAUTOCLAIM by which ``member`` legitimately re-claimed
    the partition (if it did)."""
    bad: list[str] = []
    caller = ""
    for kind, line in lines:
        if kind != "lua":
            caller = line  # the EVALSHA whose script the following lua lines belong to
            continue
        words = line.split()
        cmd = words[0].upper()
        by_member = f" {member}|" in f" {caller}"  # the fence token "<member>|<instance>"
        if cmd == "XAUTOCLAIM" and words[1:4] == [stream, group, member]:
            break  # a successful claim by the member: the partition is its own again
        if cmd == "XREADGROUP" and words[2:4] == [group, member] and words[-2] == stream:
            bad.append(line)
        elif cmd in ("XACK", "XCLAIM") and words[1] == stream and by_member:
            bad.append(line)
    return bad


async def test_paused_consumer_never_fetches_or_acks_its_lost_partitions_and_rejoins(
    redis_url: str, namespace: str, r: redis.asyncio.Redis, tmp_path: Path
) -> None:
    await create_topic(redis_url, namespace, TOPIC, PARTITIONS)
    keys = Keys(namespace)
    monitor = Monitor(redis_url)
    try:
        with fleet(redis_url, namespace, tmp_path) as f:
            for m in MEMBERS:
                f.start(m)
            assignment = await wait_settled(r, namespace, f, MEMBERS)
            lost = assignment["w2"]
            async with pumping(redis_url, namespace) as pump:
                await asyncio.sleep(1.0)
                t_stop = time.monotonic_ns()
                f.signal("w2", signal.SIGSTOP)
                taken = await eventually(
                    lambda: _all_of(
                        first_handled_after(f.events(), t_stop, lost, {"w1", "w3"}), lost
                    ),
                    RESUME_BOUND + 5,
                    0.05,
                    message="w2's partitions taken over",
                )
                # While w2 sleeps, Redis already says so: its fence tokens are gone and its
                # consumer name holds nothing on those partitions.
                for p in lost:
                    assert not (await r.get(keys.owner(TOPIC, p, GROUP)) or b"").startswith(b"w2|")
                    assert (
                        await r.xpending_range(keys.stream(TOPIC, p), GROUP, "-", "+", 10, "w2")
                        == []
                    )
                await monitor.start()
                await asyncio.sleep(max(0.0, t_stop / 1e9 + 2.5 - time.monotonic()))
                t_cont = time.monotonic_ns()
                f.signal("w2", signal.SIGCONT)
                await wait_settled(r, namespace, f, MEMBERS)  # it rejoined
                await asyncio.sleep(1.0)
            sent = pump.sent
            report = await all_acked(f, sent)
            await eventually(
                lambda: _pending_is(r, namespace, 0), 5, message="nothing left pending"
            )
            codes = f.stop()
    finally:
        await monitor.stop()
    events = f.events()
    took = {p: (t - t_stop) / 1e9 for p, t in taken.items()}
    print(
        f"\nSIGSTOP: taken over after {took} s; monitor lines {len(monitor.lines)}; {report.summary()}"
    )
    assert report.ok, report.summary()
    assert max(took.values()) <= RESUME_BOUND + SLACK, took

    # From Redis's own record: between SIGCONT and re-claiming a partition, w2 moved no
    # entry of it into its pending list and acked none of it.
    for p in lost:
        bad = zombie_partition_writes(monitor.lines, "w2", keys.stream(TOPIC, p), GROUP)
        assert bad == [], f"w2 wrote to partition {p} after losing it: {bad[:5]}"
    # ...and the record is not vacuous: it shows w2 claiming partitions back and reading
    reclaims = [
        line
        for kind, line in monitor.lines
        if kind == "lua" and line.startswith("XAUTOCLAIM") and line.split()[3] == "w2"
    ]
    assert reclaims and any(line.startswith("XREADGROUP GROUP g w2 ") for _, line in monitor.lines)
    # From w2's log: after the pause it handled nothing of a lost partition before it was
    # assigned that partition again; what it finished then had started before the pause.
    w2 = [e for e in events if e.consumer == "w2"]
    back = {
        p: min(
            (e.t_ns for e in w2 if e.event == "assign" and e.partition == p and e.t_ns > t_cont),
            default=None,
        )
        for p in lost
    }
    started_before = {(e.key, e.seq) for e in w2 if e.event == "handled" and e.t_ns < t_stop}
    for e in w2:
        if e.partition not in lost or e.t_ns <= t_stop:
            continue
        reassigned = back[e.partition]
        if reassigned is None or e.t_ns < reassigned:
            assert e.event != "handled", f"w2 handled {e} on a partition it had lost"
            if e.event == "acked":  # a handler that was running when SIGSTOP hit
                assert (e.key, e.seq) in started_before, f"w2 acked {e} it never had before"
    # its own account: the coordinator told it it was no longer a member
    stopped = [e for e in w2 if e.event == "stopped"]
    assert stopped or codes["w2"] is None
    assert any(e.event == "lost" for e in w2 if e.t_ns > t_cont), (
        "w2 never noticed it lost its partitions"
    )
    assert any(e.event == "handled" and e.t_ns > t_cont for e in w2), (
        "w2 did not consume again after rejoining"
    )


# --------------------------------------------------------------------------- Redis restart


@pytest.fixture
def aof_server(server_binary: str) -> Iterator[ServerProcess]:
    with ServerProcess(server_binary, appendonly=True, appendfsync="always") as server:
        yield server


@pytest.mark.parametrize(
    "extra",
    [(), ("--concurrency", "50", "--ordering", "key")],
    ids=["one-at-a-time", "concurrency"],
)
async def test_redis_restart_with_aof_causes_no_rebalance_and_loses_nothing(
    aof_server: ServerProcess, namespace: str, tmp_path: Path, extra: tuple[str, ...]
) -> None:
    """Also with ``concurrency=50, ordering="key"``: handlers in flight across the
    restart finish, their acks wait for Redis, and key order holds."""
    url = aof_server.url
    r = redis.asyncio.Redis.from_url(url)
    try:
        await create_topic(url, namespace, TOPIC, PARTITIONS)
        with fleet(url, namespace, tmp_path) as f:
            for m in MEMBERS:
                f.start(m, extra=extra)
            await wait_settled(r, namespace, f, MEMBERS)
            before = await group_state(r, namespace, TOPIC, GROUP)
            async with pumping(url, namespace) as pump:
                await asyncio.sleep(1.0)
                await r.aclose()
                aof_server.kill()  # SIGKILL
                await asyncio.sleep(2.0)  # down longer than the session timeout
                await asyncio.to_thread(aof_server.restart)
                t_up = time.monotonic_ns()
                r = redis.asyncio.Redis.from_url(url)
                resumed = await eventually(
                    lambda: _all_of(
                        first_handled_after(
                            f.events(), t_up, list(range(PARTITIONS)), set(MEMBERS)
                        ),
                        list(range(PARTITIONS)),
                    ),
                    15,
                    0.1,
                    message="every partition consumed again after the restart",
                )
                await asyncio.sleep(1.5)
            sent = pump.sent
            report = await all_acked(f, sent)
            await eventually(
                lambda: _pending_is(r, namespace, 0), 5, message="nothing left pending"
            )
            after = await group_state(r, namespace, TOPIC, GROUP)
            codes = f.stop()
        took = {p: round((t - t_up) / 1e9, 2) for p, t in resumed.items()}
        print(f"\nRedis restart: consumed again after {took} s; {report.summary()}")
        assert report.ok, report.summary()
        assert after.epoch == before.epoch, (before, after)
        assert after.assignment == before.assignment
        exited_cleanly(codes, *MEMBERS)
    finally:
        await r.aclose()
