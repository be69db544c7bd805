"""From a URL or a client to a ready connection: Redis or RedisCluster, probed once.

Clients we build ourselves have redis-py's own retries off (docs/architecture.md §12: the library
retries where it knows a command is safe to resend), TCP keepalive on, a health
check, and a socket timeout well above the longest blocking read we issue.
"""

from __future__ import annotations

import os
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType
from typing import Self, TypeAlias

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import Pipeline as _Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .errors import ConfigError, RedcurrentError, translate

__all__ = ["Capabilities", "Client", "Connection", "Lifecycle", "Pipeline", "connect", "default_url"]

Client: TypeAlias = "Redis | RedisCluster"
Pipeline: TypeAlias = "_Pipeline | ClusterPipeline"

SOCKET_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the server can do, probed once at connect."""

    version: tuple[int, int, int]
    is_cluster: bool
    server: str = "redis"

    @property
    def xautoclaim_deleted(self) -> bool:
        """XAUTOCLAIM reports deleted ids (Redis 7.0+)."""
        return self.version >= (7, 0, 0)

    @property
    def group_lag(self) -> bool:
        """XINFO GROUPS reports ``lag`` and ``entries-read`` (Redis 7.0+)."""
        return self.version >= (7, 0, 0)

    @property
    def sharded_pubsub(self) -> bool:
        return self.version >= (7, 0, 0)


@dataclass(slots=True)
class Connection:
    """A client plus what we learned about its server. Closes the client if we built it."""

    client: Client
    caps: Capabilities
    owned: bool

    async def close(self) -> None:
        if self.owned:
            await self.client.aclose()

    def __repr__(self) -> str:  # never the URL: it may carry a password
        kind = "cluster" if self.caps.is_cluster else "single"
        return f"<Connection {self.caps.server} {'.'.join(map(str, self.caps.version))} {kind}>"


class Lifecycle(ABC):
    """``async with``: :meth:`start` on entry, :meth:`close` on exit (Producer, Consumer, Admin)."""

    @abstractmethod
    async def start(self) -> None:
        """Connect and begin work."""

    @abstractmethod
    async def close(self) -> None:
        """Finish work and release the connection."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def default_url() -> str:
    """``REDIS_URL`` from the environment, else ``redis://localhost:6379/0``."""
    return os.environ.get("REDIS_URL") or "redis://localhost:6379/0"


def _client_options() -> dict[str, object]:
    keepalive: dict[int, int] = {}
    for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            keepalive[getattr(socket, name)] = value
    # Every handshake command costs a round trip on each new connection, and a
    # connection is replaced after any timeout (half-open suspicion): RESP2 needs no
    # HELLO, and no CLIENT SETINFO is sent. Measured through a 100 ms link: a fresh
    # connection's first reply came after 0.83 s with redis-py's defaults, 0.2 s without.
    return {
        "protocol": 2,
        "driver_info": None,
        "retry": Retry(NoBackoff(), 0),
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive,
        "health_check_interval": 15,
    }


async def connect(url: str | None, client: Client | None) -> Connection:
    """Build (or adopt) a client and probe its server. Raises RedcurrentConnectionError."""
    if client is not None and url is not None:
        raise ConfigError("pass either url= or redis=, not both")
    if client is not None:
        _check_client(client)
        caps = await _probe(client)
        return Connection(client, caps, owned=False)
    target = url or default_url()
    if not isinstance(target, str) or "://" not in target:
        raise ConfigError("url must look like redis://[user:password@]host:port/db (or rediss:// for TLS)")
    plain = Redis.from_url(target, **_client_options())  # type: ignore[arg-type]
    try:
        caps = await _probe(plain)
    except BaseException:
        await plain.aclose()
        raise
    if not caps.is_cluster:
        return Connection(plain, caps, owned=True)
    await plain.aclose()
    options = _client_options()
    options.pop("health_check_interval")
    cluster = RedisCluster.from_url(target, **options)
    try:
        await cluster.initialize()
    except Exception as exc:
        await cluster.aclose()
        raise translate(exc, "connecting to the Redis Cluster") from None
    return Connection(cluster, caps, owned=True)


def _check_client(client: object) -> None:
    if not isinstance(client, Redis | RedisCluster):
        raise ConfigError(
            f"redis= must be a redis.asyncio.Redis or RedisCluster, not {type(client).__name__}"
        )
    if client.get_encoder().decode_responses:
        raise ConfigError("the redis client must use decode_responses=False (values are bytes)")


async def _probe(client: Client) -> Capabilities:
    try:
        if isinstance(client, RedisCluster):
            info = await client.info("server", target_nodes=RedisCluster.RANDOM)
            return Capabilities(_version(info), True, _server(info))
        info = await client.info("server")
        cluster = await client.info("cluster")
    except RedcurrentError:
        raise
    except Exception as exc:
        raise translate(exc, "connecting to Redis") from None
    return Capabilities(_version(info), bool(cluster.get("cluster_enabled")), _server(info))


def _version(info: dict[str, object]) -> tuple[int, int, int]:
    raw = str(info.get("redis_version", "0.0.0"))
    parts = ([*raw.split("."), "0", "0"])[:3]
    return (int(parts[0]), int(parts[1]), int("".join(ch for ch in parts[2] if ch.isdigit()) or 0))


def _server(info: dict[str, object]) -> str:
    return "valkey" if info.get("server_name") == "valkey" or "valkey_version" in info else "redis"
