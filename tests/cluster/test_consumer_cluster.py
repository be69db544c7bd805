"""The consumer-group protocol on a 3-master Redis Cluster (docs/architecture.md §2, §11).

The group behaviours themselves run on the cluster as well as on one node through the
``target`` fixture (tests/integration/test_consumer.py); this file checks the premise
that makes that run meaningful: a topic's partitions live on different nodes.
"""

from __future__ import annotations

import pytest
import redis.asyncio

from redcurrent.keys import Keys

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(60)]


async def test_the_topics_partitions_are_spread_over_the_nodes(
    rc: redis.asyncio.RedisCluster, namespace: str
) -> None:
    """The premise of these tests: partitions of one topic land on different nodes."""
    await rc.initialize()
    keys = Keys(namespace)
    nodes = {rc.get_node_from_key(keys.stream("orders", p)).port for p in range(4)}
    assert len(nodes) >= 2

