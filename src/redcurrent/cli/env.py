"""What every command shares: the server URL (given, local, or embedded), namespace, output mode."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

from redcurrent import Admin
from redcurrent.embedded import EmbeddedServer

__all__ = ["LOCAL_URL", "Env", "local_server_answers"]

T = TypeVar("T")

LOCAL_URL = "redis://localhost:6379/0"


def local_server_answers(host: str = "127.0.0.1", port: int = 6379, timeout_s: float = 0.3) -> bool:
    """True if something speaking RESP answers PING on ``host:port`` (even ``-NOAUTH``)."""
    try:
        with socket.create_connection((host, port), timeout_s) as s:
            s.settimeout(timeout_s)
            s.sendall(b"PING\r\n")
            return s.recv(1)[:1] in (b"+", b"-")
    except OSError:
        return False


class Env:
    """Global options of one invocation. The URL is resolved on first use, so ``--help``
    never starts a server; an embedded server lives until :meth:`close`."""

    def __init__(self, url: str | None, namespace: str, json_mode: bool) -> None:
        self._given = url or None
        self.namespace = namespace
        self.json = json_mode
        self._url: str | None = None
        self._server: EmbeddedServer | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            self._url = self._given or self._local_or_embedded()
        return self._url

    @property
    def embedded(self) -> bool:
        return self._server is not None

    def _local_or_embedded(self) -> str:
        if local_server_answers():
            return LOCAL_URL
        self._server = EmbeddedServer().start()
        print(
            f"redcurrent: no --url or REDIS_URL and nothing on localhost:6379; started an embedded "
            f"server at {self._server.url} (stopped on exit, its data with it)",
            file=sys.stderr,
        )
        return self._server.url

    def admin(self) -> Admin:
        return Admin(self.url, namespace=self.namespace)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run one command's coroutine; the URL is resolved before the loop starts."""
        _ = self.url
        return asyncio.run(_until_terminated(coro))

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(Exception):
                server.stop()


async def _until_terminated(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``; SIGTERM cancels it like Ctrl-C does, so a consumer leaves its group
    gracefully and the demo stops its workers, then the command exits 143."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    terminated: list[bool] = []

    def on_term() -> None:
        terminated.append(True)
        task.cancel()

    with contextlib.suppress(
        NotImplementedError, RuntimeError
    ):  # no signals here (Windows, thread)
        loop.add_signal_handler(signal.SIGTERM, on_term)
    try:
        return await coro
    except asyncio.CancelledError:
        if terminated:
            raise SystemExit(128 + signal.SIGTERM) from None
        raise
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)
