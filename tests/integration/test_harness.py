"""The real-server test harness itself: servers, cluster, fixtures, helpers."""

from __future__ import annotations

import os

import pytest
import redis
import redis.asyncio
from support.eventually import eventually, wait_until
from support.servers import (
    AsyncClient,
    Cluster,
    ServerProcess,
    Target,
    find_server_binary,
    server_version,
)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _keys_on_every_node(
    cluster: Cluster, client: redis.asyncio.RedisCluster, prefix: str
) -> None:
    owners: dict[int, str] = {}
    for i in range(64):
        key = f"{prefix}:k{i}"
        await client.set(key, i)
        assert await client.get(key) == str(i).encode()
        owner = client.get_node_from_key(key)
        assert owner is not None
        owners.setdefault(int(owner.port), key)
    primaries = cluster.primaries()
    assert sorted(owners) == sorted(node.port for node in primaries)
    for node in primaries:  # the key really lives on the node that owns its slot
        with node.client() as direct:
            assert direct.exists(owners[node.port]) == 1


async def test_single_node_ping_and_version(
    r: redis.asyncio.Redis, redis_server: ServerProcess | None
) -> None:
    assert await r.ping() is True
    version = await server_version(r)
    assert version >= (6, 2, 0)
    if redis_server is not None:
        assert redis_server.version == version
        assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}"


@pytest.mark.cluster
async def test_cluster_ready_and_keys_on_three_primaries(
    cluster: Cluster, rc: redis.asyncio.RedisCluster, namespace: str
) -> None:
    assert len(cluster.nodes) == 6 and len(cluster.primaries()) == 3
    for node in cluster.nodes:
        info = node.cluster_info()
        assert info["cluster_state"] == "ok"
        assert info["cluster_known_nodes"] == "6"
    await _keys_on_every_node(cluster, rc, namespace)


async def test_target_client(target: Target, target_client: AsyncClient, namespace: str) -> None:
    expected = redis.asyncio.RedisCluster if target.is_cluster else redis.asyncio.Redis
    assert isinstance(target_client, expected)
    await target_client.set(f"{namespace}:x", "1")
    assert await target_client.get(f"{namespace}:x") == b"1"


def test_appendonly_survives_kill_and_restart(server_binary: str) -> None:
    with ServerProcess(server_binary, appendonly=True, appendfsync="always") as server:
        with server.client() as client:
            client.set("durable", "yes")
        port, pid = server.port, server.pid
        server.kill()
        assert pid is not None and not _pid_alive(pid)
        server.restart()
        assert server.port == port and server.pid != pid
        with server.client() as client:
            assert client.get("durable") == b"yes"


def test_pause_resume_and_idempotent_stop(server_binary: str) -> None:
    server = ServerProcess(server_binary).start()
    server.pause()
    with server.client(socket_timeout=0.3) as client, pytest.raises(redis.exceptions.TimeoutError):
        client.ping()
    server.resume()
    with server.client() as client:
        assert client.ping() is True
    pid = server.pid
    server.stop()
    server.stop()
    assert pid is not None and not _pid_alive(pid)
    assert not server.dir.exists()


def test_redis62_binary_starts() -> None:
    with ServerProcess(find_server_binary("redis62")) as server:
        assert server.version[:2] == (6, 2)
        assert server.flavor == "redis"


@pytest.mark.min_server(6, 2)
def test_min_server_runs_when_new_enough(server_version_info: tuple[int, int, int]) -> None:
    assert server_version_info >= (6, 2, 0)


@pytest.mark.min_server(99, 0)
def test_min_server_skips_when_too_old() -> None:
    pytest.fail("min_server(99, 0) should have skipped this test")


async def test_eventually_returns_last_truthy_value() -> None:
    calls: list[int] = []

    async def predicate() -> list[int] | None:
        calls.append(1)
        return calls if len(calls) >= 3 else None

    assert await eventually(predicate, timeout=2) == [1, 1, 1]
    assert wait_until(lambda: 7, timeout=1) == 7


async def test_eventually_times_out_with_message() -> None:
    def failing() -> bool:
        raise ValueError("boom")

    with pytest.raises(AssertionError, match=r"never.*last exception: ValueError\('boom'\)"):
        await eventually(failing, timeout=0.1, message="never")
    with pytest.raises(AssertionError, match="last value: 0"):
        wait_until(lambda: 0, timeout=0.1)
