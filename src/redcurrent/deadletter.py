"""Dead letters, in one place: the record, writing, reading, requeue and deletion.

A dead letter is one entry of the group's dead-letter stream ``ns:{T}:dlq:G`` (the
topic slot, docs/architecture.md §2). It keeps the original entry's fields untouched
(``f v k h x t``, or ``raw.<field>`` for a foreign entry) next to where it came from
and why::

    topic partition id group consumer reason attempts time error_type error traceback

**Written** by the consumer (:class:`DeadLetterWriter`, through the fetcher's retries)
*before* the source entry is acked: a crash in between leaves a duplicate dead letter,
never a lost message. The write is a plain XADD, not fenced: it is on the topic slot,
the owner key on the partition's, and no script touches two slots (docs/architecture.md
§4); the ack after it is fenced, so a consumer that lost the partition meanwhile leaves
at worst a duplicate dead letter.

**Read** by operators (:class:`DeadLetterRecord`, through ``Admin``).

**Requeued** by operators: a dead letter goes back to its original partition with its
key, value and headers, plus the header ``rc-requeue-group`` naming the group it is
meant for: other groups on the topic ack it and skip it (counted as
``requeue_skipped``), so a requeue never delivers a message twice to groups that
handled it the first time. The ``requeue`` script writes it at most once per
dead-letter id (on the partition slot; an operator's call, so there is no owner to
fence it with). A dead letter that cannot be put back (headers that are not a JSON
object, a message that was not kept) stays in the dead-letter stream:
:func:`plan_requeue` says why.
"""

from __future__ import annotations

import logging
import time
import traceback as tb
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import orjson

from . import scripts
from .errors import RequeueError
from .keys import Keys
from .replies import parse_requeue
from .retry import DeadLetter
from .serde import REQUEUE_HEADER, FetchedEntry, decode_entry
from .structs import TopicPartition

if TYPE_CHECKING:
    from .connection import Client
    from .stats import ConsumerStats

__all__ = [
    "ORIGINAL_FIELDS",
    "REQUEUE_HEADER",
    "DeadLetterRecord",
    "DeadLetterWriter",
    "Requeue",
    "plan_requeue",
    "read",
    "reason_for",
    "record",
    "requeue",
    "requeue_one",
]

log = logging.getLogger(__name__)

ORIGINAL_FIELDS = (b"f", b"v", b"k", b"h", b"x", b"t")
REQUEUE_MEMORY_MS = 7 * 24 * 3600 * 1000  # how long a requeued dead-letter id is remembered
_REQUEUE = scripts.script("requeue")


# --------------------------------------------------------------------------- the record


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


# One stream entry as redis-py returns it (decode_responses=False, connection.py
# refuses the other): the id, and the fields by name. Names are bytes; a str name
# (a client that decodes keys only) is tolerated by _by_name.
RawFields = dict[bytes | str, bytes]
RawEntry = tuple[bytes | str, RawFields]


def _by_name(raw: RawFields) -> dict[bytes, bytes]:
    return {k if isinstance(k, bytes) else str(k).encode(): v for k, v in raw.items()}


def _text(raw_id: bytes | str) -> str:
    return raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)


def record(dlq_id: bytes | str, raw: RawFields) -> DeadLetterRecord:
    """A DeadLetterRecord from one dead-letter stream entry."""
    fields = _by_name(raw)
    topic = _s(fields, b"topic") or ""
    partition = int(fields.get(b"partition", b"0"))
    orig = _s(fields, b"id") or ""
    key: str | bytes | None = fields.get(b"raw.k") or None
    headers: dict[str, str] = {}
    value: Any = fields.get(b"v", fields.get(b"raw.v"))
    fmt = fields.get(b"f", b"")
    if len(fmt) == 3:
        entry = FetchedEntry(orig.encode(), 1, fmt, fields.get(b"v", b""), fields.get(b"k", b""),
                             fields.get(b"h", b""), b"", fields.get(b"t", b""))
        try:
            msg = decode_entry(topic, partition, entry, None)
            key, headers, value = msg.key, dict(msg.headers), msg.value
        except Exception:  # a poison message stays raw bytes here
            key = fields.get(b"k")
    return DeadLetterRecord(
        dead_letter_id=_text(dlq_id), topic=topic, partition=partition, id=orig, key=key, headers=headers,
        value=value, raw_value=fields.get(b"v", fields.get(b"raw.v")),
        attempts=int(fields.get(b"attempts", b"0")), reason=_s(fields, b"reason") or "",
        error=_s(fields, b"error"), error_type=_s(fields, b"error_type"),
        traceback=_s(fields, b"traceback"), group=_s(fields, b"group") or "",
        consumer=_s(fields, b"consumer") or "", time=int(fields.get(b"time", b"0")),
    )


# --------------------------------------------------------------------------- writing


