"""Topic metadata in Redis: create, read, grow, configure, delete (used by Admin and Producer)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from . import scripts
from .connection import Client
from .errors import (
    ConfigError,
    InvalidPartitionsError,
    TopicExistsError,
    UnknownTopicError,
)
from .keys import Keys, share_group_name, validate_name
from .replies import (
    parse_alter_partitions,
    parse_barrier,
    parse_create_topic,
    parse_set_topic_config,
)
from .structs import TopicConfig

__all__ = [
    "TopicMeta",
    "alter_partitions",
    "create_topic",
    "delete_markers",
    "ensure_groups",
    "read_meta",
    "repair_markers",
    "set_markers",
]

log = logging.getLogger(__name__)

MAX_PARTITIONS = 10_000
DEFAULT_DEDUP_WINDOW_MS = 600_000  # Admin.create_topic(dedup_window=600.0)


@dataclass(frozen=True, slots=True)
class TopicMeta:
    """A topic's metadata as stored in its meta hash."""

    name: str
    partitions: int
    version: int
    config: TopicConfig
    created_at: int = 0
    colocate_with: str | None = None  # the anchor: partition p shares its slot with the anchor's p


def check_partitions(partitions: object) -> int:
    if isinstance(partitions, bool) or not isinstance(partitions, int):
        raise TypeError(f"partitions must be an int, not {type(partitions).__name__}")
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise InvalidPartitionsError(f"partitions must be 1 to {MAX_PARTITIONS}, got {partitions}")
    return partitions


