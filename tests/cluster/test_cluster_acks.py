"""acks="replica" on a Redis Cluster (docs/architecture.md §9, docs/cluster.md).

Each node's pipeline of produce calls ends with ``WAIT 1`` on the same connection, so a
send is confirmed only once a replica of the node that stored it has it. Without any
replica the first send fails with the typed, retriable NotEnoughReplicasError, and the
idempotent retries before it stored the record once.
"""

from __future__ import annotations

import pytest
from redis.crc import key_slot
from support.servers import Cluster

import redcurrent
from redcurrent import Admin, Producer, Record
from redcurrent.embedded import ClusterNode, EmbeddedCluster
from redcurrent.keys import Keys

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


def _on_replica(cluster: EmbeddedCluster, stream: str, entry_id: str) -> bool:
    primary = cluster.primary_for_slot(key_slot(stream.encode()))
    [replica] = cluster.replicas_of(primary)
    with replica.client(single_connection_client=True) as client:
        client.execute_command("READONLY")  # a replica serves its primary's slots to readers
        return bool(client.xrange(stream, entry_id, entry_id))


async def test_a_confirmed_send_is_on_the_replica_of_the_node_that_stored_it(
    cluster: Cluster, namespace: str
) -> None:
    async with Admin(cluster.url, namespace=namespace) as admin:
        await admin.create_topic("acked", 8)
    keys = Keys(namespace)
    async with Producer(cluster.url, namespace=namespace, acks="replica") as producer:
        metas = await producer.send_batch("acked", [Record({"i": i}, key=f"k{i}") for i in range(200)])
        one = await producer.send("acked", {"i": -1}, key="single")
    metas.append(one)
    streams = {keys.stream("acked", m.partition) for m in metas}
    nodes: set[ClusterNode] = {cluster.primary_for_slot(key_slot(s.encode())) for s in streams}
    assert len(nodes) == 3  # the batch was spread over every primary, so over three WAITs
    assert all(_on_replica(cluster, keys.stream("acked", m.partition), m.id) for m in metas)


async def test_without_replicas_the_first_send_fails_typed_and_is_stored_once(
    server_binary: str, namespace: str
) -> None:
    with EmbeddedCluster(primaries=3, replicas=0, binary=server_binary) as bare:
        async with Producer(
            bare.url, namespace=namespace, acks="replica", request_timeout=1.0, delivery_timeout=2.0
        ) as producer:
            with pytest.raises(redcurrent.NotEnoughReplicasError) as err:
                await producer.send("solo", {"n": 1}, key="a")
            assert producer.stats()["retries"] >= 1  # retried through the idempotent path
        assert err.value.retriable
        text = str(err.value)
        assert "the primary stored the 1 record(s), but 0 of 0 replicas confirmed" in text
        assert "No replica is attached to the primary" in text
        assert "unreachable" not in text.lower()
        stream = Keys(namespace).stream("solo", 0)
        node = bare.primary_for_slot(key_slot(stream.encode()))
        with node.client() as client:
            assert client.xlen(stream) == 1  # written once, however many attempts
