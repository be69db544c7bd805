"""The examples in examples/ run, against a real server, and do what they say."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import ModuleType

from redcurrent import Admin, Producer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(name: str) -> ModuleType:
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


def run_script(name: str, redis_url: str, *args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        env={**os.environ, "REDIS_URL": redis_url},
        capture_output=True, text=True, timeout=timeout, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_quickstart_runs(redis_url: str) -> None:
    out = run_script("quickstart.py", redis_url)
    assert out.count("handled partition") == 12


def test_fastapi_producer_sends_one_event_per_request(redis_url: str, namespace: str) -> None:
    from fastapi.testclient import TestClient

    app = example("fastapi_producer").create_app(redis_url, namespace)
    with TestClient(app) as client:  # runs the lifespan: the producer starts and, on exit, flushes
        replies = [client.post("/orders", json={"customer": f"c{i % 5}", "amount": i}) for i in range(40)]
        bad = client.post("/orders", json={"customer": "c1"})  # no amount: refused, nothing sent
    assert [r.status_code for r in replies] == [202] * 40
    assert bad.status_code == 422

    async def stored() -> dict[str, list[tuple[int, str]]]:
        async with Admin(redis_url, namespace=namespace) as admin:
            info = await admin.describe_topic("orders")
        assert sum(p.length for p in info.partition_info) == 40
        by_customer: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for i, r in enumerate(replies):
            by_customer[f"c{i % 5}"].append((r.json()["partition"], r.json()["id"]))
        return by_customer

    for positions in asyncio.run(stored()).values():
        assert len({p for p, _ in positions}) == 1  # one customer, one partition
        ids = [tuple(map(int, i.split("-"))) for _, i in positions]
        assert ids == sorted(ids)  # in the order they were posted


def test_worker_fleet_shares_the_partitions_and_stops_gracefully_on_sigterm(redis_url: str, namespace: str) -> None:
    env = {**os.environ, "REDIS_URL": redis_url}
    workers = [
        subprocess.Popen([sys.executable, str(EXAMPLES / "worker_fleet.py"), "--namespace", namespace],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    try:
        for w in workers:
            assert w.stdout is not None
            assert w.stdout.readline().endswith("ready\n")

        async def produce() -> None:
            async with Admin(redis_url, namespace=namespace) as admin:  # the fleet shares the 8 partitions
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    info = await admin.describe_group("orders", "fulfilment")
                    owners = {p.owner for p in info.partitions}
                    if len(info.members) == 3 and owners == {m.member_id for m in info.members}:
                        break
                    await asyncio.sleep(0.1)
            async with Producer(redis_url, namespace=namespace) as producer:
                for i in range(300):
                    await producer.send("orders", {"n": i // 30}, key=f"k{i % 30}")

        asyncio.run(produce())

        async def drained() -> None:
            async with Admin(redis_url, namespace=namespace) as admin:
                deadline = time.monotonic() + 60
                while sum((await admin.lag("orders", "fulfilment")).values()) and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                assert sum((await admin.lag("orders", "fulfilment")).values()) == 0

        asyncio.run(drained())
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
    outputs = [w.communicate(timeout=60) for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    handled = [line for out, _ in outputs for line in out.splitlines() if " handled " in line]
    assert all(out.rstrip().endswith("stopped") for out, _ in outputs)
    by_key: dict[str, list[int]] = defaultdict(list)
    for line in handled:
        fields = dict(part.split("=", 1) for part in line.split()[2:5])
        by_key[fields["key"]].append(int(line.rsplit("'n': ", 1)[1].rstrip("}")))
    assert len(handled) == 300  # each once: nothing crashed, nothing redelivered
    assert all(seqs == sorted(seqs) and len(seqs) == 10 for seqs in by_key.values())
    assert sum(1 for out, _ in outputs if " handled " in out) == 3  # the partitions were shared


def test_batch_etl_loads_once_and_a_redelivery_changes_nothing(redis_url: str, namespace: str, tmp_path: Path) -> None:
    etl = example("batch_etl")
    db = tmp_path / "etl.sqlite"

    async def scenario() -> tuple[int, int]:
        await etl.fill(redis_url, 1_500, namespace)
        first = await etl.run_etl(redis_url, db, 1_500, namespace)
        await etl.rewind(redis_url, namespace)  # every message is delivered again
        again = await etl.run_etl(redis_url, db, 1_500, namespace)
        return first, again

    assert asyncio.run(scenario()) == (1_500, 0)
    import sqlite3

    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*), ROUND(SUM(amount), 2) FROM payments").fetchone() == (
            1_500, round(sum(round(i * 0.25, 2) for i in range(1_500)), 2))


def test_dead_letters_example_requeues_after_the_fix(redis_url: str, namespace: str) -> None:
    settled = asyncio.run(example("dead_letters").main(redis_url, namespace))
    assert sorted(settled) == ["0 = 100.00 EUR", "1 = 117.00 EUR", "2 = 92.00 EUR", "3 = 117.00 EUR"]

    async def left() -> int:
        async with Admin(redis_url, namespace=namespace) as admin:
            return await admin.count_dead_letters("invoices", "accounting")

    assert asyncio.run(left()) == 0


def test_flask_sync_producer_serves_concurrent_request_threads_with_one_producer(
    redis_url: str, namespace: str
) -> None:
    """Eight threads post at once through Flask's test client; one shared blocking
    producer stores every order, each customer's in one partition in the order posted."""
    import threading

    import redis

    from redcurrent.keys import Keys

    app = example("flask_sync_producer").create_app(redis_url, namespace)
    producer = app.extensions["redcurrent.producer"]
    threads, per_thread = 8, 25
    replies: dict[int, list[tuple[int, dict[str, object] | None]]] = {}
    start = threading.Barrier(threads)

    def post_orders(t: int) -> None:
        client = app.test_client()  # one per thread, all on the app's one producer
        start.wait()
        posted = (client.post("/orders", json={"customer": f"c{t}", "amount": i}) for i in range(per_thread))
        replies[t] = [(r.status_code, r.get_json()) for r in posted]

    workers = [threading.Thread(target=post_orders, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    bad = app.test_client().post("/orders", json={"customer": "c1"})  # no amount: refused, nothing sent
    assert app.extensions["redcurrent.producer"] is producer
    producer.close()
    assert bad.status_code == 400
    assert sorted(replies) == list(range(threads))
    with redis.Redis.from_url(redis_url) as r:
        stored = sum(r.xlen(Keys(namespace).stream("orders", p)) for p in range(8))
    assert stored == threads * per_thread
    for got in replies.values():
        assert [status for status, _ in got] == [202] * per_thread
        bodies = [body for _, body in got]
        assert all(isinstance(b, dict) for b in bodies)
        assert len({b["partition"] for b in bodies if isinstance(b, dict)}) == 1  # one customer, one partition
        ids = [tuple(map(int, str(b["id"]).split("-"))) for b in bodies if isinstance(b, dict)]
        assert ids == sorted(ids) and len(set(ids)) == per_thread  # in the order they were posted
