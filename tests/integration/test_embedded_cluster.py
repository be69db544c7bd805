"""redcurrent.embedded's cluster: 3 primaries + 3 replicas that really form, fail over and stop.

Each test that kills or moves a node starts a cluster of its own (about 2 s); read-only
checks use the session's ``cluster`` fixture, which is the same class.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio
from redis.crc import key_slot
from support.servers import Cluster, find_server_binary

from redcurrent.embedded import ClusterNode, EmbeddedCluster, embedded_cluster


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _nodes_behind(url: str) -> dict[int, tuple[int, Path]]:
    """port -> (pid, data dir) of every node the cluster at ``url`` knows, asked from each."""
    found = {}
    with redis.RedisCluster.from_url(url) as client:
        for node in client.get_nodes():
            with redis.Redis(host=node.host, port=node.port) as direct:
                pid = int(direct.info("server")["process_id"])
                data_dir = Path(direct.config_get("dir")["dir"])
            found[int(node.port)] = (pid, data_dir)
    return found


def _assert_all_gone(nodes: dict[int, tuple[int, Path]]) -> None:
    for port, (pid, data_dir) in nodes.items():
        assert not _pid_alive(pid), f"node on port {port} (pid {pid}) still runs"
        assert not data_dir.exists(), f"{data_dir} was left behind"


def _key_on(cluster: EmbeddedCluster, primary: ClusterNode, prefix: str) -> str:
    """A key whose slot ``primary`` serves now."""
    return next(
        key
        for key in (f"{prefix}:{i}" for i in range(100_000))
        if cluster.primary_for_slot(key_slot(key.encode())) is primary
    )


async def test_the_url_reads_and_writes_on_every_primary_and_every_node_stops_after(
    server_binary: str, namespace: str
) -> None:
    with embedded_cluster(binary=server_binary) as url:
        nodes = _nodes_behind(url)
        client = redis.asyncio.RedisCluster.from_url(url)
        try:
            owners: set[int] = set()
            for i in range(64):
                key = f"{namespace}:k{i}"
                await client.set(key, i)
                assert await client.get(key) == str(i).encode()
                owner = client.get_node_from_key(key)
                assert owner is not None
                owners.add(int(owner.port))
            primaries = {int(node.port) for node in client.get_primaries()}
        finally:
            await client.aclose()
        assert len(nodes) == 6
        assert owners == primaries and len(primaries) == 3
        assert int(url.rsplit(":", 1)[1]) in primaries  # the URL is a primary's
    _assert_all_gone(nodes)


def test_every_node_stops_when_the_body_raises(server_binary: str) -> None:
    with pytest.raises(KeyError, match="boom"), embedded_cluster(binary=server_binary) as url:
        nodes = _nodes_behind(url)
        raise KeyError("boom")
    assert len(nodes) == 6
    _assert_all_gone(nodes)


def test_every_node_stops_when_start_up_fails(
    server_binary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[int] = []

    def broken_meet(self: EmbeddedCluster) -> None:
        started.extend(node.pid for node in self.nodes if node.pid is not None)
        raise ConnectionRefusedError("meet failed")

    monkeypatch.setattr(EmbeddedCluster, "_meet", broken_meet)
    cluster = EmbeddedCluster(binary=server_binary)
    with pytest.raises(ConnectionRefusedError):
        cluster.start()
    assert len(started) == 6
    assert not any(map(_pid_alive, started))
    assert all(node.pid is None and not Path(node._dir).exists() for node in cluster.nodes)


@pytest.mark.cluster
def test_three_primaries_each_with_one_replica_whose_link_is_up(cluster: Cluster) -> None:
    primaries = cluster.primaries()
    assert len(cluster.nodes) == 6 and len(primaries) == 3
    replicas = [cluster.replicas_of(primary) for primary in primaries]
    assert all(len(mine) == 1 for mine in replicas)
    assert sorted(n.port for mine in replicas for n in mine) == sorted(
        n.port for n in cluster.nodes if n not in primaries
    )
    for [replica] in replicas:
        assert replica.role == "replica"
        with replica.client() as client:
            info = client.info("replication")
        assert info["role"] == "slave" and info["master_link_status"] == "up"
    for node in cluster.nodes:
        info = node.cluster_info()
        assert info["cluster_state"] == "ok" and info["cluster_known_nodes"] == "6"
    covered = sorted(
        slot for slot in range(0, 16384, 97) if cluster.primary_for_slot(slot) in primaries
    )
    assert covered == list(range(0, 16384, 97))


def test_redis62_cluster_forms_with_replicas_and_serves_keys(namespace: str) -> None:
    with EmbeddedCluster(binary=find_server_binary("redis62")) as cluster:
        with cluster.nodes[0].client() as client:
            assert str(client.info("server")["redis_version"]).startswith("6.2.")
        primaries = cluster.primaries()
        assert len(primaries) == 3
        for primary in primaries:
            [replica] = cluster.replicas_of(primary)
            with replica.client() as client:
                assert client.info("replication")["master_link_status"] == "up"
        with redis.RedisCluster.from_url(cluster.url) as client:
            for primary in primaries:
                key = _key_on(cluster, primary, namespace)
                client.set(key, primary.port)
                assert client.get(key) == str(primary.port).encode()
                with primary.client() as direct:
                    assert direct.exists(key) == 1


def test_a_killed_primarys_replica_is_promoted_within_seconds(
    server_binary: str, namespace: str
) -> None:
    with EmbeddedCluster(binary=server_binary) as cluster:
        primary = cluster.primary_for_key(namespace)
        [replica] = cluster.replicas_of(primary)
        with primary.client() as client:
            client.set(namespace, "kept")
            assert client.wait(1, 2000) == 1  # the replica has it before the crash
        cluster.kill(primary)
        assert primary.role == "stopped" and primary.pid is None
        began = time.monotonic()
        cluster.wait_ready(timeout=10)
        took = time.monotonic() - began
        assert took < 6, f"promotion took {took:.1f}s with cluster-node-timeout 1000"
        assert replica.role == "primary"
        assert cluster.primary_for_key(namespace) is replica
        assert all(n.cluster_info()["cluster_state"] == "ok" for n in cluster.nodes if n.running)
        after = f"{{{namespace}}}:after"  # the hash tag puts it in the same slot
        with redis.RedisCluster.from_url(cluster.url) as client:
            assert client.get(namespace) == b"kept"
            client.set(after, "1")
        with replica.client() as direct:
            assert direct.get(after) == b"1"


def test_manual_failover_swaps_primary_and_replica(server_binary: str, namespace: str) -> None:
    with EmbeddedCluster(binary=server_binary) as cluster:
        primary = cluster.primary_for_key(namespace)
        [replica] = cluster.replicas_of(primary)
        cluster.failover(replica)
        assert replica.role == "primary" and primary.role == "replica"
        assert cluster.replicas_of(replica) == [primary]
        assert cluster.primary_for_key(namespace) is replica
        with primary.client() as client:
            assert client.info("replication")["master_link_status"] == "up"
        with redis.RedisCluster.from_url(cluster.url) as client:
            client.set(namespace, "after failover")
            assert client.get(namespace) == b"after failover"
        with pytest.raises(ValueError, match="not a running replica"):
            cluster.failover(replica)  # a primary now
