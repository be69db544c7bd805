"""``redcurrent demo --cluster``: where the cluster comes from, and the primary it SIGKILLs.

The demo runs on a Redis Cluster given by ``--url`` / ``REDIS_URL`` if that is one;
otherwise it starts a private 3 + 3 cluster (:class:`~redcurrent.embedded.EmbeddedCluster`,
``cluster-node-timeout`` 1 s). Only the nodes of a cluster it started are its to kill:
:class:`PrimaryKill` SIGKILLs the primary holding most of the topic's partitions (not
the coordinator's slot ``{topic}`` when another primary holds partitions), waits for its
replica's promotion, then restarts the killed node as a supervisor would, and it comes
back as the new primary's replica. The node work is blocking, so it runs in a thread.

Partition slots come from the documented hash tags (docs/cluster.md: ``{topic:P}`` for
partition P, ``{topic}`` for the group's coordinator), not from library internals.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.crc import key_slot

from redcurrent.embedded import ClusterNode, EmbeddedCluster

__all__ = ["PrimaryKill", "is_cluster"]

PROMOTION_TIMEOUT_S = 20.0


def is_cluster(url: str) -> bool:
    """True if the server at ``url`` says ``cluster_enabled:1``."""
    with redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5) as client:
        return bool(client.info("cluster").get("cluster_enabled"))


def partition_slot(topic: str, partition: int) -> int:
    return key_slot(f"{{{topic}:{partition}}}".encode())


def coordinator_slot(topic: str) -> int:
    return key_slot(f"{{{topic}}}".encode())


@dataclass
class PrimaryKill:
    """SIGKILL one primary of ``cluster`` midway; what happened, for the verdict.

    ``cluster`` is None on a cluster the demo did not start: then nothing is killed.
    """

    cluster: EmbeddedCluster | None
    say: Callable[[str], None]
    status: str = "3 primaries + 3 replicas"
    report: dict[str, Any] = field(default_factory=dict)
    kill_ns: int = 0  # time.monotonic_ns() at the SIGKILL
    kill_ms: int = 0  # wall-clock ms at the SIGKILL: entry ids above it were written after it

    def victim(self, topic: str, partitions: int) -> tuple[ClusterNode, list[int], bool]:
        """The primary holding most of the topic's partitions, preferring one that does
        not also hold the coordinator slot; its partitions; whether it holds that slot."""
        assert self.cluster is not None
        by_node: dict[ClusterNode, list[int]] = {}
        for p in range(partitions):
            node = self.cluster.primary_for_slot(partition_slot(topic, p))
            by_node.setdefault(node, []).append(p)
        coordinator = self.cluster.primary_for_slot(coordinator_slot(topic))
        node = max(by_node, key=lambda n: (n is not coordinator, len(by_node[n])))
        return node, by_node[node], node is coordinator

    async def run(self, topic: str, partitions: int) -> None:
        """Kill, wait for the promotion, restart the killed node, wait until all is ready."""
        if self.cluster is None:
            self.say("the cluster is not ours (--url): no primary is killed, only a consumer")
            return
        victim, parts, coordinator = await asyncio.to_thread(self.victim, topic, partitions)
        [replica] = await asyncio.to_thread(self.cluster.replicas_of, victim)
        pid = victim.pid
        self.kill_ns, self.kill_ms = time.monotonic_ns(), int(time.time() * 1000)
        self.cluster.kill(victim)
        self.status = f"primary :{victim.port} KILLED; waiting for replica :{replica.port}"
        self.say(
            f"[bold red]SIGKILL Redis primary :{victim.port}[/] (pid {pid}), holding partitions "
            f"{parts}{' and the group coordinator' if coordinator else ''}: its replica "
            f":{replica.port} must take over (cluster-node-timeout 1s)"
        )
        await self._until(lambda: replica.role == "primary")
        promoted_s = (time.monotonic_ns() - self.kill_ns) / 1e9
        self.say(f"replica :{replica.port} promoted to primary after {promoted_s:.1f}s")
        # As a supervisor would: the node comes back on its port and rejoins as a replica
        # of its successor, so acks="replica" sends to those partitions confirm again.
        await asyncio.to_thread(self.cluster.restart, victim)
        await asyncio.to_thread(self.cluster.wait_ready)
        rejoined = await asyncio.to_thread(lambda: victim.role == "replica")
        self.status = f"primary :{replica.port} (promoted), :{victim.port} rejoined as its replica"
        self.say(f"restarted :{victim.port}: it rejoined as a replica of :{replica.port}")
        self.report = {
            "killed": {
                "port": victim.port,
                "pid": pid,
                "partitions": parts,
                "coordinator": coordinator,
            },
            "replaced_by": {"port": replica.port, "role": "primary"},
            "promoted_s": round(promoted_s, 3),
            "rejoined_as_replica": rejoined,
        }

    async def _until(self, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + PROMOTION_TIMEOUT_S
        while not await asyncio.to_thread(_or_false, done):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no replica promoted within {PROMOTION_TIMEOUT_S:.0f}s")
            await asyncio.sleep(0.05)


def _or_false(done: Callable[[], bool]) -> bool:
    """``done()``, or False while the node asked does not answer (mid-failover)."""
    try:
        return done()
    except redis.exceptions.RedisError:
        return False
