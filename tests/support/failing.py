"""Helpers for the failure-handling suites: a consumer with fast retries, topics, pending counts."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from redcurrent import Admin, Backoff, Consumer
from redcurrent.keys import Keys

FAST = Backoff(initial=0.01, multiplier=2.0, max=0.05, jitter=0.0)


def consumer(url: str, ns: str, *topics: str, group: str = "g", **kw: Any) -> Consumer:
    """A consumer with the suites' short timeouts, fast retries and ``start="earliest"``."""
    kw.setdefault("heartbeat_interval", 0.2)
    kw.setdefault("session_timeout", 1.5)
    kw.setdefault("rebalance_timeout", 2.0)
    kw.setdefault("backoff", FAST)
    kw.setdefault("start", "earliest")
    return Consumer(*topics, group=group, url=url, namespace=ns, **kw)


async def make_topic(url: str, ns: str, name: str = "t", partitions: int = 2, **kw: Any) -> None:
    async with Admin(url, namespace=ns) as admin:
        await admin.create_topic(name, partitions, **kw)


async def pending(r: Redis, ns: str, topic: str = "t", partitions: int = 1, group: str = "g") -> int:
    """Entries pending for ``group`` over the topic's first ``partitions`` partitions."""
    total = 0
    for p in range(partitions):
        info = await r.xpending(Keys(ns).stream(topic, p), group)
        total += int(info["pending"])
    return total
