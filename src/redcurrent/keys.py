"""Every Redis key redcurrent uses is formed here, and nowhere else.

Key map (``ns`` is the namespace, default ``rc``; ``{…}`` is a Redis Cluster hash tag)::

    ns:topics                         set    names of topics (registry, no tag)
    ns:{T}:meta                       hash   topic metadata: partitions, version, config
    ns:{T}:groups                     set    groups that ever joined topic T
    ns:{T}:g:G:members                hash   member id -> member info (json)
    ns:{T}:g:G:deadlines              zset   member id -> deadline (ms, Redis clock)
    ns:{T}:g:G:state                  hash   epoch, last_tick, assignment, ...
    ns:{T}:g:G:fenced                 set    member|instance tokens fenced for good (group deleted)
    ns:{T}:dlq:G                      stream dead letters of group G on topic T
    ns:{T:P}                          stream partition P of topic T
    ns:{T:P}:owner:G                  string owner token of partition P for group G (fence)
    ns:{T:P}:pseq:PID                 string idempotent-producer sequence for producer PID
    ns:{T:P}:requeued:G               set    dead-letter ids of G already requeued here
    ns:{T:P}:dedup:D                  string entry id of the record sent with dedup key D to
                                             partition P (PX: the topic's dedup_window)
    ns:{T:P}:pepoch:PID               string the highest epoch of transactional producer PID
                                             seen by partition P (its fence; no expiry)
    ns:producer:{X}:epoch             string transactional_id X's epoch, bumped by each start
    ns:producer:{X}:partitions        set    "T:P" of every partition X ever wrote to (fenced
                                             at each start)
    ns:doorbell:I                     stream wake-up of consumer instance I's idle wait (no tag)
    share:G (a Redis group name)      the Redis consumer group of share group G on every
                                      partition stream; ':' is not allowed in a group name,
                                      so it never collides with consumer group G;
                                      its consumer "~released" holds released entries
    ns:{T:P}:version                  string the partition's marker: exists exactly while the
                                             topic has partition P (the produce script writes
                                             nothing without it); holds the metadata version
                                             as this partition last heard it (growth notification)
    ns:{T:P}:barrier                  hash   the last growth with preserve_key_order: version (the
                                             oldest routing version produce accepts) and id (the
                                             stream's last entry id at that growth)
    ns:{T:P}:gate:G                   string barrier id group G must drain up to before reading
                                             past it; deleted when G lifts it (docs/architecture.md §10)
    ns:{A}:colocated                  set    topics created co-located with topic A (their anchor)

A topic C created with ``colocate_with=A`` (docs/architecture.md "Co-located topics")
has its partition-level keys under ``ns:@C:{A:P}`` instead of ``ns:{C:P}`` (the stream
``ns:@C:{A:P}``, its owner key ``ns:@C:{A:P}:owner:G``, ...): the hash tag is the
anchor's, so partition P of C lives in the slot of partition P of A. ``@`` is in no
name, so these keys never meet another topic's; C's topic-level keys keep ``{C}``.
The anchor comes from the topic's metadata: every reader of metadata tells
:meth:`Keys.learn`, and the partition-level methods below use what it learned.

Topic-level and coordination keys share the tag ``{T}``; partition-level keys share the
tag ``{T:P}``. No script and no MULTI touches two tags, so everything runs unchanged
on Redis Cluster, where different partitions live on different nodes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import ConfigError

__all__ = ["MAX_NAME_LENGTH", "SHARE_RELEASED", "Keys", "share_group_name", "validate_name"]

MAX_NAME_LENGTH = 200
_NAME = re.compile(r"^[A-Za-z0-9._\-]+$")
_NAMESPACE = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")


def validate_name(name: object, what: str = "topic") -> str:
    """Return ``name`` if it is a valid topic or group name, else raise ``ConfigError``.

    Allowed: 1 to 200 characters from ``A-Z a-z 0-9 . _ -`` (Kafka's rule; no ``:``,
    ``{`` or ``}``, which would break key hash tags), not made only of dots (``.``
    and ``..`` read as directories, as Kafka also refuses), and not starting with
    ``-`` (the ``redcurrent`` command would read it as an option).
    ``ConfigError`` is also a ``ValueError``.
    """
    if not isinstance(name, str):
        raise TypeError(f"{what} name must be str, not {type(name).__name__}")
    if not name or len(name) > MAX_NAME_LENGTH:
        raise ConfigError(f"{what} name must be 1 to {MAX_NAME_LENGTH} characters, got {len(name)}")
    if not _NAME.match(name):
        raise ConfigError(
            f"invalid {what} name {name!r}: use only letters, digits, '.', '_' and '-'"
        )
    if not name.strip("."):
        raise ConfigError(f"invalid {what} name {name!r}: a name cannot be made only of dots")
    if name.startswith("-"):
        raise ConfigError(
            f"invalid {what} name {name!r}: a name cannot start with '-' (it reads as an option)"
        )
    return name


# The consumer name that holds released share-group entries until a member acquires one
# (no member id can be it: generated ids have no '~').
SHARE_RELEASED = "~released"


def share_group_name(group: str) -> str:
    """The Redis consumer-group name of share group ``group`` on each partition stream (a
    name, not a key: formed here so every name redcurrent gives Redis has one home).
    ``group`` is validated, so it has no ``:``: ``share:G`` never equals a consumer
    group's name (docs/guides/share-groups.md)."""
    return f"share:{group}"


