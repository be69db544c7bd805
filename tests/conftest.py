"""Shared fixtures: real servers only (docs/architecture.md §11), never mocks or fakeredis.

Server choice: ``--server auto|valkey|redis62|system`` (default: $REDCURRENT_TEST_SERVER,
else ``auto``). When $REDIS_URL is set the single-node fixtures use it and start nothing;
the cluster fixture always starts its own cluster from the chosen binary: 3 primaries,
each with a replica attached (``redcurrent.embedded.EmbeddedCluster``, about 2 s).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
import redis.asyncio
from support.proxy import FaultProxy
from support.servers import (
    SERVER_KINDS,
    AsyncClient,
    Cluster,
    ServerProcess,
    Target,
    Version,
    env_redis_url,
    find_server_binary,
    sync_server_version,
)

from redcurrent import Admin


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--server",
        choices=SERVER_KINDS,
        default=os.environ.get("REDCURRENT_TEST_SERVER", "auto"),
        help="server binary for the test servers (env REDCURRENT_TEST_SERVER)",
    )
    parser.addoption(
        "--full-faults",
        action="store_true",
        default=False,
        help="run the fault scenarios at full size (20,000 messages, every repetition)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "min_server(major, minor): skip when the single-node server is older"
    )
    config.addinivalue_line(
        "markers", "single_node: tests taking target/admin run on the single node only"
    )


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="session")
def server_binary(request: pytest.FixtureRequest) -> str:
    return find_server_binary(str(request.config.getoption("--server")))


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> Iterator[ServerProcess | None]:
    if env_redis_url() is not None:
        yield None
        return
    try:
        binary: str = request.getfixturevalue("server_binary")
    except Exception:
        binary = ""
    if not binary:
        # docs/architecture.md §11, last resort: a container, when a Docker engine answers.
        request.getfixturevalue("_docker_redis")
        yield None
        return
    with ServerProcess(binary, appendonly=False) as server:
        yield server


@pytest.fixture(scope="session")
def _docker_redis() -> Iterator[str]:
    try:
        from testcontainers.redis import RedisContainer
    except ImportError:
        pytest.skip("no Redis server binary, and testcontainers is not installed")
    try:
        container = RedisContainer("redis:7").start()
    except Exception as exc:  # no Docker engine answering
        pytest.skip(f"no Redis server binary and no Docker engine ({type(exc).__name__})")
    url = f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}"
    os.environ["REDIS_URL"] = url
    try:
        yield url
    finally:
        container.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: ServerProcess | None) -> str:
    if redis_server is None:
        url = env_redis_url()
        assert url is not None
        return url
    return redis_server.url


@pytest.fixture(scope="session")
def cluster(server_binary: str) -> Iterator[Cluster]:
    with Cluster(server_binary) as started:
        yield started


@pytest.fixture(scope="session")
def server_version_info(redis_url: str) -> Version:
    """Redis-compatible version of the single-node server (Valkey 9.1 -> (7, 2, 4))."""
    return sync_server_version(redis_url)


@pytest.fixture(autouse=True)
def _min_server_gate(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("min_server")
    if marker is None:
        return
    needed = tuple(int(part) for part in marker.args)
    have: Version = request.getfixturevalue("server_version_info")
    if have[: len(needed)] < needed:
        want = ".".join(map(str, needed))
        pytest.skip(f"needs server >= {want}, have {'.'.join(map(str, have))}")


# --------------------------------------------------------------------------- per test


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    """One event loop for a whole synchronous test: hypothesis examples run in it one by one."""
    with asyncio.Runner() as loop:
        yield loop


@pytest.fixture
def namespace() -> str:
    """A unique key prefix per test (the library's ``namespace=``); never FLUSHALL."""
    return "t" + uuid.uuid4().hex[:10]


@pytest_asyncio.fixture
async def r(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def rc(cluster: Cluster) -> AsyncIterator[redis.asyncio.RedisCluster]:
    client = redis.asyncio.RedisCluster.from_url(cluster.url)
    yield client
    await client.aclose()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The one way a behaviour runs on one node and on the cluster (saq's one suite per
    backend): a test that takes ``target`` (directly, or through ``admin`` or
    ``target_client``) runs twice, ``[single]`` and ``[cluster]``, unless its module or
    itself is marked ``single_node``."""
    if "target" in metafunc.fixturenames and not metafunc.definition.get_closest_marker(
        "single_node"
    ):
        metafunc.parametrize(
            "target",
            [
                pytest.param("single", id="single"),
                pytest.param("cluster", id="cluster", marks=pytest.mark.cluster),
            ],
            indirect=True,
        )


@pytest.fixture
def target(request: pytest.FixtureRequest) -> Target:
    """Where the test runs: the single-node server, or (``[cluster]``) the cluster."""
    if getattr(request, "param", "single") == "cluster":
        started: Cluster = request.getfixturevalue("cluster")
        return Target(kind="cluster", url=started.url, is_cluster=True)
    url: str = request.getfixturevalue("redis_url")
    return Target(kind="single", url=url, is_cluster=False)


@pytest_asyncio.fixture
async def target_client(target: Target) -> AsyncIterator[AsyncClient]:
    client = target.client()
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def admin(target: Target, namespace: str) -> AsyncIterator[Admin]:
    """An Admin on the test's target in the test's namespace (on one node only in a
    ``single_node`` module)."""
    async with Admin(target.url, namespace=namespace) as admin:
        yield admin


@pytest_asyncio.fixture
async def proxy(redis_url: str) -> AsyncIterator[FaultProxy]:
    """A FaultProxy in front of the test server (drop, delay or cut replies)."""
    async with FaultProxy.for_url(redis_url) as started:
        yield started
