"""Typed script replies: one parser per Lua script in ``lua/``, and nowhere else.

Every script answers a table whose first element is its status (docs/architecture.md,
each script's contract at the top of its file). A status that reports success, however
it got there (``DUP``, ``DONE``, ``EXISTS``, ``SAME``), is a field of the result; a
status that refuses is a typed error from :mod:`redcurrent.errors`:

==================  ===========================================================
``FENCED``          :class:`FencedError` (heartbeat: rejoin; elsewhere: drop it)
``REPLACED``        :class:`FencedInstanceError` (a newer instance took the member id)
``DELETED``         :class:`FencedInstanceError` (an operator deleted the group)
``BUSY``            :class:`PartitionBusyError` (claim again after ``retry_ms``)
``ABSENT``          :class:`LeaseExpiredError` (the owner key expired)
``NOGROUP``         :class:`GroupMissingError`
``NOTOPIC``         :class:`PartitionMissingError`
``STALE``           :class:`StaleSequenceError`
``STALE_ROUTE``     :class:`StaleRouteError` (refresh the metadata, re-route the records)
``UNKNOWN[_TOPIC]`` :class:`UnknownTopicError`
``SHRINK``          :class:`InvalidPartitionsError`
==================  ===========================================================

Replies come as hiredis/redis-py give them with no response callbacks: bulk strings
are bytes, Lua numbers ints. The two hot replies are parsed once per call and no more:
``produce`` per partition batch (its ids stay one comma-joined bytes string) and
``fetch`` per batch (its entries stay XREADGROUP's, decoded by
:func:`redcurrent.serde.decode_fresh` in one pass when all are in the common shape,
else by :func:`redcurrent.serde.decode_fields` one by one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, TypeAlias, cast

from .errors import (
    FencedError,
    FencedInstanceError,
    GroupMissingError,
    InvalidPartitionsError,
    LeaseExpiredError,
    PartitionBusyError,
    PartitionMissingError,
    RedcurrentError,
    StaleRouteError,
    StaleSequenceError,
    TransactionAbortedError,
    UnknownTopicError,
)
from .structs import TopicPartition

__all__ = [
    "Assignment",
    "Claimed",
    "CommitRefused",
    "Committed",
    "Fetched",
    "Gated",
    "PartitionsAltered",
    "Produced",
    "Requeued",
    "TopicCreated",
    "parse_alter_partitions",
    "parse_barrier",
    "parse_claim",
    "parse_commit_outputs",
    "parse_create_topic",
    "parse_drained",
    "parse_fetch",
    "parse_fetch_ack",
    "parse_heartbeat",
    "parse_nack",
    "parse_produce",
    "parse_producer_init",
    "parse_producer_register",
    "parse_refresh",
    "parse_refresh_set",
    "parse_release",
    "parse_requeue",
    "parse_seek",
    "parse_set_topic_config",
    "ShareFetched",
    "parse_share_fetch",
    "parse_share_leave",
    "parse_share_settle",
]

# Reply shapes, as each script's contract (top of its .lua file) defines them. They come
# untyped from redis-py; the parser's parameter says what the script answers, at no
# runtime cost. Lua strings arrive as bytes, Lua numbers as ints.
Scalar: TypeAlias = "bytes | int"
StatusReply: TypeAlias = "Sequence[object]"  # read only for its status, reply[0]
StreamEntry: TypeAlias = "tuple[bytes, list[bytes] | None]"  # XREADGROUP's [id, [field, value, ...]] (None: deleted)
FetchReply: TypeAlias = "Sequence[bytes | list[StreamEntry] | list[int]]"  # [status, last_id, entries, counts]

_tuple_new = tuple.__new__
_OK = b"OK"
_FENCED = b"FENCED"


def _unexpected(script: str, reply: object) -> RedcurrentError:
    return RedcurrentError(f"unexpected reply from the {script} script: {reply!r:.200}")


def _where(tp: TopicPartition) -> str:
    return f"{tp.topic}[{tp.partition}]"


def _text(raw: object) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


# --------------------------------------------------------------------------- produce


class Produced(NamedTuple):
    """One partition batch stored (now, or before: ``duplicate``)."""

    ids: bytes  # the entry ids, comma-joined, in record order
    version: int  # the topic version the partition's marker holds (growth notification)
    duplicate: bool


def parse_produce(reply: Sequence[Sequence[Scalar]], batches: int) -> list[Produced | RedcurrentError]:
    """One result per batch of a ``produce`` call, in order: the batch's
    :class:`Produced`, or the error that refused it (one batch's refusal does not stop
    the others, so the errors are returned, not raised). ``NOTOPIC`` is
    :class:`PartitionMissingError`, ``STALE`` :class:`StaleSequenceError`, ``FENCED``
    :class:`FencedError` (a newer instance of the transactional_id), ``ABORTED``
    (a transaction another batch of which was refused) ``TransactionAbortedError``. Raises
    RedcurrentError when the reply does not have ``batches`` batch replies."""
    if not isinstance(reply, list) or len(reply) != batches:
        raise _unexpected("produce", reply)
    out: list[Produced | RedcurrentError] = []
    for r in reply:
        status = r[0]
        if status == _OK or status == b"DUP":
            out.append(_tuple_new(Produced, (r[1], int(r[2]), status != _OK)))
        elif status == b"NOTOPIC":
            out.append(PartitionMissingError("the partition has no marker; nothing was written"))
        elif status == b"STALE":
            out.append(StaleSequenceError(
                f"stale producer sequence (the partition's last is {int(r[1])}); nothing was written"))
        elif status == b"FENCED":
            out.append(FencedError(
                f"a newer instance of this transactional_id started (epoch {int(r[1])}): this "
                "producer is fenced; nothing was written"))
        elif status == b"ABORTED":
            out.append(TransactionAbortedError(
                "the transaction's other batch was refused: nothing was written"))
        elif status == b"STALE_ROUTE":
            out.append(StaleRouteError(
                f"routed with a topic version older than {int(r[1])} (the topic grew with "
                "preserve_key_order since); nothing was written", int(r[1])))
        else:
            out.append(_unexpected("produce", r))
    return out


# --------------------------------------------------------------------------- fetch


class Fetched(NamedTuple):
    """A fetch that read (an ack-only fetch has its own parser)."""

    last_id: bytes  # the stream's newest id when a ">" read found nothing, else b""
    entries: list[StreamEntry]  # XREADGROUP's own entries: [id, [field, value, ...] or None]
    counts: list[int]  # delivery counts of a re-read of my pending list; [] for ">"


class Gated(NamedTuple):
    """A ``>`` fetch stopped at a growth's drain barrier (docs/architecture.md §10)."""

    gate: str  # the barrier id: nothing after it is handed out until the gate is lifted
    drained: bool  # nothing at or below it is pending either: this partition is drained