def opt_int(value: object, what: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{what} must be a positive int or None, got {value!r}")
    return str(value)


def parse_meta(name: str, raw: Mapping[Any, Any]) -> TopicMeta | None:
    if not raw or b"partitions" not in raw:
        return None

    def num(field: bytes) -> int | None:
        v = raw.get(field)
        return int(v) if v else None

    config = TopicConfig(
        maxlen=num(b"maxlen"),
        retention_ms=num(b"retention_ms"),
        ttl_ms=num(b"ttl_ms"),
        dead_letter_expired=raw.get(b"dead_letter_expired") == b"1",
        dedup_window_ms=num(b"dedup_window_ms") or DEFAULT_DEDUP_WINDOW_MS,
    )
    anchor = raw.get(b"colocate_with")
    return TopicMeta(name, int(raw[b"partitions"]), int(raw.get(b"version", 0)), config,
                     num(b"created_ms") or 0, anchor.decode() if anchor else None)


def learned(keys: Keys, meta: TopicMeta | None) -> TopicMeta | None:
    """Tell ``keys`` where the topic's partitions live (its anchor, if co-located);
    every reader of metadata passes it through here before building partition keys."""
    if meta is not None:
        keys.learn(meta.name, meta.colocate_with)
    return meta


async def read_meta(client: Client, keys: Keys, topic: str) -> TopicMeta | None:
    """The topic's metadata, or None if the topic does not exist."""
    raw = await client.hgetall(keys.meta(topic))
    return learned(keys, parse_meta(topic, raw))


async def colocation_anchor(client: Client, keys: Keys, name: str, partitions: int, colocate_with: str) -> str:
    """The anchor of a topic created with ``colocate_with``: that topic, or its own
    anchor if it is co-located itself (so every topic of a family shares one slot per
    partition). The partition counts must match (docs/architecture.md "Co-located topics")."""
    validate_name(colocate_with, "colocate_with topic")
    if colocate_with == name:
        raise ConfigError(f"topic {name!r} cannot be co-located with itself")
    other = await read_meta(client, keys, colocate_with)
    if other is None:
        raise UnknownTopicError(f"cannot co-locate {name!r} with {colocate_with!r}: no such topic")
    if other.partitions != partitions:
        raise InvalidPartitionsError(
            f"a topic co-located with {colocate_with!r} needs its partition count: "
            f"{colocate_with!r} has {other.partitions}, {name!r} asks for {partitions}"
        )
    return other.colocate_with or colocate_with


async def colocated_topics(client: Client, keys: Keys, anchor: str) -> list[str]:
    """The live topics co-located with ``anchor`` (names left by a crash are dropped)."""
    names = sorted(_text(n) for n in await client.smembers(keys.colocated(anchor)))
    live = []
    for n in names:
        meta = await read_meta(client, keys, n)
        if meta is not None and meta.colocate_with == anchor:
            live.append(n)
    return live


async def create_topic(
    client: Client,
    keys: Keys,
    name: str,
    partitions: int,
    *,
    maxlen: int | None = None,
    retention_ms: int | None = None,
    ttl_ms: int | None = None,
    dead_letter_expired: bool = False,
    exist_ok: bool = False,
    dedup_window_ms: int = DEFAULT_DEDUP_WINDOW_MS,
    colocate_with: str | None = None,
) -> TopicMeta:
    """Create the topic; TopicExistsError if it exists (unless ``exist_ok``).
    ``colocate_with``: the topic whose partition slots this one shares."""
    validate_name(name)
    check_partitions(partitions)
    anchor = None
    if colocate_with is not None:
        anchor = await colocation_anchor(client, keys, name, partitions, colocate_with)
        # Registered before the topic exists: the anchor's growth and deletion look here.
        await client.sadd(keys.colocated(anchor), name)
        if not await client.exists(keys.meta(name)):
            keys.learn(name, anchor)  # its markers go in the anchor's slots
    args = [
        str(partitions),
        opt_int(maxlen, "maxlen"),
        opt_int(retention_ms, "retention_ms"),
        opt_int(ttl_ms, "ttl_ms"),
        "1" if dead_letter_expired else "0",
        str(dedup_window_ms),
        anchor or "",
    ]
    # The registry has no hash tag, so it is written outside the script; list_topics
    # checks every name against its meta hash, so a crash between the two is harmless.
    await client.sadd(keys.topics(), name)
    wrote_markers = created = False
    if not await client.exists(keys.meta(name)):
        wrote_markers = True
        # Partition markers first, then the meta hash: whoever sees the metadata can
        # write to every partition it names (the produce script checks the marker).
        await set_markers(client, keys, name, range(partitions), 1)
        reply = await scripts.run(client, scripts.script("create_topic"), [keys.meta(name)], args)
        created = parse_create_topic(reply).created
    meta = await read_meta(client, keys, name)
    if meta is None:  # deleted between the two calls
        raise UnknownTopicError(f"topic {name!r} was deleted while being created")
    if not created:
        if wrote_markers and meta.partitions < partitions:
            # We lost a creation race and wrote markers for partitions the topic lacks.
            await delete_markers(client, keys, name, range(meta.partitions, partitions))
        if not exist_ok:
            raise TopicExistsError(f"topic {name!r} already exists with {meta.partitions} partitions")
    else:
        log.info("created topic %s with %d partitions", name, partitions)
        if anchor is not None:
            await _recheck_anchor(client, keys, meta, anchor)
    return meta


async def _recheck_anchor(client: Client, keys: Keys, meta: TopicMeta, anchor: str) -> None:
    """A growth or deletion of the anchor that ran while this topic was being created
    did not see it yet: if the anchor no longer matches, take the new topic back."""
    now = await read_meta(client, keys, anchor)
    if now is not None and now.partitions == meta.partitions:
        return
    await _delete_new_topic(client, keys, meta)
    raise InvalidPartitionsError(
        f"topic {anchor!r} changed while {meta.name!r} was being co-located with it; nothing was created"
    )


async def _delete_new_topic(client: Client, keys: Keys, meta: TopicMeta) -> None:
    await client.delete(keys.meta(meta.name))
    await delete_markers(client, keys, meta.name, range(meta.partitions))
    if meta.colocate_with:
        await client.srem(keys.colocated(meta.colocate_with), meta.name)


async def set_config(client: Client, keys: Keys, name: str, changes: Mapping[str, str]) -> TopicMeta:
    """Change per-topic settings (field -> value; "" removes the field) and bump the
    metadata version; the partitions' markers carry the new version, so producers
    re-read the topic at their next batch (growth notification)."""
    args = [x for pair in changes.items() for x in pair]
    reply = await scripts.run(client, scripts.script("set_topic_config"), [keys.meta(name)], args)
    version = parse_set_topic_config(reply, name)
    meta = await read_meta(client, keys, name)
    if meta is None:
        raise UnknownTopicError(f"topic {name!r} was deleted while being altered")
    await notify_version(client, keys, name, meta.partitions, version)
    return meta


async def alter_partitions(
    client: Client, keys: Keys, name: str, new_count: int, *, preserve_key_order: bool = False
) -> TopicMeta:
    """Grow the topic to ``new_count`` partitions and create every known group on the new ones.

    ``preserve_key_order``: close every partition behind a drain barrier first
    (docs/architecture.md §10), so no group reads what is written after the growth
    before it has handled everything written before it, in every partition."""
    validate_name(name)
    check_partitions(new_count)
    before = await read_meta(client, keys, name)
    if before is None:
        raise UnknownTopicError(f"unknown topic {name!r}")
    await refuse_colocated_growth(client, keys, before)
    added = range(before.partitions, new_count)
    barrier = preserve_key_order and new_count > before.partitions
    groups = [_text(g) for g in await client.smembers(keys.groups(name))] if barrier else []
    # Markers of the new partitions before the metadata names them (see create_topic);
    # with a barrier, every partition is closed before any producer can route with the
    # new count: an entry it writes then is after every partition's barrier id.
    if barrier:
        await close_partitions(client, keys, name, before.partitions, new_count, before.version + 1, groups)
    else:
        await set_markers(client, keys, name, added, before.version + 1)
    reply = await scripts.run(client, scripts.script("alter_partitions"), [keys.meta(name)], [new_count])
    try:
        altered = parse_alter_partitions(reply, name, new_count)
    except UnknownTopicError:  # deleted meanwhile: take back what we wrote
        await delete_markers(client, keys, name, added)
        raise
    if altered.version is not None:
        old = altered.old
        if not barrier:
            groups = [_text(g) for g in await client.smembers(keys.groups(name))]
        groups += [share_group_name(_text(g)) for g in await client.smembers(keys.share_groups(name))]
        # Groups (consumer and share groups) on new partitions start at 0, so nothing
        # written before their members noticed the growth is skipped (docs/architecture.md §10).
        await ensure_groups(client, keys, name, range(old, new_count), groups, "0")
        await notify_version(client, keys, name, new_count, altered.version)
        log.info("grew topic %s from %d to %d partitions%s", name, old, new_count,
                 " behind a drain barrier" if barrier else "")
    meta = await read_meta(client, keys, name)
    if meta is None:
        raise UnknownTopicError(f"unknown topic {name!r}")
    return meta


async def refuse_colocated_growth(client: Client, keys: Keys, meta: TopicMeta) -> None:
    """Co-located topics keep one partition count: growing one of them alone would
    break the slot sharing, and growing both at once cannot be atomic across two
    topics on a cluster, so the growth is refused (docs/architecture.md "Co-located topics")."""
    if meta.colocate_with is not None:
        raise InvalidPartitionsError(
            f"topic {meta.name!r} is co-located with {meta.colocate_with!r}: co-located topics "
            "cannot grow; create a new family of topics with more partitions instead"
        )
    family = await colocated_topics(client, keys, meta.name)
    if family:
        raise InvalidPartitionsError(
            f"topic {meta.name!r} has co-located topics ({', '.join(family)}): co-located topics "
            "cannot grow; create a new family of topics with more partitions instead"
        )


async def close_partitions(
    client: Client, keys: Keys, name: str, old: int, new: int, version: int, groups: Sequence[str]
) -> None:
    """The drain barrier of a growth from ``old`` to ``new`` partitions: one ``barrier``
    script per partition, in its own slot (one round trip per node). Existing partitions
    first: their marker takes ``version`` (produce then refuses batches routed before it)
    and their last entry id becomes the barrier id of every group's gate; then the new
    ones (created, barrier id 0-0), before the metadata names them."""
    script = scripts.script("barrier")
    for parts, mode in ((range(old), "xx"), (range(old, new), "")):
        calls = [
            scripts.Call(script, [keys.stream(name, p), keys.topic_version(name, p), keys.barrier(name, p),
                                  *(keys.gate(name, p, g) for g in groups)], [version, mode])
            for p in parts
        ]
        for p, reply in zip(parts, await scripts.execute_calls(client, calls), strict=True):
            if isinstance(reply, BaseException):
                raise reply
            parse_barrier(reply, name, p)


async def set_markers(client: Client, keys: Keys, topic: str, partitions: Sequence[int], version: int) -> None:
    """Create the marker (the topic-version key) of each partition: the produce script
    writes only into a partition whose marker exists."""
    if not partitions:
        return
    pipe = client.pipeline(transaction=False)
    for p in partitions:
        pipe.set(keys.topic_version(topic, p), version)
    await pipe.execute()


async def delete_markers(client: Client, keys: Keys, topic: str, partitions: Sequence[int]) -> None:
    if not partitions:
        return
    pipe = client.pipeline(transaction=False)
    for p in partitions:
        pipe.delete(keys.topic_version(topic, p))
    await pipe.execute()


async def repair_markers(client: Client, keys: Keys, meta: TopicMeta) -> int:
    """Create the markers a live topic lacks (a topic made by an older redcurrent, or a
    race with a concurrent create); returns how many were missing.

    Written first, then checked against the metadata: if the topic was deleted or
    recreated smaller meanwhile, the markers it no longer has are taken back, and
    delete_topic removes markers only after the metadata, so none outlives its topic.
    """
    pipe = client.pipeline(transaction=False)
    for p in range(meta.partitions):
        pipe.set(keys.topic_version(meta.name, p), meta.version, nx=True)
    made = [p for p, ok in enumerate(await pipe.execute()) if ok]
    if not made:
        return 0
    now = await read_meta(client, keys, meta.name)
    if now is None or now.created_at != meta.created_at:
        keep = now.partitions if now is not None else 0
        await delete_markers(client, keys, meta.name, [p for p in made if p >= keep])
        return 0
    log.warning("topic %s lacked %d partition marker(s); restored them", meta.name, len(made))
    return len(made)


async def notify_version(client: Client, keys: Keys, topic: str, partitions: int, version: int) -> None:
    """Leave the new metadata version in every partition's marker: the produce script
    returns it, so producers learn of growth on their next batch, on one node or a
    cluster. ``XX``: a marker is never created here, so none survives a concurrent delete."""
    pipe = client.pipeline(transaction=False)
    for p in range(partitions):
        pipe.set(keys.topic_version(topic, p), version, xx=True)
    await pipe.execute()


async def ensure_groups(
    client: Client, keys: Keys, topic: str, partitions: Any, groups: list[str], start: str
) -> None:
    """XGROUP CREATE ... MKSTREAM for each (partition, group); existing groups are kept."""
    pairs = [(p, g) for p in partitions for g in groups]
    if not pairs:
        return
    pipe = client.pipeline(transaction=False)
    for p, g in pairs:
        pipe.execute_command("XGROUP", "CREATE", keys.stream(topic, p), g, start, "MKSTREAM")
    for result in await pipe.execute(raise_on_error=False):
        if isinstance(result, ResponseError) and "BUSYGROUP" not in str(result):
            raise result
        if isinstance(result, Exception) and not isinstance(result, ResponseError):
            raise result


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
