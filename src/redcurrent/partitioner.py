"""Which partition a record goes to.

The rule, so that a producer in any language can match it::

    partition = murmur3_32(key_bytes, seed=0) % partitions      # unsigned 32-bit

where ``murmur3_32`` is MurmurHash3 x86 32-bit (``mmh3.hash(key, 0, signed=False)``)
and a ``str`` key is encoded as UTF-8 first. An explicit ``partition=`` wins. Records
without a key use the sticky partitioner: they fill a batch on one partition, then
move on to another, as Kafka's producer does.
"""

from __future__ import annotations

import random

import mmh3

__all__ = ["StickyPartitioner", "murmur3_32", "partition_for_key"]


def murmur3_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3 x86 32-bit of ``data``, unsigned. ``murmur3_32(b"foo") == 4138058784``."""
    return int(mmh3.hash(data, seed, signed=False))


def partition_for_key(key: str | bytes, partitions: int) -> int:
    """The partition of ``key`` among ``partitions``: ``murmur3_32(utf8(key)) % partitions``."""
    if isinstance(key, str):
        key = key.encode()
    return int(mmh3.hash(key, 0, signed=False)) % partitions


class StickyPartitioner:
    """Keyless records stick to one partition until ``batch_size`` of them went there."""

    __slots__ = ("_batch_size", "_count", "_current", "_rng")

    def __init__(self, batch_size: int, rng: random.Random | None = None) -> None:
        self._batch_size = max(1, batch_size)
        self._rng = rng or random.Random()
        self._current: dict[str, int] = {}
        self._count: dict[str, int] = {}

    def partition(self, topic: str, partitions: int) -> int:
        """The partition for the next keyless record of ``topic``."""
        current = self._current.get(topic)
        count = self._count.get(topic, 0)
        if current is None or current >= partitions or count >= self._batch_size:
            current = self._next(current if current is not None and current < partitions else None, partitions)
            self._current[topic] = current
            count = 0
        self._count[topic] = count + 1
        return current

    def _next(self, previous: int | None, partitions: int) -> int:
        if partitions == 1:
            return 0
        choice = self._rng.randrange(partitions - 1 if previous is not None else partitions)
        if previous is not None and choice >= previous:
            choice += 1  # never the same partition twice in a row
        return choice
