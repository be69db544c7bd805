"""No storms: the commands one consumer sends while a Redis primary is down, from INFO commandstats.

    python benchmarks/cluster_storm.py [--server valkey|redis62] [--outage 5] [--after 3]
                                       [--partitions 16] [--heartbeat 1.0] [--session 10.0]

A 3 + 3 cluster (``cluster-node-timeout`` 1 s), a topic of --partitions partitions, and one
consumer process (``_bench_worker.py share-consumer``: process_batch, the given
heartbeat and session) that owns them all and has drained them (idle: every idle
partition blocks in its own XREAD, docs/architecture.md §8). Then two windows of
--outage + --after seconds each, with ``CONFIG RESETSTAT`` at the start and
``INFO commandstats`` / ``errorstats`` / ``stats`` at the end on every node:

* calm: nothing happens;
* outage: the replica of the primary holding most partitions (not the coordinator's) is
  told ``cluster-replica-no-failover yes``, the primary is SIGKILLed, and after --outage
  seconds the replica takes over (``CLUSTER FAILOVER TAKEOVER``); then --after seconds.
  From the moment the others mark the primary failed (node timeout) until the takeover,
  the cluster is down (``cluster_state:fail``, full coverage required): every node
  answers CLUSTERDOWN, so every partition and the heartbeat retry. A client that retried
  without backoff would send thousands of commands a second here.

Counted: calls on the nodes that are primaries at the end (the two survivors and the
promoted replica), without this script's own commands (CONFIG, INFO, CLUSTER NODES /
INFO / FAILOVER / MYID); replicas only replay their primary's writes. Also the errors
those nodes returned and the connections they accepted. Afterwards 100 messages are
produced and must be consumed by the same process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import GROUP, TOPIC, make_payload, server_binary, spawn_worker, stop_process
from redis.crc import key_slot

from redcurrent import Admin, Producer
from redcurrent.embedded import ClusterNode, EmbeddedCluster

NS = "storm"
# This script's own commands (on connections opened before the window) and replication.
OURS = ("config", "info", "cluster|info", "cluster|failover", "replconf")
# What a client sends; the other calls commandstats counts are run by scripts (fenced
# fetch, refresh, heartbeat...) inside the EVALSHA that carried them.
SENT = ("evalsha", "eval", "xread", "cluster", "command", "hello", "client", "script", "ping", "asking", "readonly")


class Probe:
    """One connection per node, opened before a window: probing adds no connection or
    handshake to the counts (INFO, CONFIG and CLUSTER INFO / FAILOVER are left out)."""

    def __init__(self, nodes: list[ClusterNode]) -> None:
        self.clients = {node: node.client() for node in nodes}
        for c in self.clients.values():
            c.ping()

    def close(self) -> None:
        for c in self.clients.values():
            c.close()

    def reset(self, nodes: list[ClusterNode]) -> None:
        for node in nodes:
            self.clients[node].config_resetstat()

    def is_primary(self, node: ClusterNode) -> bool:
        return self.clients[node].info("replication").get("role") == "master"

    def read(self, node: ClusterNode) -> dict[str, Any]:
        """commandstats calls by command (ours left out), errors by prefix, connections accepted."""
        c = self.clients[node]
        commands = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in c.info("commandstats").items()}
        errors = {k.removeprefix("errorstat_"): int(v["count"]) for k, v in c.info("errorstats").items()}
        connections = int(c.info("stats")["total_connections_received"])
        theirs = {k: v for k, v in commands.items() if not k.startswith(OURS)}
        return {"commands": theirs, "errors": errors, "connections": connections}


def total(stats: list[dict[str, Any]]) -> dict[str, Any]:
    commands: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for s in stats:
        commands.update(s["commands"])
        errors.update(s["errors"])
    sent = sum(v for k, v in commands.items() if k.startswith(SENT))
    return {"calls": sum(commands.values()), "sent": sent, "by_command": dict(commands.most_common()),
            "errors": dict(errors), "connections": sum(s["connections"] for s in stats)}


async def wait_drained(url: str, timeout: float = 60) -> None:
    async with Admin(url, namespace=NS) as admin:
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = await admin.describe_group(TOPIC, GROUP)
                if info.members and info.lag == 0 and info.pending == 0:
                    return
            except Exception:  # the group is not there yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"not drained within {timeout}s")
            await asyncio.sleep(0.1)


async def epoch(url: str) -> int:
    async with Admin(url, namespace=NS) as admin:
        return (await admin.describe_group(TOPIC, GROUP)).epoch


async def produce(url: str, partitions: int, n: int, create: bool = False) -> None:
    if create:
        async with Admin(url, namespace=NS) as admin:
            await admin.create_topic(TOPIC, partitions)
    async with Producer(url, namespace=NS) as producer:
        for i in range(n):
            await producer.send(TOPIC, make_payload(i), key=f"k{i}")


def victim_of(cluster: EmbeddedCluster, partitions: int) -> tuple[ClusterNode, list[int]]:
    """The primary holding most partitions, not the coordinator's ({topic}) if possible."""
    coordinator = cluster.primary_for_key(f"{{{TOPIC}}}")
    held: dict[ClusterNode, list[int]] = {}
    for p in range(partitions):
        held.setdefault(cluster.primary_for_slot(key_slot(f"{{{TOPIC}:{p}}}".encode())), []).append(p)
    node = max(held, key=lambda n: (n is not coordinator, len(held[n])))
    return node, held[node]


