"""The fault-injection harness: one standard run, a fault, a drain, a checked history.

A :class:`FaultRun` starts its own server (optionally with AOF), or with
``cluster=True`` its own Redis Cluster of 3 primaries + 3 replicas
(:class:`support.servers.Cluster`: kill, fail over, move slots), a topic of 8 partitions, N consumer *processes* (``tests/support/worker.py``: each logs what it
handled and acked with ``os.write`` on an O_APPEND fd, stamped ``monotonic_ns``), and an
in-process producer of keyed messages (``keys`` keys x ``seqs`` sequence numbers, paced).
Optionally every client talks through its own :class:`FaultProxy`, for network faults.
After the fault, :meth:`finish` drains and returns a :class:`Report` built with the
history checker, plus what Redis says at the end (pending, lag) and the epochs seen.

Shared by ``tests/faults/test_faults.py`` (short runs) and ``benchmarks/faults.py``
(the full table).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from support.proxy import FaultProxy
from support.servers import Cluster, ServerProcess

from redcurrent import Admin, Producer, Record, RedcurrentError
from redcurrent.embedded import ClusterNode
from redcurrent.keys import Keys
from redcurrent.testing import Event, History, Sent, check_history, read_log

WORKER = Path(__file__).resolve().parents[1] / "support" / "worker.py"
TOPIC, GROUP, NS = "orders", "g", "faults"


@dataclass
class Report:
    """What one scenario run showed."""

    name: str
    history: History
    pending: int
    lag: int
    epochs: list[int]
    sent: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return len(self.history.lost)

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.history.duplicated.values())

    @property
    def violations(self) -> int:
        return len(self.history.violations)

    @property
    def rebalances(self) -> int:
        return self.epochs[-1] - self.epochs[0] if self.epochs else 0

    def row(self) -> dict[str, Any]:
        return {
            "scenario": self.name,
            "sent": self.sent,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "violations": self.violations,
            "pending": self.pending,
            "lag": self.lag,
            "rebalances": self.rebalances,
            **self.extra,
        }


class FaultRun:
    """One standard run; drive faults between :meth:`start` and :meth:`finish`."""

    def __init__(
        self,
        tmp: Path,
        binary: str,
        *,
        name: str = "run",
        keys: int = 100,
        seqs: int = 200,
        rate: float = 2000.0,
        partitions: int = 8,
        consumers: int = 3,
        hb: float = 0.2,
        session: float = 1.5,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        proxies: bool = False,
        work_ms: float = 0.0,
        cluster: bool = False,
        acks: str = "leader",
    ) -> None:
        self.tmp, self.name = tmp, name
        self.keys, self.seqs, self.rate = keys, seqs, rate
        self.partitions, self.consumers = partitions, consumers
        self.hb, self.session, self.work_ms = hb, session, work_ms
        self.acks = acks
        # One of the two: a single server, or a 3 + 3 cluster (never restarted nodes).
        self.cluster: Cluster | None = Cluster(binary) if cluster else None
        self.server = (
            None if cluster else ServerProcess(binary, appendonly=appendonly, appendfsync=appendfsync)  # type: ignore[arg-type]
        )
        self.use_proxies = proxies
        self.proxies: dict[str, FaultProxy] = {}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.sent: list[Sent] = []
        self.produce_errors = 0
        self.epochs: list[int] = []
        self._producer_task: asyncio.Task[None] | None = None
        self._epoch_task: asyncio.Task[None] | None = None
        self._raw: Redis | RedisCluster | None = None
        self.keys_ = Keys(NS)

    @property
    def url(self) -> str:
        """The server's URL, or a running cluster primary's (nodes may have been killed)."""
        if self.cluster is not None:
            return self.cluster.url
        assert self.server is not None
        return self.server.url

    # -- lifecycle --
    async def start(self) -> None:
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.start)
            # redis-py's own cluster retries on: this client only observes, through failovers
            self._raw = RedisCluster.from_url(self.url, socket_timeout=2)
        else:
            assert self.server is not None
            self.server.start()
            self._raw = Redis.from_url(self.server.url, retry=Retry(NoBackoff(), 0), socket_timeout=2)
        async with Admin(self.url, namespace=NS) as admin:
            await admin.create_topic(TOPIC, self.partitions)
        if self.use_proxies:
            for name in ["producer", *(f"w{i}" for i in range(self.consumers))]:
                self.proxies[name] = await FaultProxy.for_url(self.url).start()
        for i in range(self.consumers):
            self.start_worker(i)
        await self.wait_balanced(timeout=20)
        self.epochs.append(await self.epoch())
        self._epoch_task = asyncio.create_task(self._watch_epochs())

    def url_for(self, name: str) -> str:
        proxy = self.proxies.get(name)
        return proxy.url if proxy is not None else self.url

    def start_worker(self, i: int) -> None:
        log = self.tmp / f"{self.name}-w{i}.log"
        args = [
            sys.executable,
            str(WORKER),
            "--url",
            self.url_for(f"w{i}"),
            "--namespace",
            NS,
            "--topic",
            TOPIC,
            "--group",
            GROUP,
            "--log",
            str(log),
            "--member-id",
            f"w{i}",
            "--heartbeat",
            str(self.hb),
            "--session",
            str(self.session),
            "--rebalance",
            "3",
        ]
        if self.work_ms:
            args += ["--work-ms", str(self.work_ms)]
        with open(self.tmp / f"{self.name}-w{i}.err", "ab") as err:  # the child keeps its own fd
            self.procs[i] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)

    async def close(self) -> None:
        for task in (self._producer_task, self._epoch_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        for p in self.procs.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGCONT)
                p.terminate()
        for p in self.procs.values():
            try:
                await asyncio.to_thread(p.wait, 5)
            except subprocess.TimeoutExpired:
                p.kill()
        for proxy in self.proxies.values():
            await proxy.close()
        if self._raw is not None:
            await self._raw.aclose()
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.stop)
        if self.server is not None:
            self.server.stop()

    async def __aenter__(self) -> FaultRun:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- producing --
    def start_producing(self) -> None:
        self._producer_task = asyncio.create_task(self._produce())

    async def _produce(self) -> None:
        interval = self.keys / self.rate
        async with Producer(
            self.url_for("producer"), namespace=NS, request_timeout=60, acks=self.acks  # type: ignore[arg-type]
        ) as producer:
            start = time.monotonic()
            for seq in range(self.seqs):
                records = [Record({"seq": seq}, key=f"k{k}") for k in range(self.keys)]
                while True:
                    try:
                        metas = await producer.send_batch(TOPIC, records)
                        break
                    except RedcurrentError:
                        # Only after request_timeout; idempotent, so resending is safe.
                        self.produce_errors += 1
                        await asyncio.sleep(0.2)
                self.sent += [Sent(f"k{k}", seq, m.id, m.partition) for k, m in enumerate(metas)]
                delay = start + (seq + 1) * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)

    async def producing_done(self, timeout: float = 120) -> None:
        assert self._producer_task is not None
        await asyncio.wait_for(asyncio.shield(self._producer_task), timeout)

    # -- observing --
    async def epoch(self) -> int:
        assert self._raw is not None
        raw = await self._raw.hget(self.keys_.group_state(TOPIC, GROUP), "epoch")
        return int(raw or 0)

    async def _watch_epochs(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            with contextlib.suppress(Exception):
                e = await self.epoch()
                if e and e != self.epochs[-1]:
                    self.epochs.append(e)

    def events(self) -> list[Event]:
        out: list[Event] = []
        for log in sorted(self.tmp.glob(f"{self.name}-w*.log")):
            out += read_log(log)
        return out

    def assigned(self, member: str, before_ns: int | None = None) -> set[int]:
        """Partitions ``member`` held (per its listener events) at ``before_ns``."""
        held: set[int] = set()
        for e in sorted(self.events(), key=lambda e: e.t_ns):
            if e.consumer != member or e.partition is None or (before_ns and e.t_ns > before_ns):
                continue
            if e.event == "assign":
                held.add(e.partition)
            elif e.event in ("revoke", "lost"):
                held.discard(e.partition)
        return held

    async def wait_balanced(self, timeout: float) -> None:
        """Until every live worker holds partitions and together they hold all of them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [i for i, p in self.procs.items() if p.poll() is None]
            held = [self.assigned(f"w{i}") for i in live]
            if (
                live
                and all(held)
                and set().union(*held) == set(range(self.partitions))
                and sum(len(h) for h in held) == self.partitions
            ):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.name}: group never balanced")

    def resumed_after(
        self,
        t_ns: int,
        partitions: set[int],
        excluding: str | None = None,
        written_after_ms: int | None = None,
    ) -> float | None:
        """Seconds from ``t_ns`` until each of ``partitions`` was handled again by
        someone other than ``excluding`` (the slowest partition); None if one never was.
        ``written_after_ms``: only entries the server stored after that wall-clock time
        count (so both the producer and the consumers are back, not a batch in hand)."""
        first: dict[int, int] = {}
        for e in self.events():
            if (
                e.event == "handled"
                and e.t_ns > t_ns
                and e.partition in partitions
                and e.consumer != excluding
                and (written_after_ms is None or int(e.entry_id.split("-")[0]) > written_after_ms)
            ):
                first[e.partition] = min(first.get(e.partition, e.t_ns), e.t_ns)
        if set(first) != partitions:
            return None
        return (max(first.values()) - t_ns) / 1e9

    def workers_died(self) -> list[int]:
        """Consumer processes that exited although nobody stopped them."""
        return [i for i, p in self.procs.items() if p.poll() is not None]

    # -- the cluster --
    def node_of(self, partition: int) -> ClusterNode:
        """The primary that serves ``partition``'s stream now."""
        assert self.cluster is not None
        return self.cluster.primary_for_key(self.keys_.stream(TOPIC, partition))

    def partitions_on(self, node: ClusterNode) -> set[int]:
        return {p for p in range(self.partitions) if self.node_of(p) is node}

    def coordinator_node(self) -> ClusterNode:
        """The primary of the topic's slot ``{topic}`` (the group's coordinator keys)."""
        assert self.cluster is not None
        return self.cluster.primary_for_key(self.keys_.meta(TOPIC))

    # -- faults on processes --
    def signal(self, i: int, sig: signal.Signals) -> int:
        t = time.monotonic_ns()
        os.kill(self.procs[i].pid, sig)
        return t

    async def wait_exit(self, i: int, timeout: float = 10) -> int:
        return await asyncio.to_thread(self.procs[i].wait, timeout)

    # -- the end --
    async def finish(self, timeout: float = 60, **extra: Any) -> Report:
        await self.producing_done()
        expected = {(s.key, s.seq) for s in self.sent}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = {(e.key, e.seq) for e in self.events() if e.event == "acked"}
            if expected <= done and await self.pending() == 0 and await self.lag() == 0:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(3 * self.hb)  # last acks ride the next fetch
        history = check_history(self.sent, self.events())
        epochs = sorted(set(self.epochs))
        return Report(
            self.name,
            history,
            await self.pending(),
            await self.lag(),
            epochs,
            len(self.sent),
            {"produce_errors": self.produce_errors, **extra},
        )

    async def pending(self) -> int:
        assert self._raw is not None
        total = 0
        for p in range(await self.partition_count()):
            with contextlib.suppress(Exception):
                total += int(
                    (await self._raw.xpending(self.keys_.stream(TOPIC, p), GROUP))["pending"]
                )
        return total

    async def lag(self) -> int:
        async with Admin(self.url, namespace=NS) as admin:
            return sum((await admin.lag(TOPIC, GROUP)).values())

    async def partition_count(self) -> int:
        assert self._raw is not None
        return int(await self._raw.hget(self.keys_.meta(TOPIC), "partitions") or self.partitions)

    def entry_ids_unique(self) -> bool:
        """Every entry id maps to one (key, seq): no record was written twice."""
        ids = [s.entry_id for s in self.sent]
        return len(ids) == len(set(ids))

    async def stream_entries(self) -> int:
        assert self._raw is not None
        return sum(
            [
                int(await self._raw.xlen(self.keys_.stream(TOPIC, p)))
                for p in range(await self.partition_count())
            ]
        )