def parse_fetch(reply: FetchReply, tp: TopicPartition) -> Fetched | Gated:
    """The ``fetch`` script's reply (or the watched fetch's, which has its shape).
    FENCED: FencedError; NOGROUP: GroupMissingError; BARRIER: :class:`Gated`."""
    status = reply[0]
    if status == _OK:
        return _tuple_new(Fetched, (reply[1], reply[2], reply[3]))
    if status == b"BARRIER":
        return Gated(_text(reply[1]), cast("object", reply[2]) == 1)
    if status == _FENCED:
        raise FencedError(f"{tp} fenced")
    if status == b"NOGROUP":
        raise GroupMissingError(f"the consumer group of {_where(tp)} vanished")
    raise _unexpected("fetch", reply)


def parse_fetch_ack(reply: StatusReply, tp: TopicPartition) -> None:
    """The ``fetch`` script called with count 0 (acks only). FENCED: FencedError.
    NOGROUP passes: with the group gone there is nothing left to ack, and the next
    fetch that reads recreates it."""
    status = reply[0]
    if status == _FENCED:
        raise FencedError(f"partition {_where(tp)} is no longer owned")
    if status != _OK and status != b"NOGROUP":
        raise _unexpected("fetch", reply)


# --------------------------------------------------------------------------- transactional processing


