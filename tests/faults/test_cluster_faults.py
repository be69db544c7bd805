"""Fault injection on a Redis Cluster of 3 primaries + 3 replicas (docs/cluster.md).

Each scenario starts its own cluster (``FaultRun(cluster=True)``: ``cluster-node-timeout``
1 s), a topic of 8 partitions spread over the primaries, 3 consumer processes of one
group and a keyed producer, then fails a primary, fails one over by hand, moves a slot
key by key, or kills / stops a consumer. The history checker then says what was lost,
duplicated or out of order. Short by default; ``--full-faults`` for 20,000 messages.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from scenarios import CLUSTER_SCENARIOS, NODE_TIMEOUT_S

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(300)]


def check(name: str, row: dict[str, object]) -> list[str]:
    """The promises of docs/cluster.md for one scenario; the broken ones, as text."""
    problems = []

    def want(ok: bool, what: str) -> None:
        if not ok:
            problems.append(f"{name}: {what} ({row})")

    if "acks=leader" in name and "SIGKILL" in name:
        # asynchronous replication: what the dead primary acknowledged last may be gone,
        # but nothing stored after the failover
        want(row["lost_after_kill"] == 0, "nothing lost that was stored after the kill")
    else:
        want(row["lost"] == 0, "nothing lost")
    want(row["violations"] == 0, "no order violations")
    want(row["pending"] == 0, "nothing stuck pending")
    want(row["lag"] == 0, "lag 0 at the end")
    want(row.get("workers_died", 0) == 0, "no consumer process died")
    limit = row.get("limit_s")
    for key in ("resume_s", "rejoin_s"):
        if key in row:
            value = row[key]
            want(value is not None and limit is not None and value <= limit, f"{key} <= {limit}")
    if "primary" in name or "failover" in name or "slot moved" in name:
        # no consumer died or stalled past its session: at most one rebalance
        want(int(row["rebalances"]) <= 1, "at most one rebalance")  # type: ignore[call-overload]
    if "slot moved" in name:
        want(row["moved_to_target"] is True, "the slot moved")
    if "zombie_handled" in row:
        want(row["zombie_handled"] == 0, "no fetch after losing the lease")
    return problems


@pytest.mark.parametrize("name", list(CLUSTER_SCENARIOS))
async def test_cluster_fault_scenario(
    name: str, tmp_path: Path, server_binary: str, request: pytest.FixtureRequest
) -> None:
    full = bool(request.config.getoption("--full-faults"))
    report = await CLUSTER_SCENARIOS[name](tmp_path, server_binary, full)
    row = report.row()
    print(f"\n{row}")
    assert not report.history.unacked, report.history.summary()
    assert not report.history.unexpected and not report.history.mismatched, report.history.summary()
    problems = check(name, row)
    assert not problems, "\n".join(problems) + "\n" + report.history.summary()
    _ = NODE_TIMEOUT_S
