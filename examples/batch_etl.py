"""Batch ETL: load a topic into SQLite, one transaction per batch, exactly once in the table.

``process_batch`` hands over up to ``batch_size`` messages; they are written in ONE
SQLite transaction and acked together when the handler returns. Delivery is
at-least-once: after a crash between the commit and the ack, or after an operator
rewinds the group, the same messages come again. The table's primary key is the
message's position (topic, partition, entry id) and rows are inserted with
``INSERT OR IGNORE``, so a redelivered batch changes nothing: the load is idempotent.

    python examples/batch_etl.py      # fills a topic, loads it, loads it again after a rewind
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from redcurrent import Admin, Consumer, Message, Producer, Record

TOPIC, GROUP = "payments", "etl"

SCHEMA = """
CREATE TABLE IF NOT EXISTS payments (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, entry_id TEXT NOT NULL,
    customer TEXT NOT NULL, amount REAL NOT NULL,
    PRIMARY KEY (topic, partition, entry_id)
)
"""


def load(db: sqlite3.Connection, batch: list[Message]) -> int:
    """Write one batch in one transaction; returns the rows that were new."""
    rows = [(m.topic, m.partition, m.id, m.key, m.value["amount"]) for m in batch]
    with db:  # one transaction: all rows or none
        before = db.total_changes
        db.executemany("INSERT OR IGNORE INTO payments VALUES (?, ?, ?, ?, ?)", rows)
        return db.total_changes - before


async def run_etl(url: str | None, db_path: Path, expected: int, namespace: str = "rc") -> int:
    """Load until ``expected`` rows are in the table; returns the rows inserted by this run."""
    # SQLite has one writer: every database call runs on one thread of its own, off the
    # event loop (batches of several partitions arrive concurrently and queue there).
    loop = asyncio.get_running_loop()
    db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
    db = await loop.run_in_executor(db_thread, sqlite3.connect, db_path)
    await loop.run_in_executor(db_thread, db.execute, SCHEMA)
    inserted = 0
    done = asyncio.Event()

    def rows() -> int:
        return int(db.execute("SELECT COUNT(*) FROM payments").fetchone()[0])

    async def handle(batch: list[Message]) -> None:
        nonlocal inserted
        new = await loop.run_in_executor(db_thread, load, db, batch)
        inserted += new  # not "inserted += await ...": that reads inserted before the await
        if await loop.run_in_executor(db_thread, rows) >= expected:
            done.set()

    async with Consumer(TOPIC, group=GROUP, url=url, namespace=namespace, start="earliest",
                        batch_size=500) as consumer:
        worker = asyncio.create_task(consumer.process_batch(handle))
        waiter = asyncio.create_task(done.wait())
        await asyncio.wait([worker, waiter], return_when=asyncio.FIRST_COMPLETED)
        await consumer.stop()
        await worker  # raises if processing failed
        waiter.cancel()
    await loop.run_in_executor(db_thread, db.close)
    db_thread.shutdown()
    return inserted


async def fill(url: str | None, count: int, namespace: str = "rc") -> None:
    async with Admin(url, namespace=namespace) as admin:
        await admin.create_topic(TOPIC, partitions=4, exist_ok=True)
    async with Producer(url, namespace=namespace) as producer:
        for start in range(0, count, 500):
            await producer.send_batch(TOPIC, [
                Record({"amount": round(i * 0.25, 2)}, key=f"customer-{i % 50}")
                for i in range(start, min(start + 500, count))
            ])


async def rewind(url: str | None, namespace: str = "rc") -> None:
    """What an operator does to reprocess a topic: move the group back to the start."""
    async with Admin(url, namespace=namespace) as admin:
        await admin.reset_offsets(TOPIC, GROUP, "earliest")


async def main(url: str, db_path: Path) -> None:
    await fill(url, 2_000)
    first = await run_etl(url, db_path, 2_000)
    await rewind(url)
    again = await run_etl(url, db_path, 2_000)
    print(f"first load inserted {first} rows; the redelivered load inserted {again} (idempotent)")


if __name__ == "__main__":
    import tempfile

    from _common import redis_url

    with redis_url() as url, tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(url, Path(tmp) / "etl.sqlite"))
