"""Consume → produce under SIGKILL (docs/exactly-once.md, "Consume → produce"): the kill loop.

Three consumer processes (``tests/support/tx_worker.py``) run
``process(handler, transactional=True)`` over 20,000 keyed inputs and write one output
per input to a co-located topic. A driver SIGKILLs a random one 30 times at random
moments while inputs arrive, and restarts it. Afterwards the output topic holds
exactly one output per input: none missing, none twice, each key's outputs in its
inputs' order; and inputs were handled more than once (the kills did cut batches
between handling and commit), so the verdict is not an accident of gentle timing.

Runs on one node and on the cluster (``target``); the random seed is printed on failure.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from support.eventually import eventually
from support.servers import Target

from redcurrent import Admin, Message, Producer, Record

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

WORKER = Path(__file__).resolve().parents[1] / "support" / "tx_worker.py"
N, KEYS, KILLS, WORKERS, P = 20_000, 100, 30, 3, 6


def spawn(url: str, namespace: str, i: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log.with_suffix(".err"), "ab") as err:  # the child keeps its own fd
        return subprocess.Popen(
            [sys.executable, str(WORKER), "--url", url, "--namespace", namespace, "--member", f"w{i}",
             "--log", str(log), "--work-ms", "1"],
            stdout=subprocess.DEVNULL, stderr=err)


def handled(logs: list[Path]) -> int:
    return sum(1 for log in logs if log.exists() for line in log.read_text().split() if line.isdigit())


async def produce(url: str, namespace: str) -> None:
    """N inputs ``{"seq": i}`` keyed ``k{i % KEYS}``, paced over about 12 s."""
    async with Producer(url, namespace=namespace) as producer:
        for start in range(0, N, 200):
            await producer.send_batch("in", [Record({"seq": i}, key=f"k{i % KEYS}") for i in range(start, start + 200)])
            await asyncio.sleep(0.12)


async def settled(admin: Admin) -> bool:
    if (await admin.describe_topic("out")).length < N:
        return False
    group = await admin.describe_group("in", "g")
    return all(p.pending == 0 and not p.lag for p in group.partitions)


async def test_kill_loop_writes_each_output_exactly_once(
        target: Target, admin: Admin, namespace: str, tmp_path: Path) -> None:
    seed = int(os.environ.get("RC_KILL_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    await admin.create_topic("in", partitions=P)
    await admin.create_topic("out", partitions=P, colocate_with="in")
    logs = [tmp_path / f"w{i}.log" for i in range(WORKERS)]
    procs = [spawn(target.url, namespace, i, log) for i, log in enumerate(logs)]
    try:
        await eventually(lambda: all(log.exists() for log in logs), timeout=30)
        producing = asyncio.create_task(produce(target.url, namespace))
        for _ in range(KILLS):
            await asyncio.sleep(rng.uniform(0.1, 0.8))
            i = rng.randrange(WORKERS)
            procs[i].kill()
            procs[i].wait(10)
            procs[i] = spawn(target.url, namespace, i, logs[i])
        await producing
        await eventually(lambda: settled(admin), timeout=150, interval=0.25,
                         message=f"every output written and every input acked (seed {seed})")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
    out: list[Message] = []
    for p in range(P):
        out += await admin.read_partition("out", p, count=N + 1)
    seqs = Counter(m.value["seq"] for m in out)
    missing = set(range(N)) - set(seqs)
    duplicates = {s: n for s, n in seqs.items() if n > 1}
    disorder = []
    for p in range(P):
        last: dict[object, int] = {}
        for m in (m for m in out if m.partition == p):
            if m.value["seq"] < last.get(m.key, -1):
                disorder.append((m.key, m.value["seq"]))
            last[m.key] = m.value["seq"]
            assert m.value["seq"] % KEYS == int(str(m.key)[1:])  # each output kept its input's key
    invocations = handled(logs)
    verdict = (f"seed {seed}: {len(missing)} missing, {len(duplicates)} duplicated, {len(disorder)} out of order, "
               f"{invocations} handler invocations for {N} inputs")
    assert (missing, duplicates, disorder) == (set(), {}, []), verdict
    assert len(out) == N, verdict
    # The kills interrupted work in progress: some inputs were handled again.
    assert invocations > N, f"{verdict}: no input was handled twice; the kills hit nothing"