class Committed(NamedTuple):
    """A ``commit_outputs`` that ran: records written, inputs skipped (already acked),
    and each output partition's marker version."""

    written: int
    skipped: int
    versions: list[int]


class CommitRefused(NamedTuple):
    """A ``commit_outputs`` that wrote and acked nothing because of output partition
    ``output``: NOTOPIC (the topic was deleted) or STALE_ROUTE (re-route after a growth)."""

    status: str
    output: int


def parse_commit_outputs(reply: Sequence[object], tp: TopicPartition) -> Committed | CommitRefused:
    """The ``commit_outputs`` script's reply. FENCED (nothing acked or written): FencedError."""
    status = reply[0]
    if status == _OK:
        return Committed(cast(int, reply[1]), cast(int, reply[2]), [int(v) for v in cast(list[int], reply[3])])
    if status == _FENCED:
        raise FencedError(f"partition {_where(tp)} is no longer owned: its outputs were not written")
    if status in (b"NOTOPIC", b"STALE_ROUTE"):
        return CommitRefused(_text(status), int(cast(int, reply[1])))
    raise _unexpected("commit_outputs", reply)


# --------------------------------------------------------------------------- ownership


class Claimed(NamedTuple):
    """A claimed partition."""

    group_created: bool
    trimmed: list[str]  # pending ids XAUTOCLAIM found trimmed away (Redis 7+): dead-letter them


def parse_claim(reply: Sequence[Scalar | list[bytes]], tp: TopicPartition) -> Claimed:
    """The ``claim`` script's reply. BUSY: PartitionBusyError with the owner key's
    remaining time to live (at least 1 ms)."""
    status = reply[0]
    if status == _OK:
        return Claimed(bool(reply[1]), [_text(i) for i in cast("list[bytes]", reply[2])])
    if status == b"BUSY":
        raise PartitionBusyError(f"{_where(tp)} is still held by another member", max(1, int(cast(int, reply[1]))))
    raise _unexpected("claim", reply)


def parse_refresh(reply: StatusReply, tp: TopicPartition) -> None:
    """The ``refresh`` script's reply. FENCED: FencedError; ABSENT: LeaseExpiredError."""
    status = reply[0]
    if status == _OK:
        return
    if status == _FENCED:
        raise FencedError(f"partition {_where(tp)} is no longer owned")
    if status == b"ABSENT":
        raise LeaseExpiredError(f"the owner key of {_where(tp)} expired")
    raise _unexpected("refresh", reply)


def parse_refresh_set(reply: object, token: str, tp: TopicPartition) -> None:
    """The reply of ``SET owner token IFEQ token PX session GET`` (the native refresh,
    same outcomes as the ``refresh`` script): the key's previous value. Ours: extended;
    nil: the key expired (LeaseExpiredError, nothing was created); another token:
    FencedError (nothing was changed)."""
    if reply is None:
        raise LeaseExpiredError(f"the owner key of {_where(tp)} expired")
    if isinstance(reply, bytes | str):
        value = reply.decode() if isinstance(reply, bytes) else reply
        if value == token:
            return
        raise FencedError(f"partition {_where(tp)} is no longer owned")
    raise _unexpected("refresh", reply)


def parse_release(reply: StatusReply, tp: TopicPartition) -> None:
    """The ``release`` script's reply. FENCED (nothing acked or released): FencedError."""
    _fenced_or_ok("release", reply, tp)


def parse_nack(reply: StatusReply, tp: TopicPartition) -> None:
    """The ``nack`` script's reply. FENCED (no attempt recorded): FencedError."""
    _fenced_or_ok("nack", reply, tp)


def _fenced_or_ok(script: str, reply: StatusReply, tp: TopicPartition) -> None:
    status = reply[0]
    if status == _FENCED:
        raise FencedError(f"partition {_where(tp)} is no longer owned")
    if status != _OK:
        raise _unexpected(script, reply)


