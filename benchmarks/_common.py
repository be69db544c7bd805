"""Shared benchmark helpers: a server (REDIS_URL or embedded), payloads, timing."""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Iterator

import orjson

from redcurrent.embedded import embedded_server

PARTITIONS = 8
KEYS = 1000


@contextlib.contextmanager
def server_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with embedded_server() as embedded:
        yield embedded


def payloads(n: int, seed: int = 7) -> list[tuple[str, bytes]]:
    """n (key, ~200-byte JSON value) pairs over 1,000 distinct keys."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        key = f"user-{rng.randrange(KEYS):04d}"
        value = orjson.dumps({"seq": i, "user": key, "kind": "order.created", "amount": rng.random(),
                              "note": "x" * 110})
        out.append((key, value))
    return out


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")
