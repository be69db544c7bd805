"""The demo's run, phase by phase: create the topic, start the fleet, wait until every
consumer joined, produce (killing a consumer, and on a cluster a Redis primary, on the
way), drain, stop; then the result.

Without ``--cluster`` the consumer owning the most partitions is SIGKILLed halfway
through. With it, a Redis primary holding some of the topic's partitions is SIGKILLed a
third of the way through (:mod:`.chaos`) and the consumer two thirds of the way through.
A watcher task polls the group, reads the workers' logs and refreshes the live view.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import click
from rich.console import RenderableType

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

from ..env import Env
from .chaos import PrimaryKill
from .fleet import Fleet
from .options import DRAIN_TIMEOUT_S, GROUP, JOIN_TIMEOUT_S, MAX_BATCH, TICK_S, DemoOptions
from .report import recovery_seconds, resumed_seconds, verdict
from .state import Kill, Tally
from .view import View, render

__all__ = ["Demo", "demo_keys"]


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
    """One run of the demo on ``env``'s server (``cluster``: the nodes it may kill)."""

    def __init__(
        self,
        env: Env,
        admin: Admin,
        opts: DemoOptions,
        view: View,
        cluster: EmbeddedCluster | None = None,
    ) -> None:
        self.env, self.admin, self.opts, self.view = env, admin, opts, view
        # --cluster: the Redis primary to SIGKILL (none if the cluster is not ours)
        self.chaos = PrimaryKill(cluster, view.say) if opts.cluster else None
        self.topic = f"demo-{uuid.uuid4().hex[:8]}"
        self.dir = Path(tempfile.mkdtemp(prefix="redcurrent-demo-"))
        self.fleet = Fleet([])
        self.tally = Tally()
        self.info: GroupInfo | None = None
        self.kill: Kill | None = None
        self.rebalance_s: float | None = None
        self.epoch_after: int | None = None

    # -- the watcher: state, logs, live table --
    def render(self) -> RenderableType:
        status = self.chaos.status if self.chaos else None
        return render(self.topic, self.info, self.tally, self.fleet, status, self.view.t0)

    async def tick(self) -> None:
        try:
            self.info = await self.admin.describe_group(self.topic, GROUP)
        except UnknownGroupError:  # no member has joined yet
            self.info = None
        except RedcurrentError:  # the server is failing over: keep the last state shown
            pass
        self.read_logs()
        self.check_rebalance()
        self.view.update(self.render())

    def read_logs(self) -> None:
        now_ns = time.monotonic_ns()
        self.tally.add(self.fleet.read(), now_ns)

    def check_rebalance(self) -> None:
        if self.kill is None or self.rebalance_s is not None or self.info is None:
            return
        owners = {p.partition: p.owner for p in self.info.partitions}
        if all(owners.get(p) not in (None, self.kill.worker.member) for p in self.kill.partitions):
            self.rebalance_s = (time.monotonic_ns() - self.kill.at_ns) / 1e9
            self.epoch_after = self.info.epoch
            moved = ", ".join(f"{p}->{owners[p]}" for p in self.kill.partitions)
            self.view.say(
                f"rebalance: epoch {self.info.epoch}; the victim's partitions now owned: {moved}"
            )

    async def watch(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(TICK_S)

    # -- phases --
    async def wait_joined(self) -> None:
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        n = self.opts.consumers
        while time.monotonic() < deadline:
            for w in self.fleet.workers:
                if not w.alive():
                    raise click.ClickException(f"demo consumer {w.member} exited: {w.last_error()}")
            info = self.info
            if info and len(info.members) == n and _settled(info):
                owned = "; ".join(f"{m.member_id} {list(m.partitions)}" for m in info.members)
                self.view.say(f"{n} consumers joined, epoch {info.epoch}: {owned}")
                return
            await asyncio.sleep(0.05)
        raise click.ClickException(
            f"the {n} demo consumers did not all join within {JOIN_TIMEOUT_S:.0f}s"
        )

    def kill_one(self) -> None:
        info = self.info
        owned = Counter(p.owner for p in info.partitions) if info else Counter()
        alive = self.fleet.alive()
        if len(alive) < 2:
            return
        victim = max(alive, key=lambda w: owned[w.member])
        parts = (
            tuple(p.partition for p in info.partitions if p.owner == victim.member) if info else ()
        )
        kill_ns = time.monotonic_ns()
        victim.proc.kill()  # SIGKILL: no goodbye, no acks, its lease must expire
        victim.killed = True
        self.kill = Kill(victim, parts, kill_ns, info.epoch if info else 0)
        self.view.say(
            f"[bold red]SIGKILL {victim.member}[/] (pid {victim.proc.pid}), owner of partitions "
            f"{list(parts)}: its unacked messages must go to the survivors"
        )

    async def produce(self) -> None:
        o = self.opts
        keys = demo_keys(o.keys, o.partitions)
        # on a cluster a primary dies at 1/3 and a consumer at 2/3; else a consumer at 1/2
        primary_after = o.duration / 3 if self.chaos else None
        consumer_after = o.duration * 2 / 3 if self.chaos else o.duration / 2
        self.view.say(
            f"producing {o.rate} msg/s over {len(keys)} keys for {o.duration:g}s; "
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
            await self._send_for(producer, keys, primary_after, consumer_after)
        self.view.say(f"producer done: {len(self.tally.sent)} messages; draining")

    async def _send_for(
        self, producer: Producer, keys: list[str], primary_after: float | None, kill_after: float
    ) -> None:
        """Send ``rate`` messages a second for ``duration``, each key numbered 0, 1, 2, …;
        start the chaos after ``primary_after`` and kill a consumer after ``kill_after``."""
        rate, duration = self.opts.rate, self.opts.duration
        seq: Counter[str] = Counter()
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent, i = 0, 0
        chaos: asyncio.Task[None] | None = None
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
                    metas = await producer.send_batch(self.topic, batch)
                    for rec, meta in zip(batch, metas, strict=True):
                        self.tally.sent[(rec.value["k"], rec.value["s"])] = meta.id
                    sent += len(batch)
                if self.chaos and not chaos and primary_after and now >= start + primary_after:
                    chaos = asyncio.create_task(
                        self.chaos.run(self.topic, self.opts.partitions), name="demo-chaos"
                    )
                if self.kill is None and now >= start + kill_after:
                    self.kill_one()
                await asyncio.sleep(0.02)
            if chaos is not None:
                await chaos  # the killed node has rejoined before the drain starts
        finally:
            if chaos is not None and not chaos.done():
                chaos.cancel()
                await asyncio.gather(chaos, return_exceptions=True)

    async def drain(self) -> bool:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            info = await self.admin.describe_group(self.topic, GROUP)
            if info.lag == 0 and info.pending == 0:
                self.view.say("drained: lag 0, nothing pending")
                return True
            await asyncio.sleep(0.1)
        self.view.say(f"[red]not drained within {DRAIN_TIMEOUT_S:.0f}s[/]")
        return False

    async def run(self) -> dict[str, Any]:
        o = self.opts
        await self.admin.create_topic(self.topic, o.partitions)
        self.view.say(
            f"topic {self.topic}: {o.partitions} partitions; starting {o.consumers} consumer "
            f"processes (heartbeat 0.2s, session timeout 1.5s)"
        )
        self.fleet = Fleet.spawn(
            self.env.url, self.env.namespace, self.topic, o.consumers, self.dir
        )
        watcher = asyncio.create_task(self.watch(), name="demo-watch")
        try:
            with self.view.showing(self.render()):
                await self.wait_joined()
                await self.produce()
                drained = await self.drain()
                await self.tick()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await self.fleet.stop()
        self.read_logs()
        return self.result(drained)

    async def cleanup(self) -> None:
        if not self.opts.keep:
            with contextlib.suppress(Exception):
                await self.admin.delete_topic(self.topic)
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- the result --
    def result(self, drained: bool) -> dict[str, Any]:
        """The verdict as ``--json`` prints it (docs/cli.md lists its fields)."""
        v = verdict(self.tally.sent, self.tally.handled)
        kill = self.kill
        recovery = (
            recovery_seconds(self.tally.handled, kill.worker.member, kill.partitions, kill.at_ns)
            if kill
            else None
        )
        return {
            "ok": v.ok and drained,
            "topic": self.topic,
            "partitions": self.opts.partitions,
            "consumers": self.opts.consumers,
            "duration_s": self.opts.duration,
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
            if not kill
            else {
                "member": kill.worker.member,
                "pid": kill.worker.proc.pid,
                "partitions": list(kill.partitions),
                "epoch": kill.epoch,
            },
            "epoch_after": self.epoch_after,
            "drained": drained,
            "pids": self.fleet.pids(),
            "kept": {"topic": self.topic, "logs": str(self.dir)} if self.opts.keep else None,
            "elapsed_s": round(time.monotonic() - self.view.t0, 2),
            "examples": list(v.examples),
            **({"cluster": self.cluster_result()} if self.chaos else {}),
        }

    def cluster_result(self) -> dict[str, Any]:
        """What the primary's SIGKILL did: which node, who replaced it, when it was back."""
        assert self.chaos is not None
        report = dict(self.chaos.report)
        if report:
            report["back_s"] = resumed_seconds(
                self.tally.handled,
                report["killed"]["partitions"],
                self.chaos.kill_ns,
                self.chaos.kill_ms,
            )
        return {"acks": "replica", "primary": report or None}


def _settled(info: GroupInfo) -> bool:
    """Every partition has an owner, and each owner's assignment includes it."""
    return all(p.owner for p in info.partitions) and all(
        p.owner and p.partition in info.assignment.get(p.owner, ()) for p in info.partitions
    )
