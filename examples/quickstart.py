"""Quickstart: produce keyed messages and consume them with a group of two consumers.

Runs against $REDIS_URL, or a private embedded server when it is not set:

    python examples/quickstart.py
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from redcurrent import Admin, Consumer, Message, Producer
from redcurrent.embedded import embedded_server


async def main(url: str) -> None:
    async with Admin(url, namespace="quickstart") as admin:
        await admin.create_topic("orders", partitions=4, exist_ok=True)

    handled: list[Message] = []

    async def handle(msg: Message) -> None:
        handled.append(msg)

    async with Consumer("orders", group="billing", url=url, namespace="quickstart",
                        start="earliest", heartbeat_interval=0.2, session_timeout=2.0) as c1, \
               Consumer("orders", group="billing", url=url, namespace="quickstart",
                        start="earliest", heartbeat_interval=0.2, session_timeout=2.0) as c2:
        workers = [asyncio.create_task(c.process(handle)) for c in (c1, c2)]
        for _ in range(100):  # the second member's join moves half the partitions over
            if all(len(c.assignment()) == 2 for c in (c1, c2)):
                break
            await asyncio.sleep(0.05)
        async with Producer(url, namespace="quickstart") as producer:
            for i in range(12):
                key = f"customer-{i % 3}"
                meta = await producer.send("orders", {"order": i, "amount": 10 * i}, key=key)
                print(f"sent order {i:2d} key={key} -> partition {meta.partition} id {meta.id}")
        while len(handled) < 12:
            await asyncio.sleep(0.05)
        for c in (c1, c2):
            print(f"consumer {c.member_id} owns partitions {sorted(tp.partition for tp in c.assignment())}")
        await asyncio.gather(c1.stop(), c2.stop())
        await asyncio.gather(*workers)
    for msg in sorted(handled, key=lambda m: (m.partition, m.id)):
        print(f"handled partition {msg.partition} {msg.id} key={msg.key} value={msg.value}")


if __name__ == "__main__":
    url = os.environ.get("REDIS_URL")
    with contextlib.ExitStack() as stack:
        if url is None:
            url = stack.enter_context(embedded_server())
            print(f"no REDIS_URL set: started an embedded server at {url}")
        asyncio.run(main(url))
