"""A fleet: 100 members x 1,024 partitions of one group, over 4 processes (docs/scaling.md).

Drives the load generator of ``benchmarks/fleet.py`` (the numbers in docs/scaling.md come
from it): every process starts its members at the same instant, then from Redis's side
(owner keys, the group's state, INFO) the test checks the bounds docs/scaling.md states:

* convergence: a complete, balanced (+-1), disjoint assignment matching the coordinator's
  target within 3 heartbeats + 1 s of the last member's start, whatever the session
  timeout (it is set far longer than that here);
* connections bounded by members, not partitions: at most 4 per member + 10;
* idle work: one coordinator script per member and one owner-key refresh per partition
  each heartbeat, nothing per idle partition besides; Redis below 3% of a core;
* stopping half the fleet at once: every release succeeds, and the survivors own every
  partition within 2 heartbeats + 1 s of the stop.

The cluster variant runs 20 x 64 on the 3 + 3 cluster, where every partition has its own slot.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from support.servers import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

HB = 1.0
SESSION = 30.0  # far above the bounds: convergence must not wait for sessions to expire


def _fleet() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "fleet.py"
    spec = importlib.util.spec_from_file_location("redcurrent_bench_fleet", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def _run(url: str, members: int, partitions: int, cluster: bool) -> dict[str, Any]:
    fleet = _fleet()
    return await asyncio.to_thread(
        fleet.run_fleet, url, members=members, partitions=partitions, workers=4, heartbeat=HB,
        session=SESSION, window=3.0, cluster=cluster, timeout=60.0)


def _check(r: dict[str, Any], members: int, partitions: int, nodes: int) -> None:
    summary = {k: v for k, v in r.items() if k != "commands"}
    # Convergence, counted from when the slowest process had started all its members
    # (start() returns after the join and the first claims).
    assert r["converge_s"] is not None, summary
    assert r["converge_s"] <= r["start_call_s"] + 3 * HB + 1.0, summary
    assert r["connections"] <= nodes * 4 * members + 10, summary
    # Stop half: no release failed, and the survivors took everything over.
    assert r["release_errors"] == 0 and r["too_many_connections"] == 0, summary
    assert r["release_warnings"] == 0, summary
    assert r["stop_owned_s"] is not None, summary
    assert r["stop_owned_s"] <= r["stop_call_s"] + 2 * HB + 1.0, summary
    assert r["stop_balanced_s"] is not None, summary


async def test_a_fleet_converges_fast_holds_few_connections_and_hands_over_when_half_stops(
    redis_url: str,
) -> None:
    members, partitions = 100, 1024
    r = await _run(redis_url, members, partitions, cluster=False)
    _check(r, members, partitions, nodes=1)
    # Idle work: per heartbeat one coordinator script per member and one refresh per
    # partition (a script before Valkey 8.1, SET ... IFEQ since); the idle wait is one
    # blocking read per member, re-sent when its block times out. Nothing per partition
    # besides: a fetch or a poll of an idle partition would show here.
    calls = {c: v["per_s"] for c, v in r["commands"].items()}
    sent = calls.get("evalsha", 0.0) + calls.get("set", 0.0)
    assert sent <= 1.25 * (members + partitions) / HB + 20, calls
    assert calls.get("xread", 0.0) <= 1.5 * members, calls
    assert "xreadgroup" not in calls, calls
    assert r["redis_cpu_pct"] < 3.0, {k: v for k, v in r.items() if k != "commands"}


@pytest.mark.cluster
async def test_a_fleet_on_the_cluster_converges_fast_and_hands_over_when_half_stops(cluster: Cluster) -> None:
    members, partitions = 20, 64
    r = await _run(cluster.url, members, partitions, cluster=True)
    _check(r, members, partitions, nodes=3)