def parse_seek(reply: Sequence[bytes | list[bytes]], tp: TopicPartition) -> set[str]:
    """The ``seek`` script's reply: the ids it acked. FENCED (nothing changed): FencedError."""
    status = reply[0]
    if status == _OK:
        return {_text(i) for i in cast("list[bytes]", reply[1])}
    if status == _FENCED:
        raise FencedError(f"not sought: this consumer no longer owns {_where(tp)}")
    raise _unexpected("seek", reply)


# --------------------------------------------------------------------------- coordinator


class Assignment(NamedTuple):
    """What the coordinator answered a join or beat."""

    epoch: int
    partitions: int  # the topic's partition count
    created: int  # the partition count when the group first heartbeated
    mine: frozenset[int]  # the partitions assigned to this member
    rearmed: bool  # a coordinator gap was detected and every deadline re-armed


def parse_heartbeat(reply: Sequence[Scalar], topic: str, group: str, member: str) -> Assignment:
    """The ``heartbeat`` script's reply. FENCED (not a member: rejoin): FencedError;
    REPLACED and DELETED (stop for good): FencedInstanceError; UNKNOWN_TOPIC:
    UnknownTopicError."""
    status = reply[0]
    if status == _OK:
        mine = cast(bytes, reply[4])  # the assigned partitions, comma-joined
        return Assignment(int(reply[1]), int(reply[2]), int(reply[3]),
                          frozenset(int(p) for p in mine.split(b",")) if mine else frozenset(),
                          bool(int(reply[5])))
    if status == _FENCED:
        raise FencedError(f"member {member!r} of group {group!r} on {topic!r} is not registered "
                          "(its session expired)")
    if status == b"REPLACED":
        raise FencedInstanceError(f"member {member!r} was taken over by a newer instance; "
                                  "give each running consumer its own member_id")
    if status == b"DELETED":
        raise FencedInstanceError(
            f"group {group!r} on topic {topic!r} was deleted by an operator while this "
            "consumer was a member; it stops instead of recreating the group")
    if status == b"UNKNOWN_TOPIC":
        raise UnknownTopicError(f"unknown topic {topic!r}")
    raise _unexpected("heartbeat", reply)


# --------------------------------------------------------------------------- topics


class TopicCreated(NamedTuple):
    created: bool  # False: it existed already (EXISTS)
    partitions: int
    version: int


def parse_create_topic(reply: Sequence[Scalar]) -> TopicCreated:
    """The ``create_topic`` script's reply (CREATED or EXISTS: both describe the topic)."""
    status = reply[0]
    if status == b"CREATED" or status == b"EXISTS":
        return TopicCreated(status == b"CREATED", int(reply[1]), int(reply[2]))
    raise _unexpected("create_topic", reply)


class PartitionsAltered(NamedTuple):
    old: int
    new: int
    version: int | None  # the topic's new version; None when the count was already ``new`` (SAME)


def parse_alter_partitions(reply: Sequence[Scalar], topic: str, new_count: int) -> PartitionsAltered:
    """The ``alter_partitions`` script's reply. SHRINK: InvalidPartitionsError;
    UNKNOWN: UnknownTopicError."""
    status = reply[0]
    if status == _OK:
        return PartitionsAltered(int(reply[1]), int(reply[2]), int(reply[3]))
    if status == b"SAME":
        return PartitionsAltered(int(reply[1]), int(reply[1]), None)
    if status == b"SHRINK":
        raise InvalidPartitionsError(
            f"topic {topic!r} has {int(reply[1])} partitions; partitions can only grow, not shrink to "
            f"{new_count} (create a new topic to have fewer)")
    if status == b"UNKNOWN":
        raise UnknownTopicError(f"unknown topic {topic!r}")
    raise _unexpected("alter_partitions", reply)


def parse_barrier(reply: Sequence[Scalar], topic: str, partition: int) -> str:
    """The ``barrier`` script's reply: the partition's barrier id. NOTOPIC:
    UnknownTopicError (the partition's marker is gone: the topic was deleted meanwhile)."""
    status = reply[0]
    if status == _OK:
        return _text(reply[1])
    if status == b"NOTOPIC":
        raise UnknownTopicError(f"topic {topic!r} lost partition {partition} while growing (deleted?)")
    raise _unexpected("barrier", reply)


