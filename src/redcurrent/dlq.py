"""Dead-letter operations for operators: read, count, requeue, delete, purge.

A requeued message goes back to its original partition with its key, value and
headers, plus the header ``rc-requeue-group`` naming the group it is meant for:
other groups on the topic ack it and skip it (counted as ``requeue_skipped``), so a
requeue never delivers a message twice to groups that handled it the first time.
A dead letter that cannot be put back (headers that are not a JSON object, a message
that was not kept) stays in the dead-letter stream: :func:`plan_requeue` says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from . import scripts
from .connection import Client
from .keys import Keys
from .replies import parse_requeue
from .serde import FetchedEntry, decode_entry
from .structs import TopicPartition

__all__ = ["REQUEUE_HEADER", "DeadLetterRecord", "Requeue", "parse", "plan_requeue", "requeue_one"]

from .serde import REQUEUE_HEADER

REQUEUE_MEMORY_MS = 7 * 24 * 3600 * 1000
_REQUEUE = scripts.script("requeue")


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """One dead letter, as :meth:`Admin.dead_letters` returns it.

    ``value`` is decoded like a consumer would (JSON -> object) when the original
    entry was a redcurrent message, else the raw bytes; ``raw_value`` is always
    the stored bytes, untouched. ``dead_letter_id`` is its id in the dead-letter stream.
    """

    dead_letter_id: str
    topic: str
    partition: int
    id: str
    key: str | bytes | None
    headers: dict[str, str]
    value: Any
    raw_value: bytes | None
    attempts: int
    reason: str
    error: str | None
    error_type: str | None
    traceback: str | None
    group: str
    consumer: str
    time: int

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


def _s(fields: dict[bytes, bytes], name: bytes) -> str | None:
    v = fields.get(name)
    return v.decode("utf-8", "replace") if v is not None else None


def parse(dlq_id: Any, raw: dict[Any, Any]) -> DeadLetterRecord:
    """A DeadLetterRecord from one dead-letter stream entry."""
    fields = {k if isinstance(k, bytes) else str(k).encode(): v for k, v in raw.items()}
    eid = dlq_id.decode() if isinstance(dlq_id, bytes) else str(dlq_id)
    topic = _s(fields, b"topic") or ""
    partition = int(fields.get(b"partition", b"0"))
    orig = _s(fields, b"id") or ""
    key: str | bytes | None = fields.get(b"raw.k") or None
    headers: dict[str, str] = {}
    value: Any = fields.get(b"v", fields.get(b"raw.v"))
    fmt = fields.get(b"f", b"")
    if len(fmt) == 3:
        slots = FetchedEntry(orig.encode(), 1, fmt, fields.get(b"v", b""), fields.get(b"k", b""),
                             fields.get(b"h", b""), b"", fields.get(b"t", b""))
        try:
            msg = decode_entry(topic, partition, slots, None)
            key, headers, value = msg.key, dict(msg.headers), msg.value
        except Exception:  # a poison message stays raw bytes here
            key = fields.get(b"k")
    return DeadLetterRecord(
        dead_letter_id=eid, topic=topic, partition=partition, id=orig, key=key, headers=headers,
        value=value, raw_value=fields.get(b"v", fields.get(b"raw.v")),
        attempts=int(fields.get(b"attempts", b"0")), reason=_s(fields, b"reason") or "",
        error=_s(fields, b"error"), error_type=_s(fields, b"error_type"),
        traceback=_s(fields, b"traceback"), group=_s(fields, b"group") or "",
        consumer=_s(fields, b"consumer") or "", time=int(fields.get(b"time", b"0")),
    )


@dataclass(frozen=True, slots=True)
class Requeue:
    """Where one dead letter goes back to, and the fields of the entry that puts it there."""

    topic: str
    partition: int
    fields: list[bytes]


def plan_requeue(raw: dict[Any, Any], topic: str, group: str) -> Requeue:
    """The requeue of one dead letter of ``topic``; ``ValueError`` saying why it cannot be.

    Only what is read here can fail per dead letter; the write itself is one script call.
    """
    fields = {k if isinstance(k, bytes) else str(k).encode(): v for k, v in raw.items()}
    source = _s(fields, b"topic")
    if source != topic:  # it would be written to another topic's partition
        raise ValueError(f"it names topic {source!r}, not {topic!r}")
    partition_raw = fields.get(b"partition", b"")
    if not (partition_raw.isascii() and partition_raw.isdigit()):
        raise ValueError(f"its partition field is not a partition number: {partition_raw!r}")
    return Requeue(topic, int(partition_raw), requeue_fields(fields, group))


def requeue_fields(fields: dict[bytes, bytes], group: str) -> list[bytes]:
    """The fields of the entry that puts this dead letter back (no expiry: an operator's call)."""
    headers = _headers(fields.get(b"h"))
    headers[REQUEUE_HEADER] = group
    out: list[bytes] = []
    if len(fields.get(b"f", b"")) == 3:
        for name in (b"f", b"v", b"k"):
            if name in fields:
                out += [name, fields[name]]
    else:  # a foreign entry: give back the fields it had
        for name, value in fields.items():
            if name.startswith(b"raw."):
                out += [name[4:], value]
    if not out:  # e.g. trimmed while pending: an entry of headers alone is no message
        reason = _s(fields, b"reason") or "unknown"
        raise ValueError(f"nothing to put back: the message itself was not kept (reason {reason!r})")
    return [*out, b"h", orjson.dumps(headers)]


def _headers(raw: bytes | None) -> dict[str, str]:
    """The original headers, checked as a consumer would read them."""
    if not raw:
        return {}
    try:
        headers = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"its headers field 'h' is not JSON: {exc}") from None
    if not isinstance(headers, dict) or not all(type(v) is str for v in headers.values()):
        raise ValueError("its headers field 'h' is not a JSON object of str to str")
    return headers


async def requeue_one(client: Client, keys: Keys, group: str, dlq_id: str, requeue: Requeue) -> bool:
    """Requeue one dead letter; False if it had already been requeued."""
    reply = await scripts.run(
        client, _REQUEUE,
        [keys.stream(requeue.topic, requeue.partition), keys.requeued(requeue.topic, requeue.partition, group)],
        [dlq_id, REQUEUE_MEMORY_MS, *requeue.fields],
    )
    return parse_requeue(reply).id is not None
