"""A tiny asyncio TCP proxy between a client and a real Redis, for fault tests.

It forwards bytes both ways. Armed with :meth:`FaultProxy.drop_next_reply`, it lets
the next matching request through to the server, and when the server's reply begins to
arrive it closes the client side (and the upstream side) instead of forwarding it: the
write happened, the client never learns so. That is the "lost reply" a retried send must
survive without duplicating.

    async with FaultProxy("127.0.0.1", 6379) as proxy:
        proxy.drop_next_reply(b"EVALSHA")
        ...  # connect clients to proxy.url
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

__all__ = ["FaultProxy"]

HOST = "127.0.0.1"
CHUNK = 65536


@dataclass(eq=False)
class _Link:
    """One client connection and its upstream connection."""

    client_reader: asyncio.StreamReader
    client_writer: asyncio.StreamWriter
    upstream_reader: asyncio.StreamReader | None = None
    upstream_writer: asyncio.StreamWriter | None = None
    doomed: bool = False  # the next reply chunk is dropped and the link closed
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.client_writer, self.upstream_writer):
            if writer is not None:
                writer.transport.abort()


class FaultProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``; can drop replies on demand."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._drops_armed = 0
        self._drop_marker: bytes | None = None
        self._drop_forever = False
        self.dropped_replies = 0
        self.connections = 0
        self.requests_seen: dict[bytes, int] = {}
        self._watch: tuple[bytes, ...] = (b"EVALSHA",)

    @classmethod
    def for_url(cls, url: str) -> FaultProxy:
        """A proxy in front of ``redis://host:port``."""
        rest = url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
        host, port = rest.rsplit(":", 1)
        return cls(host, int(port))

    # -- control
    @property
    def port(self) -> int:
        assert self._server is not None, "start() the proxy first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"

    def drop_next_reply(self, marker: bytes | None = None, times: int = 1) -> None:
        """Drop the reply to the next ``times`` requests containing ``marker`` (any if None).

        The request reaches the server; the reply does not reach the client, whose
        connection is closed instead.
        """
        self._drop_marker = marker.upper() if marker is not None else None
        self._drops_armed = times

    def drop_every_reply(self, marker: bytes | None = None) -> None:
        """Drop the reply to every matching request until :meth:`heal`."""
        self._drop_marker = marker.upper() if marker is not None else None
        self._drop_forever = True

    def heal(self) -> None:
        self._drops_armed = 0
        self._drop_forever = False

    @property
    def armed(self) -> bool:
        return self._drop_forever or self._drops_armed > 0

    def seen(self, command: bytes) -> int:
        """How many requests (chunks) carried ``command``, e.g. b"EVALSHA"."""
        return self.requests_seen.get(command.upper(), 0)

    def watch(self, *commands: bytes) -> None:
        self._watch = tuple(c.upper() for c in commands)

    # -- lifecycle
    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._accept, HOST, 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- plumbing
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        link = _Link(reader, writer)
        self._links.add(link)
        self.connections += 1
        try:
            link.upstream_reader, link.upstream_writer = await asyncio.open_connection(
                *self.upstream
            )
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._requests(link))
                tg.create_task(self._replies(link))
        except* (ConnectionError, OSError, _LinkClosed):
            pass
        finally:
            link.abort()
            self._links.discard(link)
            self._handlers.discard(task)

    def _matches(self, chunk: bytes) -> bool:
        return self._drop_marker is None or self._drop_marker in chunk.upper()

    async def _requests(self, link: _Link) -> None:
        assert link.upstream_writer is not None
        while chunk := await link.client_reader.read(CHUNK):
            upper = chunk.upper()
            for command in self._watch:
                if command in upper:
                    self.requests_seen[command] = self.requests_seen.get(command, 0) + 1
            if self.armed and not link.doomed and self._matches(chunk):
                link.doomed = True
                if not self._drop_forever:
                    self._drops_armed -= 1
            link.upstream_writer.write(chunk)
            await link.upstream_writer.drain()
        raise _LinkClosed

    async def _replies(self, link: _Link) -> None:
        assert link.upstream_reader is not None
        while chunk := await link.upstream_reader.read(CHUNK):
            if link.doomed:
                # The server has executed the request (its reply is here): lose the reply.
                self.dropped_replies += 1
                link.abort()
                raise _LinkClosed
            link.client_writer.write(chunk)
            await link.client_writer.drain()
        raise _LinkClosed


class _LinkClosed(Exception):
    """One side of a link closed: tear the link down."""
