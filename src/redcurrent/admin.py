"""Admin: topics, groups, offsets and lag — what operators and the CLI use."""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from . import deadletter, offsets, serde, topics
from . import groups as groups_mod
from .config import DEFAULT_NAMESPACE, check_bool, check_ttl_ms
from .connection import Client, Connection, connect
from .errors import (
    ConfigError,
    DecodeError,
    GroupError,
    InvalidPartitionsError,
    TopicError,
    UnknownGroupError,
    UnknownTopicError,
    translate,
)
from .keys import Keys, validate_name
from .lifecycle import Lifecycle
from .retention import safe_floor, trim_partition
from .structs import GroupInfo, Message, PartitionInfo, ShareGroupInfo, TopicInfo

__all__ = ["Admin"]

log = logging.getLogger(__name__)

FENCE_TOKEN = "\x00deleted-group"  # an owner-key value no member token can equal
FENCE_MEMORY_MS = 3600 * 1000  # how long a deleted group's old instances stay fenced


class _Unset:
    """The default of a setting that a call leaves as it is."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()


class Admin(Lifecycle):
    """Create, inspect, grow and delete topics; inspect groups.

    Example::

        async with Admin("redis://localhost:6379") as admin:
            await admin.create_topic("orders", partitions=8)
            info = await admin.describe_topic("orders")
            print(info.partitions, [p.length for p in info.partition_info])
    """

    def __init__(
        self, url: str | None = None, *, redis: Client | None = None, namespace: str = DEFAULT_NAMESPACE
    ) -> None:
        self._url = url
        self._given = redis
        self._keys = Keys(namespace)
        self._conn: Connection | None = None

    def __repr__(self) -> str:
        return f"<Admin namespace={self._keys.namespace!r}>"

    async def start(self) -> None:
        """Connect (``async with`` does it for you)."""
        if self._conn is None:
            self._conn = await connect(self._url, self._given)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _client(self) -> Client:
        if self._conn is None:
            await self.start()
        assert self._conn is not None
        return self._conn.client

    @property
    def connection(self) -> Connection:
        if self._conn is None:
            raise ConfigError("the Admin is not started: use 'async with Admin(...)'")
        return self._conn

    # -- topics --
    async def create_topic(
        self,
        name: str,
        partitions: int = 1,
        *,
        maxlen: int | None = None,
        retention_ms: int | None = None,
        ttl: float | None = None,
        dead_letter_expired: bool = False,
        exist_ok: bool = False,
        dedup_window: float = 600.0,
        colocate_with: str | None = None,
    ) -> TopicInfo:
        """Create a topic with ``partitions`` partitions.

        ``maxlen`` caps each partition (approximate trimming by producers),
        ``retention_ms`` drops entries older than that, ``ttl`` is the default
        message TTL in seconds. ``dedup_window`` (seconds, default 600) is how long a
        record's ``dedup_key`` is remembered: a second send with that key within it
        writes nothing and returns the first one's metadata (docs/exactly-once.md).
        Raises TopicExistsError unless ``exist_ok``.

        ``colocate_with="orders"``: partition p of the new topic lives in the same Redis
        Cluster hash slot as partition p of ``orders`` (same partition count required,
        else InvalidPartitionsError), so one script can write both: what transactional
        processing needs on a cluster. Co-located topics cannot grow, and ``orders``
        cannot be deleted while they exist (docs/architecture.md "Co-located topics")::

            await admin.create_topic("invoices", partitions=8, colocate_with="orders")
        """
        check_bool(exist_ok, "exist_ok")
        check_bool(dead_letter_expired, "dead_letter_expired")
        window_ms = _dedup_window_ms(dedup_window)
        client = await self._client()
        ttl_ms = None if ttl is None else _ttl_ms(ttl)
        await self._call(
            topics.create_topic(
                client, self._keys, name, partitions, maxlen=maxlen, retention_ms=retention_ms,
                ttl_ms=ttl_ms, dead_letter_expired=dead_letter_expired, exist_ok=exist_ok,
                dedup_window_ms=window_ms,
                colocate_with=colocate_with,
            ),
            f"creating topic {name!r}",
        )
        return await self.describe_topic(name)

    async def alter_topic_config(
        self,
        name: str,
        *,
        maxlen: int | _Unset | None = UNSET,
        retention_ms: int | _Unset | None = UNSET,
        ttl: float | _Unset | None = UNSET,
        dead_letter_expired: bool | _Unset = UNSET,
        dedup_window: float | _Unset | None = UNSET,
    ) -> TopicInfo:
        """Change a topic's settings; a setting not passed stays as it is, ``None`` removes it
        (for ``dedup_window``: back to the default, 600 s; dedup keys already stored keep
        the expiry they were written with).

        ``alter_topic_config("orders", maxlen=1_000_000, ttl=None)`` caps each partition
        and stops giving new messages a default TTL. Producers use the new settings from
        their next batch (the version in each partition's marker tells them).
        """
        validate_name(name)
        changes: dict[str, str] = {}
        if not isinstance(maxlen, _Unset):
            changes["maxlen"] = topics.opt_int(maxlen, "maxlen")
        if not isinstance(retention_ms, _Unset):
            changes["retention_ms"] = topics.opt_int(retention_ms, "retention_ms")
        if not isinstance(ttl, _Unset):
            changes["ttl_ms"] = "" if ttl is None else str(_ttl_ms(ttl))
        if not isinstance(dead_letter_expired, _Unset):
            changes["dead_letter_expired"] = "1" if check_bool(dead_letter_expired, "dead_letter_expired") else "0"
        if not isinstance(dedup_window, _Unset):
            changes["dedup_window_ms"] = "" if dedup_window is None else str(_dedup_window_ms(dedup_window))
        if not changes:
            raise ConfigError("alter_topic_config needs at least one setting to change")
        client = await self._client()
        await self._call(topics.set_config(client, self._keys, name, changes), f"altering topic {name!r}")
        return await self.describe_topic(name)

    async def describe_topic(self, name: str) -> TopicInfo:
        """Partition count, config, version and per-partition length and ids."""
        validate_name(name)
        client = await self._client()
        meta = await self._call(topics.read_meta(client, self._keys, name), "describe_topic")
        if meta is None:
            raise UnknownTopicError(f"unknown topic {name!r}")
        pipe = client.pipeline(transaction=False)
        for p in range(meta.partitions):
            stream = self._keys.stream(name, p)
            pipe.xlen(stream)
            pipe.xrevrange(stream, count=1)
            pipe.xrange(stream, count=1)
            pipe.memory_usage(stream, samples=0)  # MEMORY USAGE: None for a missing key
        raw = await self._call(pipe.execute(raise_on_error=False), "describe_topic")
        parts = []
        for p in range(meta.partitions):
            length, last, first, used = raw[4 * p : 4 * p + 4]
            for reply in (length, last, first):
                if isinstance(reply, Exception):
                    raise translate(reply, "describe_topic")
            size = int(used) if isinstance(used, int) else None  # a server may refuse MEMORY
            parts.append(PartitionInfo(p, int(length), _first_id(last), _first_id(first), size))
        return TopicInfo(meta.name, meta.partitions, meta.version, meta.config, tuple(parts), meta.created_at,
                         meta.colocate_with)

    async def read_partition(
        self, topic: str, partition: int, start: str | dt.datetime = "earliest", count: int = 100
    ) -> list[Message]:
        """Up to ``count`` messages of one partition from ``start`` on, without a group.

        Read-only (XRANGE): nothing is delivered, acked or created, so no group's position
        moves. ``start``: ``"earliest"``, an entry id (inclusive) or a ``datetime`` (the
        first entry at or after it). Messages are decoded as a consumer would (``attempts``
        is 0: not delivered); an entry that does not decode comes back with its raw value
        bytes and an ``rc-decode-error`` header saying why. Page on from the id after the
        last one: :func:`redcurrent.next_id`.
        """
        validate_name(topic)
        if isinstance(partition, bool) or not isinstance(partition, int) or partition < 0:
            raise InvalidPartitionsError(f"partition must be an int >= 0, got {partition!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"count must be a positive int, got {count!r}")
        client = await self._client()
        meta = await self._call(topics.read_meta(client, self._keys, topic), "read_partition")
        if meta is None:
            raise UnknownTopicError(f"unknown topic {topic!r}")
        if partition >= meta.partitions:
            raise InvalidPartitionsError(
                f"partition {partition} is out of range: topic {topic!r} has {meta.partitions} partitions"
            )
        if start == "earliest":
            first = "-"
        elif isinstance(start, dt.datetime):
            moment = start if start.tzinfo else start.replace(tzinfo=dt.UTC)
            first = f"{max(0, int(moment.timestamp() * 1000))}-0"
        elif isinstance(start, str):
            first = offsets.check_id(start)
        else:
            raise ConfigError(f"start must be 'earliest', an entry id or a datetime, got {start!r}")
        stream = self._keys.stream(topic, partition)
        raw = await self._call(client.xrange(stream, first, "+", count=count), "read_partition")
        out = []
        for entry_id, fields in raw:
            flat = [x for pair in fields.items() for x in pair]
            try:
                msg = serde.decode_fields(topic, partition, entry_id, 0, flat, None)
            except DecodeError as exc:
                eid = entry_id.decode()
                msg = Message(topic, partition, eid, None, serde.entry_slots(entry_id, 0, flat).value,
                              {"rc-decode-error": str(exc)}, offsets.id_ms(eid), 0)
            out.append(msg)
        return out

    async def list_topics(self) -> list[str]:
        """Names of all topics in this namespace, sorted."""
        client = await self._client()
        names = sorted(n.decode() for n in await self._call(client.smembers(self._keys.topics()), "list_topics"))
        if not names:
            return []
        pipe = client.pipeline(transaction=False)
        for n in names:
            pipe.exists(self._keys.meta(n))
        exists = await self._call(pipe.execute(), "list_topics")
        return [n for n, e in zip(names, exists, strict=True) if e]

    async def alter_partitions(self, name: str, new_count: int, *, preserve_key_order: bool = False) -> TopicInfo:
        """Grow ``name`` to ``new_count`` partitions (never shrinks: InvalidPartitionsError).

        Keys remap (``murmur3(key) % new_count``), between old partitions too. With
        ``preserve_key_order=True`` the growth is a drain barrier: no group handles an
        entry written after it, in any partition, until it has handled every entry
        written before it, in every partition; producers still routing with the old
        count are refused and re-route (docs/architecture.md §10). The price is a pause
        while each group drains what it had not handled yet::

            await admin.alter_partitions("orders", 12, preserve_key_order=True)
        """
        check_bool(preserve_key_order, "preserve_key_order")
        client = await self._client()
        await self._call(
            topics.alter_partitions(client, self._keys, name, new_count, preserve_key_order=preserve_key_order),
            "alter_partitions",
        )
        return await self.describe_topic(name)

    async def delete_topic(self, name: str) -> None:
        """Delete the topic: its metadata, partitions, groups and dead letters.

        A topic that others are co-located with is refused (TopicError naming them):
        delete those first."""
        validate_name(name)
        client = await self._client()
        meta = await self._call(topics.read_meta(client, self._keys, name), "delete_topic")
        if meta is None:
            raise UnknownTopicError(f"unknown topic {name!r}")
        family = await self._call(topics.colocated_topics(client, self._keys, name), "delete_topic")
        if family:
            raise TopicError(f"topic {name!r} has co-located topics ({', '.join(family)}); delete them first")
        k = self._keys
        groups = [g.decode() if isinstance(g, bytes) else g for g in await client.smembers(k.groups(name))]
        topic_keys = [k.meta(name), k.groups(name), k.share_groups(name), k.colocated(name)]
        topic_keys += [x for g in groups for x in k.group_keys(name, g)]
        await self._call(client.delete(*topic_keys), "delete_topic")  # one slot: {topic}
        # Metadata first, then each partition's marker, then its stream: once the marker
        # is gone no producer writes there, so no acked record outlives the topic.
        pipe = client.pipeline(transaction=False)
        for p in range(meta.partitions):
            pipe.delete(k.topic_version(name, p))
            pipe.delete(k.stream(name, p))
            for g in groups:
                pipe.delete(k.owner(name, p, g))
        await self._call(pipe.execute(), "delete_topic")
        # Producer sequences and requeue marks have names we cannot list: scan for them.
        leftovers = [key async for key in client.scan_iter(match=k.partition_keys_pattern(name), count=1000)]
        for key in leftovers:
            await client.delete(key)
        await client.srem(k.topics(), name)
        if meta.colocate_with is not None:
            await client.srem(k.colocated(meta.colocate_with), name)
        log.info("deleted topic %s", name)

    # -- groups --
    async def list_groups(self, topic: str) -> list[str]:
        """Groups that ever joined ``topic``, sorted."""
        validate_name(topic)
        client = await self._client()
        raw = await self._call(client.smembers(self._keys.groups(topic)), "list_groups")
        return sorted(g.decode() for g in raw)

    async def describe_group(self, topic: str, group: str) -> GroupInfo:
        """Epoch, members (id, instance, host, pid, last heartbeat), assignment, and
        per-partition owner, pending count and lag (entries not yet delivered)."""
        validate_name(topic)
        validate_name(group, "group")
        client = await self._client()
        meta = await self._call(topics.read_meta(client, self._keys, topic), "describe_group")
        if meta is None:
            raise UnknownTopicError(f"unknown topic {topic!r}")
        if not await groups_mod.group_exists(client, self._keys, topic, group):
            raise UnknownGroupError(f"unknown group {group!r} on topic {topic!r}")
        info: GroupInfo = await self._call(
            groups_mod.describe_group(client, self._keys, topic, group, meta.partitions), "describe_group"
        )
        return info

    async def describe_share_group(self, topic: str, group: str, *, limit: int = 1000) -> ShareGroupInfo:
        """Share group ``group`` on ``topic`` (:class:`redcurrent.ShareConsumer`): its
        members with how many messages each holds, the messages in flight (at most
        ``limit`` per partition, oldest first) with their holder, delivery count and
        idle time, and its lag. Raises UnknownGroupError if no member ever joined it.

        ``info = await admin.describe_share_group("orders", "mailers")``
        """
        validate_name(topic)
        validate_name(group, "group")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"limit must be a positive int, got {limit!r}")
        client = await self._client()
        meta = await self._call(topics.read_meta(client, self._keys, topic), "describe_share_group")
        if meta is None:
            raise UnknownTopicError(f"unknown topic {topic!r}")
        info: ShareGroupInfo | None = await self._call(
            groups_mod.describe_share_group(client, self._keys, topic, group, meta.partitions, limit),
            "describe_share_group")
        if info is None:
            raise UnknownGroupError(f"unknown share group {group!r} on topic {topic!r}")
        return info

    async def delete_group(self, topic: str, group: str, *, force: bool = False) -> None:
        """Delete ``group`` from ``topic``: its consumer groups on every partition, its
        coordinator state, owner keys and dead letters. An abandoned group holds back
        safe trims; refuses while the group has live members unless ``force``."""
        check_bool(force, "force")
        info = await self.describe_group(topic, group)
        if info.members and not force:
            raise GroupError(f"group {group!r} has {len(info.members)} live member(s); stop them or pass force=True")
        client = await self._client()
        k = self._keys
        fence_ms = await self._fence_members(client, topic, group, info)
        pipe = client.pipeline(transaction=False)
        for p in range(len(info.partitions)):
            # Live members must not recreate what we delete: their partitions' owner keys
            # become a tombstone for one session (fetch, ack and claim all see another
            # owner), and the members themselves are fenced for good by the coordinator.
            if fence_ms:
                pipe.set(k.owner(topic, p, group), FENCE_TOKEN, px=fence_ms)
            else:
                pipe.delete(k.owner(topic, p, group))
            pipe.execute_command("XGROUP", "DESTROY", k.stream(topic, p), group)
            pipe.delete(k.gate(topic, p, group))
        await self._call(pipe.execute(raise_on_error=False), "delete_group")
        await self._call(client.delete(*k.group_keys(topic, group)), "delete_group")
        await client.srem(k.groups(topic), group)

    async def _fence_members(self, client: Client, topic: str, group: str, info: GroupInfo) -> int:
        """Fence the group's live members (their next heartbeat says DELETED and they stop).
        Returns how long their partitions stay fenced, ms (0 if nobody is live)."""
        if not info.members:
            return 0
        raw = await self._call(client.hgetall(self._keys.members(topic, group)), "delete_group")
        tokens, session_ms = [], 0
        for mid, value in raw.items():
            instance, _, info_json = value.decode().partition("|")
            tokens.append(f"{mid.decode()}|{instance}")
            try:
                session_ms = max(session_ms, int(orjson.loads(info_json).get("session_ms", 0)))
            except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
                pass
        fence = self._keys.group_fence(topic, group)
        pipe = client.pipeline(transaction=False)
        pipe.sadd(fence, *tokens)
        pipe.pexpire(fence, FENCE_MEMORY_MS)
        await self._call(pipe.execute(), "delete_group")
        return max(session_ms, 1000)

    async def lag(self, topic: str, group: str) -> dict[int, int]:
        """Per partition, entries not yet delivered to ``group`` (exact on Redis 7+, counted on 6.2)."""
        info = await self.describe_group(topic, group)
        return {p.partition: p.lag or 0 for p in info.partitions}

    # -- offsets and retention --
    async def reset_offsets(
        self,
        topic: str,
        group: str,
        to: str | dt.datetime = "earliest",
        *,
        partition: int | None = None,
        force: bool = False,
        dry_run: bool = False,
    ) -> dict[int, str]:
        """Move ``group``'s position on ``topic`` (all partitions, or one).

        ``to``: ``"earliest"``, ``"latest"``, a ``datetime`` (first entry at or after
        it) or an entry id (that entry is the next one delivered). Pending entries of
        the group are acked first: a reset discards in-flight state, as in Kafka.
        Refuses while the group has live members unless ``force``. Returns, per
        partition, the id the group was set to.
        """
        check_bool(force, "force")
        check_bool(dry_run, "dry_run")
        if partition is not None and (isinstance(partition, bool) or not isinstance(partition, int)):
            raise TypeError(f"partition must be an int or None, not {type(partition).__name__}")
        start = offsets.to_start_id(to)  # validated before anything is read or written
        info = await self.describe_group(topic, group)
        if info.members and not force:
            raise GroupError(
                f"group {group!r} has {len(info.members)} live member(s); stop them first or pass force=True"
            )
        parts = range(len(info.partitions)) if partition is None else [partition]
        if partition is not None and not 0 <= partition < len(info.partitions):
            raise ConfigError(f"partition {partition} out of range 0..{len(info.partitions) - 1}")
        client = await self._client()
        result = {}
        for p in parts:
            if not dry_run:
                await self._call(
                    offsets.reset_partition(client, self._keys.stream(topic, p), group, start), "reset_offsets"
                )
            result[p] = start
        return result

    async def trim(
        self, topic: str, *, safe: bool = True, maxlen: int | None = None, retention_ms: int | None = None
    ) -> int:
        """Trim the topic's partitions; returns how many entries were removed.

        Targets ``maxlen`` / ``retention_ms`` (default: the topic's config). With
        ``safe=True`` (default) nothing a group still needs is removed: no pending
        entry and nothing not yet delivered to every group; with no retention
        configured it removes exactly what every group has acked. ``safe=False``
        applies the retention regardless of groups (unread messages are lost).
        """
        validate_name(topic)
        check_bool(safe, "safe")
        for value, what in ((maxlen, "maxlen"), (retention_ms, "retention_ms")):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"{what} must be a non-negative int or None, got {value!r}")
        client = await self._client()
        meta = await self._call(topics.read_meta(client, self._keys, topic), "trim")
        if meta is None:
            raise UnknownTopicError(f"unknown topic {topic!r}")
        maxlen = maxlen if maxlen is not None else meta.config.maxlen
        retention = retention_ms if retention_ms is not None else meta.config.retention_ms
        min_id = f"{int(time.time() * 1000) - retention}-0" if retention else None
        removed = 0
        for p in range(meta.partitions):
            stream = self._keys.stream(topic, p)
            floor = await self._call(safe_floor(client, stream), "trim") if safe else None
            removed += await self._call(
                trim_partition(client, stream, min_id, maxlen, floor, safe), "trim"
            )
        return removed

    # -- dead letters --
    async def dead_letters(
        self, topic: str, group: str, *, count: int = 100, after: str | None = None
    ) -> list[deadletter.DeadLetterRecord]:
        """A page of ``group``'s dead letters on ``topic``, oldest first, after the id ``after``."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"count must be a positive int, got {count!r}")
        if after is not None:
            offsets.check_id(after)
        client = await self._client()
        return list(await self._call(deadletter.read(client, self._dlq(topic, group), after=after, count=count),
                                     "dead_letters"))

    async def dead_letter(self, topic: str, group: str, dead_letter_id: str) -> deadletter.DeadLetterRecord | None:
        """One dead letter by its id in the dead-letter stream, or None if there is none."""
        offsets.check_id(dead_letter_id)
        client = await self._client()
        raw = await self._call(client.xrange(self._dlq(topic, group), dead_letter_id, dead_letter_id),
                               "dead_letter")
        return deadletter.record(*raw[0]) if raw else None

    async def count_dead_letters(self, topic: str, group: str) -> int:
        client = await self._client()
        return int(await self._call(client.xlen(self._dlq(topic, group)), "count_dead_letters"))

    async def requeue_dead_letters(
        self, topic: str, group: str, ids: Iterable[str] | None = None
    ) -> int:
        """Move dead letters (all, or ``ids``) back to their original partitions, with
        their key and headers; attempts start again. Idempotent. Returns how many moved.

        A dead letter that cannot be put back (its headers are not a JSON object, or its
        message was not kept, as for ``reason="trimmed"``) stays in the dead-letter
        stream and does not stop the others: once every one was tried, ``RequeueError``
        is raised with ``.moved`` (how many moved) and ``.failed`` (dead-letter id ->
        why)::

            try:
                moved = await admin.requeue_dead_letters("orders", "billing")
            except RequeueError as exc:
                moved = exc.moved
                for dead_letter_id, why in exc.failed.items():
                    print("left in place:", dead_letter_id, why)

        Ids not in the dead-letter stream are skipped.
        """
        ids = _id_list(ids) if ids is not None else None
        self._dlq(topic, group)  # validates the names
        client = await self._client()
        await self._call(topics.read_meta(client, self._keys, topic), "requeue_dead_letters")  # its keys' anchor
        return int(await self._call(deadletter.requeue(client, self._keys, topic, group, ids),
                                    "requeue_dead_letters"))

    async def delete_dead_letters(self, topic: str, group: str, ids: Iterable[str]) -> int:
        """Delete dead letters by id (idempotent). Returns how many were deleted now."""
        ids = _id_list(ids)
        if not ids:
            return 0
        client = await self._client()
        return int(await self._call(client.xdel(self._dlq(topic, group), *ids), "delete_dead_letters"))

    async def purge_dead_letters(self, topic: str, group: str) -> int:
        """Delete every dead letter of ``group`` on ``topic``. Returns how many there were."""
        client = await self._client()
        key = self._dlq(topic, group)
        n = int(await client.xlen(key))
        await self._call(client.delete(key), "purge_dead_letters")
        return n

    def _dlq(self, topic: str, group: str) -> str:
        validate_name(topic)
        validate_name(group, "group")
        return self._keys.dead_letters(topic, group)

    async def _call(self, awaitable: Any, what: str) -> Any:
        try:
            return await awaitable
        except (ValueError, TypeError, KeyError):
            raise
        except Exception as exc:
            raise translate(exc, what) from None


def _first_id(entries: Sequence[Sequence[object]]) -> str | None:
    if not entries:
        return None
    eid = entries[0][0]
    return eid.decode() if isinstance(eid, bytes) else str(eid)


def _id_list(ids: object) -> list[str]:
    if isinstance(ids, str | bytes) or not isinstance(ids, Iterable):
        raise TypeError("ids must be a list of entry ids, not a single string")
    out = [i.decode() if isinstance(i, bytes) else i for i in ids]
    for i in out:
        offsets.check_id(i)
    return out


def _ttl_ms(ttl: float) -> int:
    return check_ttl_ms(ttl)


def _dedup_window_ms(window: object) -> int:
    """``dedup_window`` in ms: a finite number of seconds from 1 ms to 30 days."""
    if isinstance(window, bool) or not isinstance(window, int | float) or not math.isfinite(window):
        raise ConfigError(f"dedup_window must be a number of seconds, got {window!r}")
    ms = round(window * 1000)
    if not 1 <= ms <= 30 * 86_400_000:
        raise ConfigError(f"dedup_window must be 0.001 to {30 * 86_400} seconds, got {window!r}")
    return ms
