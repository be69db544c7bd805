"""From a URL or a client to a ready connection: Redis or RedisCluster, probed once.

Clients we build ourselves have redis-py's own retries off (docs/architecture.md §12: the library
retries where it knows a command is safe to resend), TCP keepalive on, a health
check, and a socket timeout well above the longest blocking read we issue.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, TypeAlias

import hiredis
from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.client import Pipeline as _Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.connection import Connection as TCPConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    ClusterError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import ConfigError, RedcurrentConnectionError, RedcurrentError, redact, translate

__all__ = [
    "CONNECTION_ERRORS",
    "Capabilities",
    "Client",
    "Connection",
    "Pipeline",
    "cluster_transient",
    "connect",
    "default_url",
    "refresh_slots",
    "trim_idle",
    "transient",
    "transient_error",
]

log = logging.getLogger(__name__)

Client: TypeAlias = "Redis | RedisCluster"
Pipeline: TypeAlias = "_Pipeline | ClusterPipeline"

SOCKET_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0
CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)
# A cluster in transition refuses a command without running it: CLUSTERDOWN while a
# failed primary's replica is being promoted, TRYAGAIN while a slot's keys are moved,
# ASK/MOVED past our redirect bound, redis-py's "TTL exhausted" after its own redirects,
# an uncovered slot, or no node answering the slot-map query (docs/cluster.md).
_CLUSTER_TRANSIENT = (ClusterError, TryAgainError, AskError, SlotNotCoveredError)
_REFRESH_EVERY_S = 0.05  # at most one slot-map query per client this often
_last_refresh: dict[int, float] = {}
_refreshing: set[asyncio.Task[None]] = set()


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the server can do, probed once at connect."""

    version: tuple[int, int, int]
    is_cluster: bool
    server: str = "redis"
    #: ``SET key value IFEQ expected PX ms GET`` (Valkey 8.1+): an owner key is refreshed
    #: by one native command instead of a script (docs/scaling.md).
    set_ifeq: bool = False


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


def default_url() -> str:
    """``REDIS_URL`` from the environment, else ``redis://localhost:6379/0``."""
    return os.environ.get("REDIS_URL") or "redis://localhost:6379/0"


class _Packer:
    """Packs a command with one call into hiredis when every argument is already a str,
    bytes, int or float (our hot paths' commands: a fetch, a produce call, the idle
    XREAD), instead of redis-py's per-argument encoding in Python, which cost ~0.5 us an
    argument (12 us for an idle XREAD over 8 streams, against 1.6 us). Anything else
    (bool, bytearray, a command name with a space: "SCRIPT LOAD") goes to redis-py's own
    packer, which splits, converts or raises its usual DataError."""

    __slots__ = ("_fallback",)

    def __init__(self, fallback: object) -> None:
        self._fallback = fallback

    def pack(self, *args: object) -> list[bytes]:
        first = args[0]
        if not (isinstance(first, str) and " " in first):
            try:
                return [hiredis.pack_command(args)]  # type: ignore[arg-type]
            except TypeError:
                pass
        return self._fallback.pack(*args)  # type: ignore[attr-defined, no-any-return]


