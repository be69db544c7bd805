"""The reliability table: every fault scenario at full size, checked, in one run.

    python benchmarks/faults.py [--short] [--only NAME]

Standard run: 3 consumer processes, 8 partitions, 20,000 keyed messages (100 keys x
200 seqs) produced while the fault happens; heartbeat 0.2 s, session 1.5 s. Scenarios
run one after another (never two at once). Each row is checked against its promise
(tests/faults/test_faults.py: check) and the table is printed as Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "faults")]

from scenarios import SCENARIOS  # noqa: E402
from support.servers import find_server_binary  # noqa: E402
from test_faults import check  # noqa: E402


def fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


async def run(names: list[str], full: bool, binary: str) -> list[tuple[dict[str, object], list[str], float]]:
    rows = []
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.monotonic()
            report = await SCENARIOS[name](Path(tmp), binary, full)
            row = {"scenario": name, **{k: v for k, v in report.row().items() if k != "scenario"}}
            problems = check(name, row)
            if report.history.unacked:
                problems.append(f"{len(report.history.unacked)} handled but never acked")
            rows.append((row, problems, time.monotonic() - started))
            print(f"{name}: {'ok' if not problems else 'FAILED'} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    return rows


def table(rows: list[tuple[dict[str, object], list[str], float]]) -> str:
    lines = ["| fault | sent | lost | duplicates | order violations | pending / lag at end | rebalances | timing (limit) | verdict |",
             "|---|---:|---:|---:|---:|---|---:|---|---|"]
    for row, problems, _ in rows:
        timing = [f"{k} {fmt(row[k])}" for k in ("resume_s", "handoff_s", "rejoin_s", "new_partitions_s") if k in row]
        if "limit_s" in row:
            timing.append(f"(<= {fmt(row['limit_s'])})")
        for k in ("zombie_handled", "written_twice", "resets"):
            if k in row:
                timing.append(f"{k} {row[k]}")
        lines.append(
            f"| {row['scenario']} | {row['sent']} | {row['lost']} | {row['duplicates']} | {row['violations']} | "
            f"{row['pending']} / {row['lag']} | {row['rebalances']} | {' '.join(timing) or '-'} | "
            f"{'holds' if not problems else 'BROKEN: ' + '; '.join(p.split(' (')[0] for p in problems)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="the short versions the test suite runs")
    parser.add_argument("--only", action="append", help="run only this scenario (repeatable)")
    parser.add_argument("--server", default="auto", help="auto | valkey | redis62 | system")
    args = parser.parse_args()
    names = args.only or list(SCENARIOS)
    rows = asyncio.run(run(names, not args.short, find_server_binary(args.server)))
    print(table(rows))
    sys.exit(1 if any(p for _, p, _ in rows) else 0)


if __name__ == "__main__":
    main()