@dataclass(frozen=True, slots=True)
class Keys:
    """Builds the keys of one namespace. ``Keys("rc").stream("orders", 3)``."""

    namespace: str = "rc"
    # topic -> its anchor, for co-located topics (learned from their metadata)
    anchors: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.namespace, str) or not _NAMESPACE.match(self.namespace):
            raise ValueError(
                f"invalid namespace {self.namespace!r}: 1 to 64 of letters, digits, '.', '_', '-'"
            )

    # -- registry (no tag: touched alone, never inside a script) --
    def topics(self) -> str:
        return f"{self.namespace}:topics"

    # -- topic slot {T} --
    def meta(self, topic: str) -> str:
        return f"{self.namespace}:{{{topic}}}:meta"

    def groups(self, topic: str) -> str:
        return f"{self.namespace}:{{{topic}}}:groups"

    def share_groups(self, topic: str) -> str:
        """The share groups that ever read ``topic`` (a set), so growth creates them on
        the new partitions at 0 as it does the consumer groups."""
        return f"{self.namespace}:{{{topic}}}:share-groups"

    def members(self, topic: str, group: str) -> str:
        return f"{self.namespace}:{{{topic}}}:g:{group}:members"

    def deadlines(self, topic: str, group: str) -> str:
        return f"{self.namespace}:{{{topic}}}:g:{group}:deadlines"

    def group_state(self, topic: str, group: str) -> str:
        return f"{self.namespace}:{{{topic}}}:g:{group}:state"

    def dead_letters(self, topic: str, group: str) -> str:
        return f"{self.namespace}:{{{topic}}}:dlq:{group}"

    def coordinator(self, topic: str, group: str) -> list[str]:
        """KEYS of the coordinator scripts, in their documented order."""
        return [
            self.meta(topic),
            self.groups(topic),
            self.members(topic, group),
            self.deadlines(topic, group),
            self.group_state(topic, group),
            self.group_fence(topic, group),
        ]

    def group_keys(self, topic: str, group: str) -> list[str]:
        """Every topic-slot key of one group."""
        return [
            self.members(topic, group),
            self.deadlines(topic, group),
            self.group_state(topic, group),
            self.dead_letters(topic, group),
        ]

    def colocated(self, topic: str) -> str:
        """The topics created co-located with ``topic`` (a set in the anchor's topic slot)."""
        return f"{self.namespace}:{{{topic}}}:colocated"

    # -- co-location --
    def learn(self, topic: str, anchor: str | None) -> None:
        """Remember the anchor of ``topic`` as its metadata says (None: not co-located).
        Called by whoever reads the metadata (``topics.read_meta``), before any key of
        the topic's partitions is built."""
        if anchor:
            self.anchors[topic] = anchor
        else:
            self.anchors.pop(topic, None)

    def anchor(self, topic: str) -> str | None:
        """The topic ``topic`` is co-located with, if it is (as learned)."""
        return self.anchors.get(topic)

    # -- partition slot {T:P} (or {A:P} for a topic co-located with A) --
    def partition(self, topic: str, partition: int) -> str:
        """The partition's stream key, which every other partition-level key extends."""
        anchor = self.anchors.get(topic)
        if anchor is None:
            return f"{self.namespace}:{{{topic}:{partition}}}"
        return f"{self.namespace}:@{topic}:{{{anchor}:{partition}}}"

    def stream(self, topic: str, partition: int) -> str:
        return self.partition(topic, partition)

    def owner(self, topic: str, partition: int, group: str) -> str:
        return f"{self.partition(topic, partition)}:owner:{group}"

    def producer_seq(self, topic: str, partition: int, producer_id: str) -> str:
        return f"{self.partition(topic, partition)}:pseq:{producer_id}"

    def dedup_prefix(self, topic: str, partition: int) -> str:
        """The produce script appends a record's dedup key to this (in the partition's
        slot): ``dedup_prefix(T, P) + D == dedup(T, P, D)``."""
        return f"{self.partition(topic, partition)}:dedup:"

    def dedup(self, topic: str, partition: int, dedup_key: str) -> str:
        return f"{self.partition(topic, partition)}:dedup:{dedup_key}"

    def producer_fence(self, topic: str, partition: int, producer_id: str) -> str:
        """The highest epoch of a transactional producer that partition P has seen."""
        return f"{self.partition(topic, partition)}:pepoch:{producer_id}"

    # -- transactional producer slot {X} (X a transactional_id) --
    def producer_epoch(self, transactional_id: str) -> str:
        return f"{self.namespace}:producer:{{{transactional_id}}}:epoch"

    def producer_partitions(self, transactional_id: str) -> str:
        return f"{self.namespace}:producer:{{{transactional_id}}}:partitions"

    def topic_version(self, topic: str, partition: int) -> str:
        return f"{self.partition(topic, partition)}:version"

    def barrier(self, topic: str, partition: int) -> str:
        return f"{self.partition(topic, partition)}:barrier"

    def gate(self, topic: str, partition: int, group: str) -> str:
        return f"{self.partition(topic, partition)}:gate:{group}"

    def doorbell(self, instance_id: str) -> str:
        """A consumer instance's private wake-up stream for its idle wait (single server only)."""
        return f"{self.namespace}:doorbell:{instance_id}"

    def group_fence(self, topic: str, group: str) -> str:
        """Members fenced for good (their group was deleted by force): member|instance tokens."""
        return f"{self.namespace}:{{{topic}}}:g:{group}:fenced"

    def requeued(self, topic: str, partition: int, group: str) -> str:
        return f"{self.partition(topic, partition)}:requeued:{group}"

    def partition_keys_pattern(self, topic: str) -> str:
        """SCAN pattern of every partition-slot key of a topic (for delete_topic)."""
        escaped = _glob_escape(topic)
        anchor = self.anchors.get(topic)
        if anchor is None:
            return f"{self.namespace}:{{{escaped}:*}}*"
        return f"{self.namespace}:@{escaped}:{{{_glob_escape(anchor)}:*}}*"


def _glob_escape(name: str) -> str:
    return "".join(f"\\{ch}" if ch in "*?[]\\" else ch for ch in name)