def reason_for(exc: BaseException | None, handler_timeout: float | None) -> str:
    """The reason a handler's failure dead-letters its message: the handler's own
    (``DeadLetter``), ``handler_timeout`` for a last attempt that timed out, else
    ``max_attempts``."""
    if isinstance(exc, DeadLetter):
        return exc.reason
    if isinstance(exc, TimeoutError) and handler_timeout is not None:
        return "handler_timeout"
    return "max_attempts"


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

    async def write(
        self,
        tp: TopicPartition,
        stream: str,
        entry_id: str,
        entry: FetchedEntry | None,
        reason: str,
        attempts: int,
        error: BaseException | None = None,
    ) -> str:
        """Dead-letter one entry; returns the dead letter's id. ``entry``: its fields as
        fetched; None when they are not at hand, then they are copied from the stream
        (unless the entry was trimmed away: there is nothing to copy)."""
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
        if entry is not None and isinstance(entry.fmt, bytes) and len(entry.fmt) == 3 and entry.fmt[:1] == b"1":
            for name, value in zip(ORIGINAL_FIELDS, entry[2:8], strict=True):
                # f and v always (an empty value is a message), k unless keyless, the rest when set
                if value != b"" or name == b"v" or (name == b"k" and entry.fmt[2:] != b"n"):
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
        return _text(dlq_id)

    async def _copy_raw(self, stream: str, entry_id: str, fields: dict[bytes | str, bytes | str | int]) -> None:
        # A foreign or corrupt entry: keep every field it has, so nothing is lost.
        entries = await self._client.xrange(stream, entry_id, entry_id)
        if entries and entries[0][1]:
            for name, value in entries[0][1].items():
                fields[b"raw." + (name if isinstance(name, bytes) else str(name).encode())] = value


# --------------------------------------------------------------------------- reading


async def read(client: Client, key: str, *, after: str | None = None, count: int | None = None
               ) -> list[DeadLetterRecord]:
    """The dead letters of the stream ``key``, oldest first, after the id ``after``."""
    raw = await _xrange(client, key, f"({after}" if after else "-", "+", count)
    return [record(i, f) for i, f in raw]


async def _xrange(client: Client, key: str, start: str = "-", end: str = "+", count: int | None = None
                  ) -> list[RawEntry]:
    # redis-py types the reply loosely: it is a list of (id, {field: value}).
    return cast("list[RawEntry]", await client.xrange(key, start, end, count=count))


# --------------------------------------------------------------------------- requeue


@dataclass(frozen=True, slots=True)
class Requeue:
    """Where one dead letter goes back to, and the fields of the entry that puts it there."""

    topic: str
    partition: int
    fields: list[bytes]


def plan_requeue(raw: RawFields, topic: str, group: str) -> Requeue:
    """The requeue of one dead letter of ``topic``; ``ValueError`` saying why it cannot be.

    Only what is read here can fail per dead letter; the write itself is one script call.
    """
    fields = _by_name(raw)
    source = _s(fields, b"topic")
    if source != topic:  # it would be written to another topic's partition
        raise ValueError(f"it names topic {source!r}, not {topic!r}")
    partition_raw = fields.get(b"partition", b"")
    if not (partition_raw.isascii() and partition_raw.isdigit()):
        raise ValueError(f"its partition field is not a partition number: {partition_raw!r}")
    return Requeue(topic, int(partition_raw), _requeue_fields(fields, group))


def _requeue_fields(fields: dict[bytes, bytes], group: str) -> list[bytes]:
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


async def requeue_one(client: Client, keys: Keys, group: str, dlq_id: str, plan: Requeue) -> bool:
    """Requeue one dead letter; False if it had already been requeued."""
    reply = await scripts.run(
        client, _REQUEUE,
        [keys.stream(plan.topic, plan.partition), keys.requeued(plan.topic, plan.partition, group)],
        [dlq_id, REQUEUE_MEMORY_MS, *plan.fields],
    )
    return parse_requeue(reply).id is not None


async def requeue(client: Client, keys: Keys, topic: str, group: str, ids: Iterable[str] | None) -> int:
    """Move the dead letters of ``group`` on ``topic`` (all, or ``ids``) back to their
    partitions and delete them from the dead-letter stream; how many moved. One that
    cannot be put back stays, and does not stop the others: ``RequeueError`` at the end."""
    key = keys.dead_letters(topic, group)
    if ids is None:
        entries = await _xrange(client, key)
    else:
        entries = []
        for i in ids:
            entries += await _xrange(client, key, i, i)
    moved = 0
    failed: dict[str, str] = {}
    for dlq_id, fields in entries:
        eid = _text(dlq_id)
        try:
            plan = plan_requeue(fields, topic, group)
        except ValueError as exc:
            failed[eid] = str(exc)
            continue
        if await requeue_one(client, keys, group, eid, plan):
            moved += 1
        await client.xdel(key, eid)
    if failed:
        listed = "; ".join(f"{i}: {why}" for i, why in failed.items())
        raise RequeueError(
            f"requeued {moved} dead letter(s) of group {group!r} on topic {topic!r}; "
            f"{len(failed)} could not be and stay in the dead-letter stream ({listed})",
            moved,
            failed,
        )
    return moved
