"""One worker of a consumer fleet: run N copies of this process (containers, systemd,
a process manager) and the group spreads the topic's partitions over them.

    REDIS_URL=redis://localhost:6379 python examples/worker_fleet.py   # start as many as you like

Each worker handles messages one by one, in key order. SIGTERM (what Kubernetes and
Docker send) stops it gracefully: the message in hand finishes, its ack is sent, the
partitions are handed to the other workers at once; a second signal forces the stop.
A worker killed outright (SIGKILL, OOM) loses nothing either: its partitions move to
the others after the session timeout and its unacked messages are redelivered.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from redcurrent import Admin, Consumer, Message, run_consumer

TOPIC, GROUP = "orders", "fulfilment"


async def fulfil(msg: Message) -> None:
    """The work: here, a line on stdout (flushed, so a supervisor sees it at once)."""
    print(f"{os.getpid()} handled partition={msg.partition} id={msg.id} key={msg.key} value={msg.value}", flush=True)


async def main(url: str | None, namespace: str) -> None:
    async with Admin(url, namespace=namespace) as admin:
        await admin.create_topic(TOPIC, partitions=8, exist_ok=True)
    consumer = Consumer(
        TOPIC,
        group=GROUP,
        url=url,
        namespace=namespace,
        start="earliest",  # a new group reads the topic from its beginning
        heartbeat_interval=1.0,
        session_timeout=10.0,  # a killed worker's partitions move after this
    )
    print(f"{os.getpid()} ready", flush=True)
    await run_consumer(consumer, fulfil, grace_period=20.0)
    print(f"{os.getpid()} stopped", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one worker of a redcurrent consumer fleet")
    parser.add_argument("--namespace", default="rc")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    url = os.environ.get("REDIS_URL")
    if not url:
        sys.exit("set REDIS_URL: a fleet shares one Redis (or Redis Cluster)")
    asyncio.run(main(url, args.namespace))