def calm(cluster: EmbeddedCluster, seconds: float) -> dict[str, Any]:
    primaries = cluster.primaries()
    probe = Probe(cluster.nodes)
    try:
        probe.reset(cluster.nodes)
        time.sleep(seconds)
        return total([probe.read(n) for n in primaries])
    finally:
        probe.close()


def outage(cluster: EmbeddedCluster, partitions: int, outage_s: float, after_s: float) -> dict[str, Any]:
    victim, parts = victim_of(cluster, partitions)
    [replica] = cluster.replicas_of(victim)
    survivors = [n for n in cluster.nodes if n is not victim]
    probe = Probe(survivors)
    try:
        probe.clients[replica].config_set("cluster-replica-no-failover", "yes")
        probe.reset(survivors)
        t0 = time.monotonic()
        cluster.kill(victim)
        state_fail_at = None
        watch = probe.clients[next(n for n in survivors if n is not replica)]
        while time.monotonic() - t0 < outage_s:
            if state_fail_at is None and watch.execute_command("CLUSTER INFO").get("cluster_state") == "fail":
                state_fail_at = round(time.monotonic() - t0, 2)
            time.sleep(0.05)
        probe.clients[replica].execute_command("CLUSTER FAILOVER", "TAKEOVER")
        while not probe.is_primary(replica):
            time.sleep(0.05)
        promoted_at = time.monotonic() - t0
        time.sleep(max(0.0, outage_s + after_s - (time.monotonic() - t0)))
        primaries = [n for n in survivors if probe.is_primary(n)]
        result = total([probe.read(n) for n in primaries])
        result["replicas_replayed"] = total([probe.read(n) for n in survivors if n not in primaries])["calls"]
    finally:
        probe.close()
    result.update(victim_partitions=parts, cluster_fail_after_s=state_fail_at, takeover_at_s=round(promoted_at, 2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="valkey", help="valkey | redis62")
    parser.add_argument("--outage", type=float, default=5.0, help="seconds from the SIGKILL to the takeover")
    parser.add_argument("--after", type=float, default=3.0, help="seconds counted after the takeover")
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--heartbeat", type=float, default=1.0, help="the consumer's (library default 1.0)")
    parser.add_argument("--session", type=float, default=10.0, help="the consumer's (library default 10.0)")
    parser.add_argument("--backoff-max", type=float, default=None, help="the consumer's Backoff.max (default 30)")
    args = parser.parse_args()
    window = args.outage + args.after
    with EmbeddedCluster(binary=server_binary(args.server)) as cluster, \
            tempfile.TemporaryDirectory(prefix="bench-storm-") as tmp:
        url = cluster.url
        asyncio.run(produce(url, args.partitions, 200, create=True))
        go, stop, log = Path(tmp, "go"), Path(tmp, "stop"), Path(tmp, "consumer.log")
        go.write_text("")
        with log.open("w") as out:
            proc = spawn_worker("share-consumer", out, url=url, ns=NS, ready=str(Path(tmp, "ready")),
                                go=str(go), stop=str(stop), hb=args.heartbeat, session=args.session,
                                backoff_max=args.backoff_max)
        try:
            asyncio.run(wait_drained(url))
            t = time.monotonic()  # the same probe as after the outage, for comparison
            asyncio.run(produce(url, args.partitions, 100))
            asyncio.run(wait_drained(url))
            before_s = time.monotonic() - t
            time.sleep(2.0)  # idle: every partition waits in its XREAD
            epoch_before = asyncio.run(epoch(url))
            quiet = calm(cluster, window)
            fault = outage(cluster, args.partitions, args.outage, args.after)
            alive = proc.poll() is None
            t = time.monotonic()
            asyncio.run(produce(cluster.url, args.partitions, 100))
            asyncio.run(wait_drained(cluster.url))
            resumed_s = time.monotonic() - t
            epoch_after = asyncio.run(epoch(cluster.url))
            stop.write_text("")
            proc.wait(30)
        finally:
            stop_process(proc)
        consumed = json.loads(log.read_text().rsplit("RESULT ", 1)[1])["n"] if "RESULT " in log.read_text() else None
    print(f"one idle consumer, {args.partitions} partitions, heartbeat {args.heartbeat}s, session {args.session}s; "
          f"windows of {window:g}s; calls on the primaries (this script's own left out)")
    for name, w in (("calm", quiet), ("outage", fault)):
        top = ", ".join(f"{k} {v}" for k, v in list(w["by_command"].items())[:6])
        print(f"  {name:7} {w['sent']:5d} sent ({w['sent'] / window:5.1f}/s), {w['calls']:5d} calls with scripts' own  "
              f"connections {w['connections']:3d}  "
              f"errors {w['errors'] or '{}'}  [{top}]")
    print(f"  outage: SIGKILL of the primary of partitions {fault['victim_partitions']}; cluster_state:fail after "
          f"{fault['cluster_fail_after_s']}s; takeover at {fault['takeover_at_s']}s; replicas replayed "
          f"{fault['replicas_replayed']} writes")
    print(f"  consumer alive through it: {alive}; 100 messages sent after it consumed in {resumed_s:.2f}s "
          f"(before the windows: {before_s:.2f}s; it handled {consumed} in all); group epoch {epoch_before} -> "
          f"{epoch_after}")
    print("JSON " + json.dumps({"calm": quiet, "outage": fault, "window_s": window, "alive": alive,
                                "resumed_s": resumed_s, "before_s": before_s, "epochs": [epoch_before, epoch_after], "args": vars(args)}), file=sys.stderr)


if __name__ == "__main__":
    main()
