"""A tiny asyncio TCP fault proxy between clients and a real Redis, for fault tests.

It forwards bytes both ways (one listening port, any number of client connections)
and injects the network faults a production fleet meets. No root, no Docker, no
``tc netem``:

* **lost reply** — :meth:`FaultProxy.drop_next_reply` / :meth:`drop_every_reply`: the
  next matching request reaches the server, and when its reply begins to arrive the
  proxy closes the client side (and the upstream side) instead of forwarding it. The
  write happened, the client never learns so: what a retried send must survive
  without duplicating.
* **latency with jitter** — :meth:`set_latency`: every chunk, each way, is held for
  ``delay ± jitter`` seconds; order within a direction is kept (as TCP keeps it).
* **black hole** — :meth:`black_hole`: a half-open link. Connections stay open but no
  byte moves either way; what was sent is held (as TCP retransmits it) and delivered
  on :meth:`heal`. Pass ``drop=True`` to discard it instead.
* **reset** — :meth:`reset_all`: every open connection gets a TCP RST now.
* **cut a reply half-way** — :meth:`cut_next_reply`: the first half of the next reply
  chunk reaches the client, then the connection is reset.
* **refuse new connections** — :meth:`refuse_new`: new connections are reset as soon
  as they are accepted (the listener stays, so the port is never lost).

:meth:`heal` ends every fault, latency included. Example::

    async with FaultProxy("127.0.0.1", 6379) as proxy:
        proxy.set_latency(0.010, jitter=0.005)
        proxy.drop_next_reply(b"EVALSHA")
        ...  # connect clients to proxy.url
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

__all__ = ["FaultProxy"]

HOST = "127.0.0.1"
CHUNK = 65536
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


@dataclass(eq=False)
class _Link:
    """One client connection and its upstream connection."""

    client_reader: asyncio.StreamReader
    client_writer: asyncio.StreamWriter
    upstream_reader: asyncio.StreamReader | None = None
    upstream_writer: asyncio.StreamWriter | None = None
    doomed: bool = False  # the next reply chunk is dropped and the link closed
    cut: bool = False  # the next reply chunk is cut half-way and the link reset
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self, *, rst: bool = False) -> None:
        for writer in (self.client_writer, self.upstream_writer):
            if writer is None:
                continue
            if rst:
                _arm_rst(writer)
            writer.transport.abort()


def _arm_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass


class _Pipe:
    """One direction of a link: chunks wait here until due, in order."""

    def __init__(self) -> None:
        self.queue: deque[tuple[float, bytes | None]] = deque()  # None: reset the link here
        self.ready = asyncio.Event()
        self.last_due = 0.0


class FaultProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``; injects faults on demand."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._drops_armed = 0
        self._drop_marker: bytes | None = None
        self._drop_forever = False
        self._cuts_armed = 0
        self._cut_marker: bytes | None = None
        self._latency = 0.0
        self._jitter = 0.0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._discard = False
        self._refusing = False
        self._rng = random.Random()
        self.dropped_replies = 0
        self.cut_replies = 0
        self.resets = 0
        self.refused = 0
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

    @property
    def open_links(self) -> int:
        return len(self._links)

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

    def set_latency(self, delay: float, jitter: float = 0.0, *, seed: int | None = None) -> None:
        """Hold every chunk, each way, ``delay ± jitter`` seconds (order kept per direction)."""
        if delay < 0 or jitter < 0 or jitter > delay:
            raise ValueError("need 0 <= jitter <= delay")
        self._latency, self._jitter = delay, jitter
        if seed is not None:
            self._rng.seed(seed)

    def black_hole(self, *, drop: bool = False) -> None:
        """Half-open every link (new ones too): nothing moves until :meth:`heal`.

        Bytes sent meanwhile are held and delivered on heal (TCP retransmission), or
        discarded with ``drop=True``.
        """
        self._discard = drop
        self._flowing.clear()

    def reset_all(self) -> int:
        """Send a TCP RST on every open connection, both sides. Returns how many."""
        links = list(self._links)
        for link in links:
            link.abort(rst=True)
        self.resets += len(links)
        return len(links)

    def cut_next_reply(self, marker: bytes | None = None, times: int = 1) -> None:
        """The next ``times`` replies to requests containing ``marker`` arrive half-way,
        then their connection is reset (the request did run on the server)."""
        self._cut_marker = marker.upper() if marker is not None else None
        self._cuts_armed = times

    def refuse_new(self, refuse: bool = True) -> None:
        """Reset new connections as soon as they are accepted (until ``refuse_new(False)``
        or :meth:`heal`); open connections are not touched."""
        self._refusing = refuse

    def heal(self) -> None:
        """End every fault: drops, cuts, black hole (held bytes flow), refusal, latency."""
        self._drops_armed = 0
        self._drop_forever = False
        self._cuts_armed = 0
        self._refusing = False
        self._latency = self._jitter = 0.0
        self._discard = False
        self._flowing.set()

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
            if self._refusing:
                self.refused += 1
                link.abort(rst=True)
                return
            link.upstream_reader, link.upstream_writer = await asyncio.open_connection(
                *self.upstream
            )
            up, down = _Pipe(), _Pipe()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._requests(link, up))
                tg.create_task(self._deliver(link, up, link.upstream_writer))
                tg.create_task(self._replies(link, down))
                tg.create_task(self._deliver(link, down, link.client_writer))
        except* (ConnectionError, OSError, _LinkClosed):
            pass
        finally:
            link.abort()
            self._links.discard(link)
            self._handlers.discard(task)

    def _matches(self, marker: bytes | None, chunk: bytes) -> bool:
        return marker is None or marker in chunk.upper()

    def _due(self, pipe: _Pipe) -> float:
        delay = self._latency
        if self._jitter:
            delay += self._rng.uniform(-self._jitter, self._jitter)
        due = max(time.monotonic() + delay, pipe.last_due)  # never reorder a direction
        pipe.last_due = due
        return due

    def _enqueue(self, pipe: _Pipe, chunk: bytes | None) -> None:
        if not self._flowing.is_set() and self._discard and chunk is not None:
            return  # a black hole that loses what it swallows
        pipe.queue.append((self._due(pipe), chunk))
        pipe.ready.set()

    async def _deliver(self, link: _Link, pipe: _Pipe, writer: asyncio.StreamWriter) -> None:
        """Write a direction's chunks once due, and only while the network flows."""
        while True:
            while not pipe.queue:
                pipe.ready.clear()
                await pipe.ready.wait()
            await self._flowing.wait()
            due, chunk = pipe.queue[0]
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue  # re-check: a black hole may have begun meanwhile
            pipe.queue.popleft()
            if chunk is None:  # the cut reply's half is out: now the reset
                link.abort(rst=True)
                raise _LinkClosed
            writer.write(chunk)
            await writer.drain()

    async def _requests(self, link: _Link, pipe: _Pipe) -> None:
        while chunk := await link.client_reader.read(CHUNK):
            upper = chunk.upper()
            for command in self._watch:
                if command in upper:
                    self.requests_seen[command] = self.requests_seen.get(command, 0) + 1
            if self.armed and not link.doomed and self._matches(self._drop_marker, chunk):
                link.doomed = True
                if not self._drop_forever:
                    self._drops_armed -= 1
            if self._cuts_armed > 0 and not link.cut and self._matches(self._cut_marker, chunk):
                link.cut = True
                self._cuts_armed -= 1
            self._enqueue(pipe, chunk)
        raise _LinkClosed

    async def _replies(self, link: _Link, pipe: _Pipe) -> None:
        while chunk := await link.upstream_reader.read(CHUNK):  # type: ignore[union-attr]
            if link.doomed:
                # The server has executed the request (its reply is here): lose the reply.
                self.dropped_replies += 1
                link.abort()
                raise _LinkClosed
            if link.cut:
                # Half of the reply, in order behind what is queued, then a reset; the
                # rest of this reply and anything after it never reaches the client.
                self.cut_replies += 1
                link.cut = False
                self._enqueue(pipe, chunk[: max(1, len(chunk) // 2)])
                self._enqueue(pipe, None)
                await asyncio.Event().wait()  # read no more; the reset ends the link
            self._enqueue(pipe, chunk)
        raise _LinkClosed


class _LinkClosed(Exception):
    """One side of a link closed: tear the link down."""
