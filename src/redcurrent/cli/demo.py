"""``redcurrent demo``: a consumer group surviving a SIGKILL, checked against what was really sent.

Creates a topic (a unique name per run), starts N consumer *processes* of one group
(``python -m redcurrent.cli._demo_worker``), produces keyed messages with per-key
sequence numbers, SIGKILLs the consumer owning the most partitions halfway through,
drains, and prints a verdict computed from the producer's record of what it sent and
the workers' logs of what they handled (see :mod:`.verdict`).

With ``--cluster`` it runs on a Redis Cluster (a private 3 + 3 one unless ``--url`` names
a cluster), produces with ``acks="replica"``, SIGKILLs a Redis primary holding some of the
topic's partitions a third of the way through (see :mod:`._demo_cluster`) and the
consumer two thirds of the way through.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from pathlib import Path
from typing import Any, Literal

import click
import orjson
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

import redcurrent
from redcurrent import (
    Admin,
    GroupInfo,
    Producer,
    Record,
    RedcurrentError,
    UnknownGroupError,
    partition_for_key,
)
from redcurrent.embedded import EmbeddedCluster

from ._demo_cluster import PrimaryKill, is_cluster
from .context import json_option, pass_env
from .env import Env
from .output import console, echo_json, table
from .verdict import Handled, Verdict, recovery_seconds, resumed_seconds, verdict

__all__ = ["demo"]

GROUP = "demo"
TICK_S = 0.25
JOIN_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 8.0
MAX_BATCH = 500


class LogTail:
    """Reads the records a worker appended since the last call (a partial last line waits)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.rest = path, 0, b""

    def read(self) -> list[Handled]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *lines, self.rest = (self.rest + data).split(b"\n")
        return [Handled.from_log(orjson.loads(line)) for line in lines if line]


class Worker:
    def __init__(self, member: str, proc: subprocess.Popen[bytes], log: Path, err: Path) -> None:
        self.member, self.proc, self.tail, self.err = member, proc, LogTail(log), err
        self.killed = False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def last_error(self) -> str:
        with contextlib.suppress(OSError):
            lines = self.err.read_text(errors="replace").strip().splitlines()
            if lines:
                return lines[-1]
        return f"exit status {self.proc.returncode}"


def demo_keys(count: int, partitions: int) -> list[str]:
    """``count`` keys (more if needed) so that every partition has at least one."""
    keys: list[str] = []
    covered: set[int] = set()
    i = 0
    while len(keys) < count or len(covered) < partitions:
        key = f"key-{i:03d}"
        keys.append(key)
        covered.add(partition_for_key(key, partitions))
        i += 1
    return keys


