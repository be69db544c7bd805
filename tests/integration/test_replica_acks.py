"""acks="replica": a send is confirmed only once a replica has it (WAIT)."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from support.eventually import eventually
from support.servers import ServerProcess

import redcurrent
from redcurrent import Admin, Producer
from redcurrent.keys import Keys

pytestmark = pytest.mark.slow


async def test_replica_acks_wait_for_a_replica_and_fail_clearly_without_one(
    server_binary: str, namespace: str
) -> None:
    with ServerProcess(server_binary) as primary:
        with ServerProcess(
            server_binary, extra_args=["--replicaof", "127.0.0.1", str(primary.port)]
        ) as replica:
            r = Redis.from_url(primary.url)
            try:
                await eventually(lambda: _replicas(r), timeout=10)
                async with Admin(primary.url, namespace=namespace) as admin:
                    await admin.create_topic("t", 1)
                async with Producer(primary.url, namespace=namespace, acks="replica") as p:
                    meta = await p.send("t", {"n": 1}, key="a")
                    rep = Redis.from_url(replica.url)
                    try:  # confirmed means the replica has it
                        assert await rep.xrange(Keys(namespace).stream("t", 0), meta.id, meta.id)
                    finally:
                        await rep.aclose()
                replica.pause()
                try:
                    async with Producer(
                        primary.url, namespace=namespace, acks="replica", request_timeout=1.5
                    ) as p:
                        with pytest.raises(redcurrent.RedcurrentConnectionError):
                            await p.send("t", {"n": 2}, key="a")
                finally:
                    replica.resume()
                # Retried while unconfirmed, yet written once (idempotent sequence).
                entries = await r.xrange(Keys(namespace).stream("t", 0))
                assert [e[1][b"v"] for e in entries] == [b'{"n":1}', b'{"n":2}']
            finally:
                await r.aclose()


async def _replicas(r: Redis) -> bool:
    info = await r.info("replication")
    return (
        int(info.get("connected_slaves", 0)) >= 1
        and info.get("slave0", {}).get("state") == "online"
    )


async def test_replica_acks_refused_on_a_cluster(cluster: object, namespace: str) -> None:
    url = cluster.url  # type: ignore[attr-defined]
    with pytest.raises(redcurrent.ConfigError):
        async with Producer(url, namespace=namespace, acks="replica"):
            pass
