"""The packer our own connections use: byte for byte what redis-py sends, and redis-py's
own errors for what it refuses (docs/architecture.md: connections)."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from redcurrent.connection import _Packer, _Pool


def _ours_and_redis_py() -> tuple[Any, Any]:
    conn = _Pool.from_url("redis://127.0.0.1:1/0").make_connection()
    plain = Connection(host="127.0.0.1", port=1)
    return conn._command_packer, plain._command_packer


@pytest.mark.parametrize(
    "args",
    [
        ("EVALSHA", "ab" * 20, 3, "rc:{t:0}", b"rc:{t:0}:owner", "k", "tok|1", "g", "c", 500, ">", "0", "1-1,1-2", ""),
        ("XREAD", "COUNT", 1, "BLOCK", 2000, "STREAMS", "bell", "rc:{t:0}", "$", b"1733340000000-0"),
        ("SET", "k", "é" * 3, "PX", 1500),
        ("ZADD", "z", 0.1, "m", 1e-07, "n", 10**20, "o"),
        ("SCRIPT LOAD", "return 1"),
        ("CONFIG GET", "maxmemory"),
        ("SET", "k", memoryview(b"abc")),
        ("SET", "k", bytearray(b"xyz")),
        ("SET", "k", b"v" * 70_000),
    ],
)
def test_packs_what_redis_py_packs(args: tuple[object, ...]) -> None:
    ours, theirs = _ours_and_redis_py()
    assert isinstance(ours, _Packer)
    assert b"".join(ours.pack(*args)) == b"".join(bytes(x) for x in theirs.pack(*args))


@pytest.mark.parametrize("bad", [True, None, object()])
def test_refuses_what_redis_py_refuses_with_its_error(bad: object) -> None:
    ours, _ = _ours_and_redis_py()
    with pytest.raises(DataError):
        ours.pack("SET", "k", bad)