def _quick_write(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """``cls`` (the connection class redis-py chose for the URL: TCP, TLS or a Unix
    socket), bounding a write with ``asyncio.timeout`` where redis-py uses
    ``asyncio.wait_for``: before Python 3.12 that wraps every command's write in a task
    of its own, an extra trip through the event loop a command (~20 us here). Same
    errors as redis-py's: a write past ``socket_timeout`` is a TimeoutError, a broken
    socket a ConnectionError, and the connection is dropped after either."""

    class QuickWrite(cls):  # type: ignore[valid-type, misc]
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            if not self.socket_timeout or not self.is_connected or isinstance(command, str):
                await super().send_packed_command(command, check_health)
                return
            if check_health:
                await self.check_health()
            try:
                async with asyncio.timeout(self.socket_timeout):
                    await self._send_packed_command([command] if isinstance(command, bytes) else command)
            except TimeoutError as exc:
                await self.disconnect(nowait=True)
                if exc.errno is not None:  # ETIMEDOUT from the OS: the connection is dead
                    raise RedisConnectionError(f"Error {exc.errno} while writing to socket. {exc.strerror}.") from exc
                raise RedisTimeoutError("Timeout writing to socket") from None
            except OSError as exc:
                await self.disconnect(nowait=True)
                raise RedisConnectionError(f"Error while writing to socket: {exc}.") from exc
            except BaseException:
                await self.disconnect(nowait=True)  # part of a command may be on the wire
                raise

    QuickWrite.__name__ = QuickWrite.__qualname__ = f"QuickWrite{cls.__name__}"
    return QuickWrite


_QUICK: dict[type[AbstractConnection], type[AbstractConnection]] = {}


class _Pool(ConnectionPool):
    """redis-py's pool, whose connections pack commands with :class:`_Packer` and bound
    their writes without a task (:func:`_quick_write`)."""

    def __init__(self, connection_class: type[AbstractConnection] = TCPConnection, **kwargs: Any) -> None:
        if sys.version_info < (3, 12):
            quick = _QUICK.get(connection_class)
            if quick is None:
                quick = _QUICK[connection_class] = _quick_write(connection_class)
            connection_class = quick
        super().__init__(connection_class, **kwargs)

    def make_connection(self) -> AbstractConnection:
        conn: AbstractConnection = super().make_connection()  # type: ignore[no-untyped-call]
        packer = getattr(conn, "_command_packer", None)
        if packer is not None and hasattr(packer, "pack"):  # hiredis present (a dependency)
            conn._command_packer = _Packer(packer)  # type: ignore[assignment]
        return conn


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


async def connect(url: str | None, client: Client | None, *, retry_for: float = 0.0) -> Connection:
    """Build (or adopt) a client and probe its server. Raises RedcurrentConnectionError.

    A cluster whose slot map cannot be read whole yet (uncovered slots, a node still
    joining, no node answering) is asked again with backoff for ``retry_for`` seconds,
    saying so in the log, then the error is a RedcurrentConnectionError naming it."""
    if client is not None and url is not None:
        raise ConfigError("pass either url= or redis=, not both")
    if client is not None:
        _check_client(client)
        caps = await _probe(client)
        return Connection(client, caps, owned=False)
    target = url or default_url()
    if not isinstance(target, str) or "://" not in target:
        raise ConfigError("url must look like redis://[user:password@]host:port/db (or rediss:// for TLS)")
    plain = Redis.from_pool(_Pool.from_url(target, **_client_options()))
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
    deadline = time.monotonic() + retry_for
    delay = 0.05
    while True:
        cluster = RedisCluster.from_url(target, **options)
        try:
            await cluster.initialize()
            return Connection(cluster, caps, owned=True)
        except Exception as exc:
            await cluster.aclose()
            what = "connecting to the Redis Cluster"
            left = deadline - time.monotonic()
            if not transient(exc) or left <= 0:
                raise transient_error(exc, what) from None
            delay = min(delay * 2, 1.0, left)
            log.warning("%s: %s; asking again in %.1fs", what, redact(str(exc)), delay)
        await asyncio.sleep(delay)


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
            return Capabilities(_version(info), True, _server(info), _set_ifeq(info))
        info = await client.info("server")
        cluster = await client.info("cluster")
    except RedcurrentError:
        raise
    except Exception as exc:
        raise translate(exc, "connecting to Redis") from None
    return Capabilities(_version(info), bool(cluster.get("cluster_enabled")), _server(info), _set_ifeq(info))


def _version(info: dict[str, object]) -> tuple[int, int, int]:
    raw = str(info.get("redis_version", "0.0.0"))
    parts = ([*raw.split("."), "0", "0"])[:3]
    return (int(parts[0]), int(parts[1]), int("".join(ch for ch in parts[2] if ch.isdigit()) or 0))


def _set_ifeq(info: dict[str, object]) -> bool:
    """Valkey 8.1 added SET's IFEQ condition (it reports redis_version 7.2.4 for
    compatibility, so its own version is the one to read)."""
    raw = info.get("valkey_version")
    return raw is not None and _version({"redis_version": raw}) >= (8, 1, 0)


def _server(info: dict[str, object]) -> str:
    return "valkey" if info.get("server_name") == "valkey" or "valkey_version" in info else "redis"


async def trim_idle(client: Client, keep: int = 1) -> int:
    """Close the idle pooled connections of ``client`` beyond ``keep`` (per node on a
    cluster); returns how many were closed. A closed connection stays in its pool and
    connects again when next used, after every open one (so a quiet client does not
    reopen them). Reads redis-py's pool internals, guarded: where they differ, nothing
    is closed."""
    if isinstance(client, RedisCluster):
        closed = 0
        for node in client.get_nodes():
            free = getattr(node, "_free", None)
            if free is None:
                continue
            extra = [c for c in free if c.is_connected][keep:]
            for c in extra:
                free.remove(c)
            for c in extra:
                try:
                    await c.disconnect()
                finally:
                    free.append(c)  # acquired from the left: reused last
            closed += len(extra)
        return closed
    pool = client.connection_pool
    available = getattr(pool, "_available_connections", None)
    if not isinstance(available, list):
        return 0
    connected = [c for c in available if c.is_connected]
    extra = connected[: max(0, len(connected) - keep)]  # keep the most recently used
    for c in extra:
        available.remove(c)
    for c in extra:
        try:
            await c.disconnect()
        finally:
            available.insert(0, c)  # taken from the end: reused last
    return len(extra)


# --------------------------------------------------------------------------- cluster


def cluster_transient(exc: BaseException) -> bool:
    """A cluster refused the command unrun and will accept it later (see above)."""
    if isinstance(exc, _CLUSTER_TRANSIENT):
        return True
    text = str(exc)
    return type(exc) is RedisClusterException and ("cannot be connected" in text or "not covered" in text)


def transient(exc: BaseException) -> bool:
    """Worth retrying with backoff until ``request_timeout``: a connection error or
    timeout, or a cluster in transition (failover, resharding)."""
    return isinstance(exc, CONNECTION_ERRORS) or cluster_transient(exc)


def transient_error(exc: BaseException, what: str) -> RedcurrentError:
    """The typed error for a transient failure that outlived its retries."""
    if cluster_transient(exc):
        return RedcurrentConnectionError(
            f"{what}: the Redis Cluster is not serving the slot ({redact(f'{type(exc).__name__}: {exc}')}): "
            "a failover or a slot migration did not finish in time, or slots are uncovered "
            "(cluster_state:fail); check CLUSTER INFO, then retry"
        )
    return translate(exc, what)


def refresh_slots(client: Client, *, background: bool = False) -> asyncio.Task[None] | None:
    """Re-read a cluster client's slot map soon (at most every 50 ms per client).

    redis-py refreshes it on MOVED, and after a connection error only inside its own
    retries, which clients we build have off (docs/architecture.md §12); our own
    deadlines cancel a call before redis-py sees any error at all. So every caller that
    meets a connection error, a timeout or CLUSTERDOWN on a cluster calls this: the
    replica promoted by a failover is found at the next attempt. Returns the task doing
    it (None on a single server, or when a refresh ran just now); ``background`` callers
    (a cancelled call) do not wait for it.
    """
    if not isinstance(client, RedisCluster):
        return None
    now = time.monotonic()
    if now - _last_refresh.get(id(client), 0.0) < _REFRESH_EVERY_S:
        return None
    _last_refresh[id(client)] = now
    task = asyncio.get_running_loop().create_task(_refresh(client), name="redcurrent-slot-refresh")
    _refreshing.add(task)
    task.add_done_callback(_refreshing.discard)
    return None if background else task


async def _refresh(client: RedisCluster) -> None:
    try:
        # CLUSTER SLOTS from a node that answers; redis-py keeps each node's pool, and the
        # nodes a failover removed are disconnected. (RedisCluster.initialize() would
        # also resend COMMAND, and only when its private flag says so.)
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await client.nodes_manager.initialize()
    except Exception as exc:  # the next failure asks again
        log.debug("cluster slot map refresh failed: %s", redact(f"{type(exc).__name__}: {exc}"))