def parse_drained(reply: Sequence[Scalar]) -> bool:
    """The ``drained`` script's reply: True when the group may pass this partition's
    barrier (no gate, or drained up to it), False while it must wait."""
    status = reply[0]
    if status == b"OPEN" or status == b"DRAINED":
        return True
    if status == b"WAIT":
        return False
    raise _unexpected("drained", reply)


def parse_set_topic_config(reply: Sequence[Scalar], topic: str) -> int:
    """The ``set_topic_config`` script's reply: the topic's new version. UNKNOWN:
    UnknownTopicError."""
    status = reply[0]
    if status == _OK:
        return int(reply[1])
    if status == b"UNKNOWN":
        raise UnknownTopicError(f"unknown topic {topic!r}")
    raise _unexpected("set_topic_config", reply)


# --------------------------------------------------------------------------- dead letters


class Requeued(NamedTuple):
    id: str | None  # the new entry's id; None if this dead letter had been requeued before (DONE)


def parse_requeue(reply: Sequence[Scalar]) -> Requeued:
    """The ``requeue`` script's reply (OK, or DONE: requeued before, nothing written)."""
    status = reply[0]
    if status == _OK:
        return Requeued(_text(reply[1]))
    if status == b"DONE":
        return Requeued(None)
    raise _unexpected("requeue", reply)


# --------------------------------------------------------------------------- share groups


class ShareFetched(NamedTuple):
    """What one ``share_fetch`` call acquired on one partition."""

    cursor: bytes  # the XAUTOCLAIM cursor to go on from ("0-0": start over)
    entries: list[StreamEntry]  # re-acquired entries first, then new ones
    counts: list[int]  # the delivery count of each entry, in order
    deleted: list[bytes]  # pending ids trimmed away, dropped by XAUTOCLAIM (Redis 7+)


def parse_share_fetch(reply: Sequence[object], tp: TopicPartition) -> ShareFetched:
    """The ``share_fetch`` script's reply (it answers OK or a Redis error)."""
    if reply[0] == _OK:
        return ShareFetched(cast(bytes, reply[1]), cast("list[StreamEntry]", reply[2]),
                            cast("list[int]", reply[3]), cast("list[bytes]", reply[4]))
    raise _unexpected(f"share_fetch ({_where(tp)})", reply)


def parse_share_settle(reply: StatusReply, tp: TopicPartition, entry_id: str) -> None:
    """The ``share_settle`` script's reply. FENCED (the lock is not this member's, or it
    expired; nothing changed): FencedError."""
    status = reply[0]
    if status == _FENCED:
        raise FencedError(f"{_where(tp)} {entry_id}: the acquisition lock expired or is held by "
                          "another delivery; nothing was changed")
    if status != _OK:
        raise _unexpected("share_settle", reply)


def parse_share_leave(reply: Sequence[Scalar]) -> bool:
    """The ``share_leave`` script's reply: whether the member's consumer name was forgotten."""
    if reply[0] == _OK:
        return bool(reply[1])
    raise _unexpected("share_leave", reply)


# --------------------------------------------------------------------------- transactional producers


def parse_producer_init(reply: Sequence[Scalar]) -> tuple[int, list[tuple[str, int]]]:
    """The ``producer_epoch`` script's "init" reply: the new epoch and the registered
    partitions (topic, partition)."""
    if not isinstance(reply, list) or not reply or not isinstance(reply[0], int):
        raise _unexpected("producer_epoch", reply)
    parts = []
    for raw in reply[1:]:
        topic, _, p = _text(raw).rpartition(":")
        parts.append((topic, int(p)))
    return reply[0], parts


def parse_producer_register(reply: StatusReply, transactional_id: str) -> None:
    """The ``producer_epoch`` script's "register" reply; FENCED: FencedError."""
    if reply[0] == _OK:
        return
    if reply[0] == _FENCED:
        raise FencedError(
            f"a newer producer with transactional_id {transactional_id!r} started (epoch "
            f"{_text(reply[1])}): this one is fenced; nothing was written"
        )
    raise _unexpected("producer_epoch", reply)
