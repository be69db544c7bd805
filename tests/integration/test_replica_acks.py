"""acks="replica": a send is confirmed only once a replica has it (WAIT)."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from support.entries import as_fields
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
                        primary.url, namespace=namespace, acks="replica", request_timeout=1.5,
                        delivery_timeout=2.0,
                    ) as p:
                        with pytest.raises(redcurrent.NotEnoughReplicasError) as err:
                            await p.send("t", {"n": 2}, key="a")
                    text = str(err.value)
                    assert "the primary stored the 1 record(s)" in text
                    assert "0 of 1 replicas confirmed within 750 ms" in text
                    assert "unreachable" not in text and "resend would store them twice" in text
                finally:
                    replica.resume()
                # Retried while unconfirmed, yet written once (idempotent sequence).
                entries = await r.xrange(Keys(namespace).stream("t", 0))
                assert [as_fields(e[1])[b"v"] for e in entries] == [b'{"n":1}', b'{"n":2}']
            finally:
                await r.aclose()


async def test_replica_acks_without_any_replica_say_the_primary_has_it(
    server_binary: str, namespace: str
) -> None:
    """No replica attached: the error is NotEnoughReplicasError naming what happened
    (stored on the primary, 0 of 0 replicas), not "Redis unreachable"; the idempotent
    retries within delivery_timeout stored it once."""
    with ServerProcess(server_binary) as primary:
        r = Redis.from_url(primary.url)
        try:
            async with Producer(
                primary.url, namespace=namespace, acks="replica", request_timeout=1.0,
                delivery_timeout=2.0,
            ) as p:
                with pytest.raises(redcurrent.NotEnoughReplicasError) as err:
                    await p.send("solo", {"n": 1}, key="a")
                assert p.stats()["retries"] >= 2  # retried through the idempotent path first
            text = str(err.value)
            assert "0 of 0 replicas confirmed within 500 ms" in text
            assert "No replica is attached to the primary" in text
            assert "unreachable" not in text.lower() and "TimeoutError" not in text
            assert await r.xlen(Keys(namespace).stream("solo", 0)) == 1
        finally:
            await r.aclose()


async def _replicas(r: Redis) -> bool:
    info = await r.info("replication")
    return (
        int(info.get("connected_slaves", 0)) >= 1
        and info.get("slave0", {}).get("state") == "online"
    )
