"""The lifecycle every client shares: ``async with`` starts it and closes it.

Producer, Consumer and Admin each say what starting and closing mean; the context
protocol is written once, here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self

__all__ = ["Lifecycle"]


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
