"""Fault injection: every row of the reliability table, short version by default.

``pytest -m faults`` runs just this suite; ``--full-faults`` (or ``benchmarks/faults.py``)
runs the standard 20,000-message version. Scenarios never run concurrently.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from scenarios import SCENARIOS, H, S

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(300)]


def check(name: str, row: dict[str, object]) -> list[str]:
    """The table's promises for one scenario; the broken ones, as text."""
    problems = []

    def want(ok: bool, what: str) -> None:
        if not ok:
            problems.append(f"{name}: {what} ({row})")

    want(row["lost"] == 0, "nothing lost")
    want(row["violations"] == 0, "no order violations")
    want(row["pending"] == 0, "nothing stuck pending")
    want(row["lag"] == 0, "lag 0 at the end")
    limit = row.get("limit_s")
    for key in ("resume_s", "handoff_s", "rejoin_s", "new_partitions_s"):
        if key in row:
            value = row[key]
            want(value is not None and limit is not None and value <= limit, f"{key} <= {limit}")
    if name in (
        "SIGTERM a consumer",
        "SIGSTOP 0.5 S (GC pause)",
        "rolling restart",
        "100 ms +- 20 ms latency",
    ):
        want(row["duplicates"] == 0, "no duplicates")
    if name in ("SIGSTOP 0.5 S (GC pause)", "100 ms +- 20 ms latency") or name.startswith(
        "redis-server SIGKILL"
    ):
        want(row["rebalances"] == 0, "no rebalance")
    if name == "redis-server SIGSTOP 2 s":
        want(row["rebalances"] <= 1, "at most one rebalance")  # type: ignore[operator]
    if "zombie_handled" in row:
        want(row["zombie_handled"] == 0, "no fetch after losing the lease")
    if "written_twice" in row:
        want(row["written_twice"] == 0, "no entry written twice")
    return problems


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_fault_scenario(
    name: str, tmp_path: Path, server_binary: str, request: pytest.FixtureRequest
) -> None:
    full = bool(request.config.getoption("--full-faults"))
    report = await SCENARIOS[name](tmp_path, server_binary, full)
    row = report.row()
    problems = check(name, row)
    assert not report.history.unacked, report.history.summary()
    assert not report.history.unexpected and not report.history.mismatched, report.history.summary()
    assert not problems, "\n".join(problems) + "\n" + report.history.summary()
    _ = (H, S)
