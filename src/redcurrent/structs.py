"""Values users see: frozen, slotted dataclasses."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec

__all__ = [
    "GroupInfo",
    "InFlightMessage",
    "MemberInfo",
    "Message",
    "Output",
    "PartitionGroupInfo",
    "PartitionInfo",
    "Record",
    "RecordMetadata",
    "ShareGroupInfo",
    "ShareMemberInfo",
    "TopicConfig",
    "TopicInfo",
    "TopicPartition",
]


@dataclass(frozen=True, slots=True)
class TopicPartition:
    """A partition of a topic: ``TopicPartition("orders", 3)``."""

    topic: str
    partition: int


class Record(msgspec.Struct, frozen=True, repr_omit_defaults=True):
    """One record for :meth:`Producer.send_batch`.

    ``Record({"id": 1}, key="user-1", headers={"source": "web"}, ttl=60.0)``

    ``dedup_key``: see :meth:`Producer.send` (docs/exactly-once.md).

    Immutable, compared by value, fields by name (``rec.key``); a copy with one field
    changed is ``msgspec.structs.replace(rec, key=...)`` (or ``rec._replace(key=...)``,
    as on a named tuple; unpacking and indexing work as on one too). A ``msgspec.Struct``, built in C, because users make one per
    record on the hot path: it costs a fifth of a named tuple (docs/performance.md).
    """

    value: Any
    key: str | bytes | None = None
    headers: Mapping[str, str] | None = None
    partition: int | None = None
    ttl: float | None = None
    dedup_key: str | None = None

    def _replace(self, **changes: Any) -> Record:
        """A copy with ``changes`` (the named tuple's spelling of ``msgspec.structs.replace``)."""
        return msgspec.structs.replace(self, **changes)

    # What code written for the named tuple did still works: unpacking, len, indexing.
    def __iter__(self) -> Iterator[Any]:
        return iter(msgspec.structs.astuple(self))

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int | slice) -> Any:
        return msgspec.structs.astuple(self)[index]


class Output(NamedTuple):
    """A record a transactional handler returns (``Consumer.process(handler,
    transactional=True)``): written atomically with the ack of its input, exactly once.

    ``return [Output("invoices", {"order": msg.value["id"]}, key=msg.key)]``

    It lands in the input's partition of ``topic`` when ``topic`` is co-located with the
    input topic (required on a Redis Cluster); on one node another topic is routed by
    ``key``. It carries a header ``rc-input`` naming its input (``topic/partition/id``).
    See docs/exactly-once.md, "Consume → produce".
    """

    topic: str
    value: Any
    key: str | bytes | None = None
    headers: Mapping[str, str] | None = None


class RecordMetadata(NamedTuple):
    """Where a record was stored: its partition and entry id (the offset).

    ``timestamp`` is the record's time in ms since the epoch: the entry id's time,
    Redis's clock when it appended the record (Kafka's LogAppendTime). A named tuple,
    as in aiokafka, because one is made per record on the hot path.
    """

    topic: str
    partition: int
    id: str
    timestamp: int


class Message(NamedTuple):
    """A message handed to a consumer.

    ``key`` comes back as it was sent (``str`` or ``bytes``), ``value`` decoded
    (JSON -> object, bytes untouched), ``timestamp`` in ms since the epoch, and
    ``attempts`` is the delivery count of the pending entry (1 on first delivery).
    ``expires_at`` (ms) is set for messages sent with a TTL. Immutable (a named
    tuple: one is made per message on the hot path).
    """

    topic: str
    partition: int
    id: str
    key: str | bytes | None
    value: Any
    headers: Mapping[str, str]
    timestamp: int
    attempts: int = 1
    expires_at: int | None = None

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class TopicConfig:
    """Per-topic settings kept in the topic's metadata."""

    maxlen: int | None = None
    retention_ms: int | None = None
    ttl_ms: int | None = None
    dead_letter_expired: bool = False
    dedup_window_ms: int = 600_000  # how long a dedup key is remembered (docs/exactly-once.md)


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """One partition of a topic: its length, first and last entry id (None when empty)
    and the memory it uses."""

    partition: int
    length: int
    last_id: str | None
    first_id: str | None = None
    bytes: int | None = None  # memory the stream uses (MEMORY USAGE), None if unknown


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """What :meth:`Admin.describe_topic` returns."""

    name: str
    partitions: int
    version: int
    config: TopicConfig
    partition_info: tuple[PartitionInfo, ...] = field(default_factory=tuple)
    created_at: int = 0
    colocate_with: str | None = None
    """The topic whose partition slots this one shares (``Admin.create_topic(colocate_with=...)``)."""

    @property
    def length(self) -> int:
        """Entries over all partitions."""
        return sum(p.length for p in self.partition_info)


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """A live member of a consumer group."""

    member_id: str
    instance_id: str
    host: str
    pid: int
    last_heartbeat: int
    partitions: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class PartitionGroupInfo:
    """A partition as one group sees it: owner, pending and lag (None when unknown)."""

    partition: int
    owner: str | None
    pending: int
    lag: int | None
    last_delivered_id: str | None


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """What :meth:`Admin.describe_group` returns."""

    topic: str
    group: str
    epoch: int
    members: tuple[MemberInfo, ...]
    assignment: Mapping[str, tuple[int, ...]]
    partitions: tuple[PartitionGroupInfo, ...]

    @property
    def lag(self) -> int:
        return sum(p.lag or 0 for p in self.partitions)

    @property
    def pending(self) -> int:
        return sum(p.pending for p in self.partitions)


@dataclass(frozen=True, slots=True)
class ShareMemberInfo:
    """A member of a share group, as Redis knows it: how many messages it holds
    (``in_flight``, over every partition) and how long since it last acquired or settled one."""

    member_id: str
    in_flight: int
    idle_ms: int


@dataclass(frozen=True, slots=True)
class InFlightMessage:
    """A message a share-group member holds: ``delivery_count`` counts its deliveries
    (1 on the first); ``idle_ms`` is how long since it was acquired or renewed: its lock
    expired once that passes the member's ``lock_timeout``."""

    partition: int
    id: str
    member_id: str
    delivery_count: int
    idle_ms: int


@dataclass(frozen=True, slots=True)
class ShareGroupInfo:
    """What :meth:`Admin.describe_share_group` returns."""

    topic: str
    group: str
    members: tuple[ShareMemberInfo, ...]
    in_flight: tuple[InFlightMessage, ...]  # held by a member (its lock may have expired)
    released: int  # released, available to the next member that asks (within the limit)
    lag: int  # entries not yet delivered to the group, over every partition
