"""Topics through Admin, on a real single node and a real 3-master cluster.

Each test runs twice (``target``: single / cluster) in its own namespace.
"""

from __future__ import annotations

import pytest
import redis.asyncio
from support.eventually import eventually
from support.servers import AsyncClient, Target

from redcurrent import (
    Admin,
    ConfigError,
    InvalidPartitionsError,
    PartitionInfo,
    Producer,
    RedcurrentError,
    TopicConfig,
    TopicExistsError,
    TopicInfo,
    UnknownTopicError,
)
from redcurrent.keys import Keys


async def namespace_keys(client: AsyncClient, namespace: str) -> set[bytes]:
    """Every key of the namespace (on a cluster, SCAN visits every primary)."""
    return {k async for k in client.scan_iter(match=f"{namespace}:*", count=1000)}


# ----------------------------------------------------------------------------- create / describe


async def test_create_topic_then_describe_it(admin: Admin) -> None:
    info = await admin.create_topic("orders", partitions=4, maxlen=1000)
    assert isinstance(info, TopicInfo)
    assert info.name == "orders"
    assert info.partitions == 4
    assert info.version == 1
    assert info.config == TopicConfig(maxlen=1000)
    assert info.partition_info == tuple(PartitionInfo(p, 0, None, None) for p in range(4))
    assert info.length == 0
    assert info.created_at > 1_600_000_000_000  # ms since the epoch, by Redis's clock
    assert await admin.describe_topic("orders") == info


