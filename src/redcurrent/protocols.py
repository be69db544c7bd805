"""The pluggable parts, as Protocols: the shapes where user code meets the library.

* :class:`Handler`, :class:`BatchHandler` — what ``Consumer.process()`` and
  ``Consumer.process_batch()`` call: an async callable taking a message (a list of them).
* :class:`Listener` — ``on_assign``, ``on_revoke``, ``on_lost``: called with the
  partitions concerned, sorted; a coroutine it returns is awaited.
* :class:`Serializer`, :class:`Deserializer` — a custom value codec (``serializer=``
  of the Producer, ``deserializer=`` of the Consumer); JSON (orjson) when not given.
* :class:`Dispatcher` — how a fetched batch of one partition reaches user code
  (private: ``process``, ``process_batch`` and ``async for`` each have one).

Any plain function (or lambda) of the right shape fits; nothing needs to subclass
these. Payloads stay ``Any``: they are whatever the user's codec makes of them.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .fetcher import PartitionFetcher
    from .structs import Message, TopicPartition

__all__ = ["BatchHandler", "Deserializer", "Dispatcher", "Handler", "Listener", "Serializer"]


class Handler(Protocol):
    """``async def handle(msg: Message) -> None``: raising is a failed attempt."""

    def __call__(self, msg: Message, /) -> Awaitable[object]: ...


class BatchHandler(Protocol):
    """``async def handle(msgs: list[Message]) -> None``: one partition's batch, in order."""

    def __call__(self, msgs: list[Message], /) -> Awaitable[object]: ...


class Listener(Protocol):
    """``def on_assign(partitions: list[TopicPartition]) -> None`` (or ``async def``)."""

    def __call__(self, partitions: list[TopicPartition], /) -> object: ...


class Serializer(Protocol):
    """Turns a value into the bytes stored in the stream entry."""

    def __call__(self, value: Any, /) -> bytes: ...


class Deserializer(Protocol):
    """Turns stored bytes back into a value; raising makes the entry a decode failure."""

    def __call__(self, data: bytes, /) -> Any: ...


class Dispatcher(Protocol):
    """Hands one fetched batch of a partition to user code, in order. It finishes
    each message through ``fetcher.finish`` (or leaves it pending by not doing so).
    A ``concurrent`` one queues the batch and returns at once (``Consumer(concurrency=N)``)."""

    closed: bool
    concurrent: bool

    def __call__(self, fetcher: PartitionFetcher, msgs: list[Message], /) -> Awaitable[None]: ...
