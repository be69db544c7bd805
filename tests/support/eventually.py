"""Polling helpers: wait for a condition instead of sleeping a fixed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast, overload

T = TypeVar("T")

_MISSING: Any = object()


def _timeout_error(message: str, timeout: float, value: Any, exc: BaseException | None) -> str:
    head = message or "condition not met"
    if exc is not None:
        last = f"last exception: {exc!r}"
    elif value is _MISSING:
        last = "predicate never completed"
    else:
        last = f"last value: {value!r}"
    return f"{head} (after {timeout:.2f}s; {last})"


@overload
async def eventually(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = ...,
    interval: float = ...,
    message: str = ...,
) -> T: ...


@overload
async def eventually(
    predicate: Callable[[], T],
    timeout: float = ...,
    interval: float = ...,
    message: str = ...,
) -> T: ...


async def eventually(
    predicate: Callable[[], Any],
    timeout: float = 5.0,
    interval: float = 0.02,
    message: str = "",
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns a truthy value, and return it.

    Exceptions from the predicate count as "not yet"; on timeout an AssertionError carries
    ``message`` and the last value or exception.
    """
    deadline = time.monotonic() + timeout
    value: Any = _MISSING
    error: BaseException | None = None
    while True:
        try:
            result = predicate()
            value = await result if inspect.isawaitable(result) else result
            error = None
            if value:
                return value
        except Exception as exc:
            error = exc
        if time.monotonic() >= deadline:
            raise AssertionError(_timeout_error(message, timeout, value, error)) from error
        await asyncio.sleep(interval)


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 5.0,
    interval: float = 0.02,
    message: str = "",
) -> T:
    """Synchronous :func:`eventually`, for subprocess and server-lifecycle tests."""
    deadline = time.monotonic() + timeout
    value: Any = _MISSING
    error: BaseException | None = None
    while True:
        try:
            value = predicate()
            error = None
            if value:
                return cast(T, value)
        except Exception as exc:
            error = exc
        if time.monotonic() >= deadline:
            raise AssertionError(_timeout_error(message, timeout, value, error)) from error
        time.sleep(interval)