async def test_describe_reports_length_and_last_id_per_partition(
    admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    await admin.create_topic("events", partitions=3)
    keys = Keys(namespace)
    ids: dict[int, list[bytes]] = {0: [], 1: [], 2: []}
    for p, count in ((0, 3), (2, 5)):
        for i in range(count):
            ids[p].append(await target_client.xadd(keys.stream("events", p), {"f": "1", "i": i}))
    info = await admin.describe_topic("events")
    assert info.partitions == 3
    assert [p.length for p in info.partition_info] == [3, 0, 5]
    assert [p.last_id for p in info.partition_info] == [
        ids[0][-1].decode(),
        None,
        ids[2][-1].decode(),
    ]
    assert [p.first_id for p in info.partition_info] == [
        ids[0][0].decode(),
        None,
        ids[2][0].decode(),
    ]
    assert info.length == 8


async def test_config_is_stored_with_the_topic(admin: Admin) -> None:
    info = await admin.create_topic(
        "cfg", partitions=2, maxlen=50, retention_ms=60_000, ttl=1.5, dead_letter_expired=True
    )
    assert info.config == TopicConfig(
        maxlen=50, retention_ms=60_000, ttl_ms=1500, dead_letter_expired=True
    )
    plain = await admin.create_topic("plain")
    assert plain.partitions == 1 and plain.config == TopicConfig()


async def test_metadata_lives_in_redis_with_a_version(
    admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    await admin.create_topic("m", partitions=2, maxlen=10)
    raw = await target_client.hgetall(Keys(namespace).meta("m"))
    assert raw[b"partitions"] == b"2"
    assert raw[b"version"] == b"1"
    assert raw[b"maxlen"] == b"10"


async def test_create_existing_topic_raises_topic_exists(admin: Admin) -> None:
    await admin.create_topic("dup", partitions=2)
    with pytest.raises(TopicExistsError, match=r"topic 'dup' already exists with 2 partitions"):
        await admin.create_topic("dup", partitions=2)
    with pytest.raises(TopicExistsError):
        await admin.create_topic("dup", partitions=5)
    assert (await admin.describe_topic("dup")).partitions == 2


async def test_create_with_exist_ok_returns_the_existing_topic(admin: Admin) -> None:
    first = await admin.create_topic("dup", partitions=2, maxlen=7)
    again = await admin.create_topic("dup", partitions=9, exist_ok=True)
    assert again == first  # the existing topic, untouched
    assert again.partitions == 2 and again.config.maxlen == 7 and again.version == 1


# ----------------------------------------------------------------------------- list / delete


async def test_list_topics_sorted_and_only_existing(admin: Admin) -> None:
    assert await admin.list_topics() == []
    for name in ("b", "a", "c-1", "A.2"):
        await admin.create_topic(name)
    assert await admin.list_topics() == sorted(["b", "a", "c-1", "A.2"])
    await admin.delete_topic("b")
    assert await admin.list_topics() == sorted(["a", "c-1", "A.2"])


async def test_delete_topic_removes_metadata_and_partitions(
    admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    keys = Keys(namespace)
    await admin.create_topic("gone", partitions=3)
    for p in range(3):
        await target_client.xadd(keys.stream("gone", p), {"f": "1"})
    await admin.delete_topic("gone")
    with pytest.raises(UnknownTopicError):
        await admin.describe_topic("gone")
    assert await admin.list_topics() == []
    assert await target_client.exists(keys.meta("gone")) == 0
    for p in range(3):
        assert await target_client.exists(keys.stream("gone", p)) == 0
    # and the name is free again, as a new topic at version 1
    info = await admin.create_topic("gone", partitions=1)
    assert info.version == 1 and info.length == 0


async def test_delete_topic_leaves_no_key_of_the_topic(
    target: Target, admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    await admin.create_topic("gone", partitions=3)
    async with Producer(target.url, namespace=namespace) as producer:
        await producer.send_batch("gone", [{"i": i} for i in range(30)])
        for p in range(3):
            await producer.send("gone", {"p": p}, partition=p)
    await admin.delete_topic("gone")
    left = {k for k in await namespace_keys(target_client, namespace) if b"{gone" in k}
    assert left == set()


# ----------------------------------------------------------------------------- alter


async def test_alter_partitions_grows_and_bumps_version(admin: Admin) -> None:
    await admin.create_topic("grow", partitions=2)
    info = await admin.alter_partitions("grow", 5)
    assert info.partitions == 5
    assert info.version == 2
    assert [p.partition for p in info.partition_info] == [0, 1, 2, 3, 4]
    info = await admin.alter_partitions("grow", 6)
    assert (info.partitions, info.version) == (6, 3)
    assert await admin.describe_topic("grow") == info


async def test_alter_partitions_to_same_count_is_a_no_op(admin: Admin) -> None:
    created = await admin.create_topic("same", partitions=3)
    info = await admin.alter_partitions("same", 3)
    assert info == created
    assert info.version == 1


async def test_shrinking_partitions_is_rejected(admin: Admin) -> None:
    await admin.create_topic("shrink", partitions=4)
    with pytest.raises(
        InvalidPartitionsError, match="has 4 partitions; partitions can only grow"
    ) as err:
        await admin.alter_partitions("shrink", 2)
    assert isinstance(err.value, ValueError) and isinstance(err.value, RedcurrentError)
    info = await admin.describe_topic("shrink")
    assert (info.partitions, info.version) == (4, 1)


async def test_alter_creates_known_groups_on_new_partitions_at_zero(
    admin: Admin, target_client: AsyncClient, namespace: str
) -> None:
    """docs/architecture.md §10: nothing written before consumers noticed the growth is skipped."""
    keys = Keys(namespace)
    await admin.create_topic("g", partitions=1)
    await target_client.sadd(keys.groups("g"), "billing")
    await admin.alter_partitions("g", 3)
    for p in (1, 2):
        groups = await target_client.xinfo_groups(keys.stream("g", p))
        assert [(g["name"], g["last-delivered-id"]) for g in groups] == [(b"billing", b"0-0")]


# ----------------------------------------------------------------------------- bad arguments


BAD_NAMES = ["", "a:b", "{t}", "with space", "x" * 201, "ünï"]


@pytest.mark.parametrize("bad", BAD_NAMES)
async def test_invalid_topic_names_raise_value_error(admin: Admin, bad: str) -> None:
    with pytest.raises(ValueError, match="topic name"):
        await admin.create_topic(bad)
    with pytest.raises(ValueError, match="topic name"):
        await admin.describe_topic(bad)
    with pytest.raises(ValueError, match="topic name"):
        await admin.alter_partitions(bad, 2)
    with pytest.raises(ValueError, match="topic name"):
        await admin.delete_topic(bad)
    assert await admin.list_topics() == []


async def test_non_str_topic_name_raises_type_error(admin: Admin) -> None:
    with pytest.raises(TypeError, match="topic name must be str"):
        await admin.create_topic(b"orders")  # type: ignore[arg-type]


async def test_unknown_topic_raises_unknown_topic_error(admin: Admin) -> None:
    with pytest.raises(UnknownTopicError, match="unknown topic 'nope'"):
        await admin.describe_topic("nope")
    with pytest.raises(UnknownTopicError, match="unknown topic 'nope'"):
        await admin.alter_partitions("nope", 3)
    with pytest.raises(UnknownTopicError, match="unknown topic 'nope'"):
        await admin.delete_topic("nope")
    with pytest.raises(KeyError):  # UnknownTopicError is also a KeyError
        await admin.describe_topic("nope")
    assert await admin.list_topics() == []


@pytest.mark.parametrize("bad", [0, -1, -100, 10_001])
async def test_partition_count_out_of_range_is_rejected(admin: Admin, bad: int) -> None:
    with pytest.raises(InvalidPartitionsError, match="partitions must be 1 to 10000"):
        await admin.create_topic("t", partitions=bad)
    assert await admin.list_topics() == []
    await admin.create_topic("t", partitions=2)
    with pytest.raises(InvalidPartitionsError, match="partitions must be 1 to 10000"):
        await admin.alter_partitions("t", bad)
    assert (await admin.describe_topic("t")).partitions == 2


@pytest.mark.parametrize("bad", ["3", 2.0, True, None])
async def test_partition_count_of_wrong_type_raises_type_error(admin: Admin, bad: object) -> None:
    with pytest.raises(TypeError, match="partitions must be an int"):
        await admin.create_topic("t", partitions=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -5, True, 1.5])
async def test_invalid_maxlen_is_a_config_error(admin: Admin, bad: object) -> None:
    with pytest.raises(ConfigError, match="maxlen must be a positive int or None"):
        await admin.create_topic("t", maxlen=bad)  # type: ignore[arg-type]
    assert await admin.list_topics() == []


# ----------------------------------------------------------------------------- namespaces, lifecycle


async def test_namespaces_isolate_topics(target: Target, namespace: str) -> None:
    other = namespace + "b"
    async with Admin(target.url, namespace=namespace) as a, Admin(target.url, namespace=other) as b:
        await a.create_topic("shared-name", partitions=2)
        assert await b.list_topics() == []
        with pytest.raises(UnknownTopicError):
            await b.describe_topic("shared-name")
        await b.create_topic("shared-name", partitions=5)  # no TopicExistsError across namespaces
        assert (await a.describe_topic("shared-name")).partitions == 2
        assert (await b.describe_topic("shared-name")).partitions == 5
        await b.delete_topic("shared-name")
        assert await a.list_topics() == ["shared-name"]


async def test_admin_with_a_client_passed_in_leaves_it_open(
    target_client: AsyncClient, namespace: str
) -> None:
    async with Admin(redis=target_client, namespace=namespace) as admin:
        await admin.create_topic("given", partitions=2)
        assert admin.connection.client is target_client
        assert admin.connection.caps.is_cluster == isinstance(
            target_client, redis.asyncio.RedisCluster
        )
    assert await target_client.ping() is True  # not ours to close
    async with Admin(redis=target_client, namespace=namespace) as admin:
        assert await admin.list_topics() == ["given"]


async def test_admin_works_without_async_with(target: Target, namespace: str) -> None:
    admin = Admin(target.url, namespace=namespace)
    try:
        await admin.create_topic("lazy")  # connects on first use
        assert await admin.list_topics() == ["lazy"]
    finally:
        await admin.close()
    await admin.close()  # idempotent


async def test_admin_rejects_url_and_client_together(
    target: Target, target_client: AsyncClient
) -> None:
    with pytest.raises(ConfigError, match="either url= or redis="):
        async with Admin(target.url, redis=target_client):
            pass


async def test_admin_rejects_a_decoding_client(target: Target) -> None:
    client = target.client(decode_responses=True)
    try:
        with pytest.raises(ConfigError, match="decode_responses=False"):
            async with Admin(redis=client):
                pass
    finally:
        await client.aclose()


def test_admin_repr_has_namespace_not_url() -> None:
    admin = Admin("redis://user:secret@localhost:1/0", namespace="app")
    assert repr(admin) == "<Admin namespace='app'>"


# ----------------------------------------------------------------------------- alter config


async def test_alter_topic_config_changes_what_is_passed_and_producers_follow(
    admin: Admin, target: Target, namespace: str
) -> None:
    await admin.create_topic("cfg", partitions=2, ttl=60.0, maxlen=500)
    async with Producer(target.url, namespace=namespace, metadata_max_age=60) as producer:
        await producer.send("cfg", {"n": 1})
        before = await admin.describe_topic("cfg")
        info = await admin.alter_topic_config("cfg", ttl=None, retention_ms=3_600_000)
        assert info.config == TopicConfig(maxlen=500, retention_ms=3_600_000, ttl_ms=None)  # maxlen kept
        assert info.version == before.version + 1
        await producer.send("cfg", {"n": 2})  # reads the new version from the partition's marker
        async def follows() -> bool:
            await producer.send("cfg", {"n": 3})
            return producer._meta["cfg"].config.ttl_ms is None
        await eventually(follows, timeout=5)
    info = await admin.alter_topic_config("cfg", maxlen=None, dead_letter_expired=True)
    assert info.config == TopicConfig(maxlen=None, retention_ms=3_600_000, ttl_ms=None, dead_letter_expired=True)


async def test_alter_topic_config_refuses_bad_input(admin: Admin) -> None:
    await admin.create_topic("cfg", partitions=1)
    with pytest.raises(ConfigError):
        await admin.alter_topic_config("cfg")  # nothing to change
    with pytest.raises(ConfigError):
        await admin.alter_topic_config("cfg", maxlen=0)
    with pytest.raises(ConfigError):
        await admin.alter_topic_config("cfg", ttl=-1.0)
    with pytest.raises(ConfigError):
        await admin.alter_topic_config("cfg", dead_letter_expired="yes")  # type: ignore[arg-type]
    with pytest.raises(UnknownTopicError):
        await admin.alter_topic_config("missing", maxlen=10)
    assert (await admin.describe_topic("cfg")).version == 1  # nothing was written
