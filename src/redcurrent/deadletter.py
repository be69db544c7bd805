"""Writing dead letters: the group's dead-letter stream on the topic slot.

A dead letter keeps the original entry's fields untouched (``f v k h x t``, or
``raw.<field>`` for a foreign entry) next to where it came from and why::

    topic partition id group consumer reason attempts time error_type error traceback

It is written *before* the source entry is acked: a crash in between leaves a
duplicate dead letter, never a lost message.
"""

from __future__ import annotations

import logging
import time
import traceback as tb
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .keys import Keys
from .structs import TopicPartition

if TYPE_CHECKING:
    from .connection import Client
    from .stats import ConsumerStats

__all__ = ["ORIGINAL_FIELDS", "DeadLetterWriter"]

log = logging.getLogger(__name__)

ORIGINAL_FIELDS = (b"f", b"v", b"k", b"h", b"x", b"t")


class DeadLetterWriter:
    """Appends dead letters for one group (private)."""

    def __init__(
        self,
        client: Client,
        keys: Keys,
        group: str,
        consumer: str,
        dead_letter_expired: Callable[[str], bool],
        stats: ConsumerStats,
    ) -> None:
        self._client = client
        self._keys = keys
        self._group = group
        self._consumer = consumer
        self.dead_letter_expired = dead_letter_expired
        self._stats = stats

    async def write_raw(
        self,
        tp: TopicPartition,
        stream: str,
        entry_id: str,
        slots: list[Any],
        reason: str,
        attempts: int,
        error: BaseException | None = None,
    ) -> str:
        """Dead-letter one entry given the fetch script's slots for it. Returns the DLQ id."""
        fields: dict[bytes | str, bytes | str | int] = {
            "topic": tp.topic,
            "partition": tp.partition,
            "id": entry_id,
            "group": self._group,
            "consumer": self._consumer,
            "reason": reason,
            "attempts": attempts,
            "time": int(time.time() * 1000),
        }
        if error is not None:
            fields["error_type"] = type(error).__name__
            fields["error"] = str(error)[:4096]
            fields["traceback"] = "".join(tb.format_exception(error))[-16384:]
        if isinstance(slots[2], bytes) and len(slots[2]) == 3 and slots[2][:1] == b"1":
            for name, value in zip(ORIGINAL_FIELDS, slots[2:8], strict=True):
                if value != b"":
                    fields[name] = value
        elif reason != "trimmed":
            await self._copy_raw(stream, entry_id, fields)
        dlq = self._keys.dead_letters(tp.topic, self._group)
        dlq_id = await self._client.xadd(dlq, fields)  # type: ignore[arg-type]
        self._stats.dead_lettered += 1
        log.warning(
            "dead-lettered %s[%d] %s: %s (attempts=%d, group=%s)",
            tp.topic, tp.partition, entry_id, reason, attempts, self._group,
            extra={"topic": tp.topic, "partition": tp.partition, "entry_id": entry_id,
                   "reason": reason, "attempts": attempts, "group": self._group},
        )
        return dlq_id.decode() if isinstance(dlq_id, bytes) else str(dlq_id)

    async def _copy_raw(self, stream: str, entry_id: str, fields: dict[Any, Any]) -> None:
        # A foreign or corrupt entry: keep every field it has, so nothing is lost.
        entries = await self._client.xrange(stream, entry_id, entry_id)
        if entries and entries[0][1]:
            for name, value in entries[0][1].items():
                fields[b"raw." + (name if isinstance(name, bytes) else str(name).encode())] = value
