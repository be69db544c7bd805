"""The consumer-group protocol on a 3-master Redis Cluster (docs/architecture.md §2, §11).

The same behaviours as the single-node suite (``support.group_scenarios``), where the
partitions of a topic live on different nodes and the coordinator keys on one of them.
"""

from __future__ import annotations

import pytest
import redis.asyncio
from support import group_scenarios as scenarios
from support.servers import Cluster

from redcurrent.keys import Keys

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(60)]


async def test_the_topics_partitions_are_spread_over_the_nodes(
    rc: redis.asyncio.RedisCluster, namespace: str
) -> None:
    """The premise of these tests: partitions of one topic land on different nodes."""
    await rc.initialize()
    keys = Keys(namespace)
    nodes = {rc.get_node_from_key(keys.stream(scenarios.TOPIC, p)).port for p in range(4)}
    assert len(nodes) >= 2


async def test_two_consumers_get_every_message_once_in_per_key_order(
    cluster: Cluster, rc: redis.asyncio.RedisCluster, namespace: str
) -> None:
    await scenarios.every_message_once_in_per_key_order(cluster.url, namespace, rc)


async def test_graceful_stop_moves_partitions_to_the_survivor_within_2s_without_duplicates(
    cluster: Cluster, rc: redis.asyncio.RedisCluster, namespace: str
) -> None:
    await scenarios.graceful_stop_hands_over_within_2s_without_duplicates(
        cluster.url, namespace, rc
    )


async def test_growth_bumps_the_epoch_once_and_new_partitions_are_consumed_from_their_first_entry(
    cluster: Cluster, rc: redis.asyncio.RedisCluster, namespace: str
) -> None:
    await scenarios.growth_bumps_the_epoch_once_and_new_partitions_are_consumed_from_the_start(
        cluster.url, namespace, rc
    )