class Demo:
    def __init__(
        self,
        env: Env,
        admin: Admin,
        opts: dict[str, Any],
        out: Console | None,
        cluster: EmbeddedCluster | None = None,
    ) -> None:
        self.env, self.admin, self.opts, self.out = env, admin, opts, out
        # --cluster: the Redis primary to SIGKILL (none if the cluster is not ours)
        self.chaos = PrimaryKill(cluster, self.say) if opts.get("cluster") else None
        self.topic = f"demo-{uuid.uuid4().hex[:8]}"
        self.dir = Path(tempfile.mkdtemp(prefix="redcurrent-demo-"))
        self.t0 = time.monotonic()
        self.workers: list[Worker] = []
        self.sent: dict[tuple[str, int], str] = {}
        self.handled: list[Handled] = []
        self.by_partition: Counter[int] = Counter()
        self.by_consumer: Counter[str] = Counter()
        self.recent: deque[Handled] = deque()
        self.info: GroupInfo | None = None
        self.live: Live | None = None
        self.kill: tuple[Worker, tuple[int, ...], int, int] | None = (
            None  # worker, parts, ns, epoch
        )
        self.rebalance_s: float | None = None
        self.epoch_after: int | None = None

    # -- narration --
    def say(self, message: str) -> None:
        if self.out is not None:
            self.out.print(f"[dim]t={time.monotonic() - self.t0:5.1f}s[/] {message}")

    def render(self) -> RenderableType:
        info, now = self.info, time.monotonic_ns()
        rate_p = Counter(h.partition for h in self.recent)
        rate_c = Counter(h.consumer for h in self.recent)
        head = Text(
            f"topic {self.topic} · group {GROUP} · epoch {info.epoch if info else '-'} · "
            f"produced {len(self.sent)} · handled {len(self.handled)} · "
            f"t={(now / 1e9) - self.t0:.1f}s",
            style="bold",
        )
        parts = [
            (
                p.partition,
                p.owner,
                p.lag,
                p.pending,
                rate_p[p.partition],
                self.by_partition[p.partition],
            )
            for p in (info.partitions if info else ())
        ]
        owned = Counter(p.owner for p in (info.partitions if info else ()))
        members = [
            (
                w.member,
                w.proc.pid,
                "KILLED" if w.killed else "alive" if w.alive() else "exited",
                owned[w.member],
                rate_c[w.member],
                self.by_consumer[w.member],
            )
            for w in self.workers
        ]
        nodes = [Text(f"redis cluster: {self.chaos.status}")] if self.chaos else []
        return Group(
            head,
            *nodes,
            table(None, ["partition", "owner", "lag", "pending", "msg/s", "handled"], parts),
            table(None, ["consumer", "pid", "status", "partitions", "msg/s", "handled"], members),
        )

    # -- processes --
    def spawn(self) -> None:
        pkg_root = str(Path(redcurrent.__file__).resolve().parent.parent)
        child_env = {
            **os.environ,
            "REDCURRENT_DEMO_URL": self.env.url,  # not in argv: ps shows argv
            "PYTHONPATH": os.pathsep.join(filter(None, [pkg_root, os.environ.get("PYTHONPATH")])),
        }
        for i in range(self.opts["consumers"]):
            member = f"consumer-{i + 1}"
            log, err = self.dir / f"{member}.log", self.dir / f"{member}.err"
            with err.open("wb") as err_file:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "redcurrent.cli._demo_worker",
                        self.env.namespace,
                        self.topic,
                        GROUP,
                        member,
                        str(log),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err_file,
                    env=child_env,
                )
            self.workers.append(Worker(member, proc, log, err))

    async def stop_workers(self) -> None:
        for w in self.workers:
            if w.alive():
                w.proc.send_signal(signal.SIGTERM)  # graceful: finish, ack, leave the group
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(w.alive() for w in self.workers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for w in self.workers:
            if w.alive():
                w.proc.kill()
            w.proc.wait()

    # -- the watcher: state, logs, live table --
    async def tick(self) -> None:
        try:
            self.info = await self.admin.describe_group(self.topic, GROUP)
        except UnknownGroupError:  # no member has joined yet
            self.info = None
        except RedcurrentError:  # the server is failing over: keep the last state shown
            pass
        self.read_logs()
        self.check_rebalance()
        if self.live is not None:
            self.live.update(self.render())

    def read_logs(self) -> None:
        horizon = time.monotonic_ns() - 1_000_000_000
        for w in self.workers:
            for h in w.tail.read():
                self.handled.append(h)
                self.by_partition[h.partition] += 1
                self.by_consumer[h.consumer] += 1
                self.recent.append(h)
        self.recent = deque(
            sorted((h for h in self.recent if h.t_ns > horizon), key=lambda h: h.t_ns)
        )

    def check_rebalance(self) -> None:
        if self.kill is None or self.rebalance_s is not None or self.info is None:
            return
        victim, parts, kill_ns, _ = self.kill
        owners = {p.partition: p.owner for p in self.info.partitions}
        if all(owners.get(p) not in (None, victim.member) for p in parts):
            self.rebalance_s = (time.monotonic_ns() - kill_ns) / 1e9
            self.epoch_after = self.info.epoch
            moved = ", ".join(f"{p}->{owners[p]}" for p in parts)
            self.say(
                f"rebalance: epoch {self.info.epoch}; the victim's partitions now owned: {moved}"
            )

    async def watch(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(TICK_S)

    # -- phases --
    async def wait_joined(self) -> None:
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        n = self.opts["consumers"]
        while time.monotonic() < deadline:
            for w in self.workers:
                if not w.alive():
                    raise click.ClickException(f"demo consumer {w.member} exited: {w.last_error()}")
            info = self.info
            if (
                info
                and len(info.members) == n
                and all(p.owner for p in info.partitions)
                and all(
                    p.owner and p.partition in info.assignment.get(p.owner, ())
                    for p in info.partitions
                )
            ):
                owned = "; ".join(f"{m.member_id} {list(m.partitions)}" for m in info.members)
                self.say(f"{n} consumers joined, epoch {info.epoch}: {owned}")
                return
            await asyncio.sleep(0.05)
        raise click.ClickException(
            f"the {n} demo consumers did not all join within {JOIN_TIMEOUT_S:.0f}s"
        )

    def kill_one(self) -> None:
        info = self.info
        owned = Counter(p.owner for p in info.partitions) if info else Counter()
        alive = [w for w in self.workers if w.alive()]
        if len(alive) < 2:
            return
        victim = max(alive, key=lambda w: owned[w.member])
        parts = (
            tuple(p.partition for p in info.partitions if p.owner == victim.member) if info else ()
        )
        kill_ns = time.monotonic_ns()
        victim.proc.kill()  # SIGKILL: no goodbye, no acks, its lease must expire
        victim.killed = True
        self.kill = (victim, parts, kill_ns, info.epoch if info else 0)
        self.say(
            f"[bold red]SIGKILL {victim.member}[/] (pid {victim.proc.pid}), owner of partitions "
            f"{list(parts)}: its unacked messages must go to the survivors"
        )

    async def produce(self) -> None:
        rate, duration = self.opts["rate"], self.opts["duration"]
        keys = demo_keys(self.opts["keys"], self.opts["partitions"])
        seq: Counter[str] = Counter()
        loop = asyncio.get_running_loop()
        start = loop.time()
        # on a cluster a primary dies at 1/3 and a consumer at 2/3; else a consumer at 1/2
        primary_after = duration / 3 if self.chaos else None
        consumer_after = duration * 2 / 3 if self.chaos else duration / 2
        kill_at, sent, i = start + consumer_after, 0, 0
        chaos: asyncio.Task[None] | None = None
        self.say(
            f"producing {rate} msg/s over {len(keys)} keys for {duration:g}s; "
            + (
                ""
                if primary_after is None
                else f"a Redis primary is killed at t+{primary_after:.1f}s, "
            )
            + f"one consumer is killed at t+{consumer_after:{'.1f' if self.chaos else 'g'}}s"
        )
        # acks="replica" on a cluster: a send returns only once a replica has it too, so
        # the primary's SIGKILL cannot lose what the verdict counts as sent.
        acks: Literal["leader", "replica"] = "replica" if self.chaos else "leader"
        async with Producer(
            self.env.url, namespace=self.env.namespace, auto_create_topics=False, acks=acks
        ) as producer:
            try:
                while (now := loop.time()) < start + duration:
                    due = min(int((now - start) * rate) - sent, MAX_BATCH)
                    if due > 0:
                        batch = []
                        for _ in range(due):
                            key = keys[i % len(keys)]
                            i += 1
                            batch.append(Record({"k": key, "s": seq[key]}, key=key))
                            seq[key] += 1
                        for rec, meta in zip(
                            batch, await producer.send_batch(self.topic, batch), strict=True
                        ):
                            self.sent[(rec.value["k"], rec.value["s"])] = meta.id
                        sent += len(batch)
                    if self.chaos and not chaos and primary_after and now >= start + primary_after:
                        chaos = asyncio.create_task(
                            self.chaos.run(self.topic, self.opts["partitions"]), name="demo-chaos"
                        )
                    if self.kill is None and now >= kill_at:
                        self.kill_one()
                    await asyncio.sleep(0.02)
                if chaos is not None:
                    await chaos  # the killed node has rejoined before the drain starts
            finally:
                if chaos is not None and not chaos.done():
                    chaos.cancel()
                    await asyncio.gather(chaos, return_exceptions=True)
        self.say(f"producer done: {len(self.sent)} messages; draining")

    async def drain(self) -> bool:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            info = await self.admin.describe_group(self.topic, GROUP)
            if info.lag == 0 and info.pending == 0:
                self.say("drained: lag 0, nothing pending")
                return True
            await asyncio.sleep(0.1)
        self.say(f"[red]not drained within {DRAIN_TIMEOUT_S:.0f}s[/]")
        return False

    def result(self, drained: bool) -> dict[str, Any]:
        v: Verdict = verdict(self.sent, self.handled)
        victim = self.kill[0] if self.kill else None
        recovery = (
            recovery_seconds(self.handled, victim.member, self.kill[1], self.kill[2])
            if self.kill and victim
            else None
        )
        return {
            "ok": v.ok and drained,
            "topic": self.topic,
            "partitions": self.opts["partitions"],
            "consumers": self.opts["consumers"],
            "duration_s": self.opts["duration"],
            "produced": v.produced,
            "consumed": v.consumed,
            "deliveries": v.deliveries,
            "lost": v.lost,
            "duplicated": v.duplicated,
            "order_violations": v.order_violations,
            "unexpected": v.unexpected,
            "recovery_s": None if recovery is None else round(recovery, 3),
            "rebalance_s": None if self.rebalance_s is None else round(self.rebalance_s, 3),
            "killed": None
            if not self.kill
            else {
                "member": self.kill[0].member,
                "pid": self.kill[0].proc.pid,
                "partitions": list(self.kill[1]),
                "epoch": self.kill[3],
            },
            "epoch_after": self.epoch_after,
            "drained": drained,
            "pids": {w.member: w.proc.pid for w in self.workers},
            "kept": {"topic": self.topic, "logs": str(self.dir)} if self.opts["keep"] else None,
            "elapsed_s": round(time.monotonic() - self.t0, 2),
            "examples": list(v.examples),
            **({"cluster": self.cluster_result()} if self.chaos else {}),
        }

    def cluster_result(self) -> dict[str, Any]:
        """What the primary's SIGKILL did: which node, who replaced it, when it was back."""
        assert self.chaos is not None
        report = dict(self.chaos.report)
        if report:
            report["back_s"] = resumed_seconds(
                self.handled,
                report["killed"]["partitions"],
                self.chaos.kill_ns,
                self.chaos.kill_ms,
            )
        return {"acks": "replica", "primary": report or None}

    async def run(self) -> dict[str, Any]:
        o = self.opts
        await self.admin.create_topic(self.topic, o["partitions"])
        self.say(
            f"topic {self.topic}: {o['partitions']} partitions; starting {o['consumers']} consumer "
            f"processes (heartbeat 0.2s, session timeout 1.5s)"
        )
        self.spawn()
        watcher = asyncio.create_task(self.watch(), name="demo-watch")
        try:
            with (
                Live(self.render(), console=self.out, refresh_per_second=4)
                if self.out
                else contextlib.nullcontext() as live
            ):
                self.live = live
                await self.wait_joined()
                await self.produce()
                drained = await self.drain()
                await self.tick()
            self.live = None
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await self.stop_workers()
        self.read_logs()
        return self.result(drained)

    async def cleanup(self) -> None:
        if not self.opts["keep"]:
            with contextlib.suppress(Exception):
                await self.admin.delete_topic(self.topic)
            shutil.rmtree(self.dir, ignore_errors=True)


def print_verdict(r: dict[str, Any], c: Console) -> None:
    rec = "-" if r["recovery_s"] is None else f"{r['recovery_s']:.2f}"
    rows = [
        ("produced", r["produced"]),
        ("consumed", r["consumed"]),
        ("lost", r["lost"]),
        ("duplicated", r["duplicated"]),
        ("order violations", r["order_violations"]),
        ("seconds to recover", rec),
    ]
    primary = (r.get("cluster") or {}).get("primary")
    if primary:
        back = "-" if primary["back_s"] is None else f"{primary['back_s']:.2f}"
        rows += [
            (
                "Redis primary killed",
                f":{primary['killed']['port']} {primary['killed']['partitions']}",
            ),
            ("replaced by (promoted)", f":{primary['replaced_by']['port']}"),
            ("seconds to promote", f"{primary['promoted_s']:.2f}"),
            ("seconds until its partitions were back", back),
        ]
    c.print()
    c.print(table("verdict", ["", "value"], rows))
    for example in r["examples"]:
        c.print(f"  {example}", markup=False)
    if r["ok"]:
        dup = (
            f"{r['duplicated']} duplicate deliveries: messages the killed consumer handled but "
            "never acked, redelivered (at-least-once)"
            if r["duplicated"]
            else "no duplicates"
        )
        c.print(f"[bold green]OK[/]: nothing lost, per-key order kept, {dup}.")
    else:
        c.print("[bold red]FAILED[/]: see the counts above.")
    if r["kept"]:
        c.print(
            f"kept topic {r['kept']['topic']} (group demo) and the consumers' logs in {r['kept']['logs']}",
            markup=False,
        )


@click.command(short_help="Kill a consumer under load; check nothing is lost.")
@click.option(
    "--duration",
    type=click.FloatRange(min=2),
    default=30,
    show_default=True,
    help="Seconds of producing; a consumer is killed halfway.",
)
@click.option("--partitions", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--consumers", type=click.IntRange(min=2), default=3, show_default=True)
@click.option(
    "--rate",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Messages per second.",
)
@click.option(
    "--keys", type=click.IntRange(min=1), default=64, show_default=True, help="Distinct keys."
)
@click.option("--keep", is_flag=True, help="Keep the topic and the worker logs afterwards.")
@click.option(
    "--cluster",
    is_flag=True,
    help="Run on a Redis Cluster (a private 3+3 one unless --url is a cluster) and also "
    "SIGKILL a Redis primary holding some of the partitions.",
)
@json_option
@pass_env
def demo(
    env: Env,
    duration: float,
    partitions: int,
    consumers: int,
    rate: int,
    keys: int,
    keep: bool,
    cluster: bool,
) -> None:
    """Watch a consumer group lose a member to SIGKILL and lose no message.

    Prints a live table, then a verdict from what was really sent and handled:
    produced, consumed, lost, duplicated, per-key order violations, seconds to recover.
    Exits 1 if anything was lost or out of order. With --cluster, a Redis primary holding
    some of the partitions is SIGKILLed too (sends use acks="replica").
    """
    out = None if env.json else console()
    opts = {
        "duration": duration,
        "partitions": partitions,
        "consumers": consumers,
        "rate": rate,
        "keys": keys,
        "keep": keep,
        "cluster": cluster,
    }

    def go(env: Env, nodes: EmbeddedCluster | None) -> dict[str, Any]:
        async def main() -> dict[str, Any]:
            async with env.admin() as admin:
                run = Demo(env, admin, opts, out, nodes)
                try:
                    return await run.run()
                finally:
                    await run.cleanup()

        return env.run(main())

    if not cluster:
        result = go(env, None)
    else:
        given = click.get_current_context().find_root().params.get("url")
        if given and is_cluster(given):
            result = go(env, None)  # not ours: a consumer is killed, no primary
        else:
            with EmbeddedCluster() as nodes:
                print(
                    f"redcurrent: started an embedded Redis Cluster, 3 primaries + 3 replicas, at "
                    f"{nodes.url}{' (the --url / REDIS_URL server is not a cluster)' if given else ''}; "
                    "stopped on exit, its data with it",
                    file=sys.stderr,
                )
                result = go(Env(nodes.url, env.namespace, env.json), nodes)
    if env.json:
        echo_json(result)
    else:
        assert out is not None
        print_verdict(result, out)
    if not result["ok"]:
        sys.exit(1)
