"""What a program leaves open when it leaves its event loop."""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import Callable, Coroutine
from typing import Any


def resource_warnings(program: Callable[[int], Coroutine[Any, Any, None]], rounds: int = 3) -> list[str]:
    """Run ``program(round)`` in a fresh event loop ``rounds`` times, as a script does
    (``asyncio.run``), and return the ResourceWarnings (unclosed sockets, connections,
    transports) that garbage collection reports after each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for round_ in range(rounds):
            asyncio.run(program(round_))
            gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
