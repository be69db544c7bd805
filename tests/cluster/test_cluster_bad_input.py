"""Pointing redcurrent at the wrong node of a cluster, or at a broken cluster: a clear,
typed error or the redirect followed, never a hang (docs/cluster.md)."""

from __future__ import annotations

import time

import pytest
from redis.crc import key_slot
from support.servers import Cluster

import redcurrent
from redcurrent import Consumer, Producer
from redcurrent.embedded import ClusterNode, EmbeddedCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(60)]


async def test_a_replicas_url_finds_the_primaries(cluster: Cluster, namespace: str) -> None:
    primary = cluster.primary_for_slot(0)
    [replica] = cluster.replicas_of(primary)
    async with Producer(replica.url, namespace=namespace, default_partitions=4) as producer:
        metas = await producer.send_batch("via-replica", [{"i": i} for i in range(20)])
    assert len(metas) == 20


async def test_a_node_that_serves_no_slot_is_a_typed_error_within_request_timeout(
    server_binary: str, namespace: str
) -> None:
    lone = ClusterNode(server_binary, set()).start()  # cluster-enabled, never met, no slots
    try:
        for make in (
            lambda: Producer(lone.url, namespace=namespace, request_timeout=1.0),
            lambda: Consumer("t", group="g", url=lone.url, namespace=namespace, request_timeout=1.0),
        ):
            started = time.monotonic()
            with pytest.raises(redcurrent.RedcurrentConnectionError) as err:
                async with make():
                    pass
            assert time.monotonic() - started < 5
            assert err.value.retriable
            assert "CLUSTER INFO" in str(err.value)
    finally:
        lone.stop()


async def test_uncovered_slots_are_retried_until_request_timeout_then_a_typed_error(
    server_binary: str, namespace: str
) -> None:
    with EmbeddedCluster(primaries=3, replicas=0, binary=server_binary) as broken:
        slot = key_slot(b"anything")
        for node in broken.nodes:  # every node forgets the slot's owner: cluster_state:fail
            with node.client() as client:
                client.execute_command("CLUSTER DELSLOTS", slot)
        started = time.monotonic()
        with pytest.raises(redcurrent.RedcurrentConnectionError) as err:
            async with Producer(broken.url, namespace=namespace, request_timeout=1.5):
                pass
        took = time.monotonic() - started
        assert 1.0 <= took < 5, took  # asked again until request_timeout, no longer
        assert "not covered" in str(err.value) and "cluster_state:fail" in str(err.value)
