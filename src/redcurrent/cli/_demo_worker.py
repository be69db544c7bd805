"""One consumer process of ``redcurrent demo`` (not a public interface).

    REDCURRENT_DEMO_URL=redis://… python -m redcurrent.cli._demo_worker NS TOPIC GROUP MEMBER LOG

Handles messages ``{"k": key, "s": seq}`` and appends one JSON line per message to LOG
with a single ``os.write`` on an ``O_APPEND`` descriptor, stamped with
``time.monotonic_ns()`` (one clock for all processes of the machine): the kernel has
each line as soon as the handler ran, so the record survives a SIGKILL. SIGTERM or
SIGINT stop it gracefully. Imports neither Click nor Rich.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import orjson

from redcurrent import Consumer, Message, run_consumer

HEARTBEAT_S = 0.2
SESSION_S = 1.5
WORK_S = 0.001


async def run(namespace: str, topic: str, group: str, member: str, log_path: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    async def handle(msg: Message) -> None:
        value = msg.value
        os.write(
            fd,
            orjson.dumps(
                {
                    "t": time.monotonic_ns(),
                    "c": member,
                    "p": msg.partition,
                    "id": msg.id,
                    "k": value["k"],
                    "s": value["s"],
                }
            )
            + b"\n",
        )
        await asyncio.sleep(WORK_S)  # a little work: some messages are in flight at the SIGKILL

    consumer = Consumer(
        topic,
        group=group,
        url=os.environ["REDCURRENT_DEMO_URL"],
        namespace=namespace,
        member_id=member,
        start="earliest",
        heartbeat_interval=HEARTBEAT_S,
        session_timeout=SESSION_S,
        rebalance_timeout=3.0,
    )
    watchdog = asyncio.create_task(_exit_with_parent(os.getppid()), name="demo-worker-watchdog")
    try:
        await run_consumer(consumer, handle, grace_period=5.0)
    finally:
        watchdog.cancel()
        await asyncio.gather(watchdog, return_exceptions=True)
        os.close(fd)


async def _exit_with_parent(parent: int) -> None:
    """If the demo dies without stopping us (SIGKILL, a crash), stop gracefully on our own."""
    while os.getppid() == parent:
        await asyncio.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)  # run_consumer's graceful stop


def main() -> None:
    if len(sys.argv) != 6:
        sys.exit("usage: python -m redcurrent.cli._demo_worker NAMESPACE TOPIC GROUP MEMBER LOG")
    asyncio.run(run(*sys.argv[1:6]))


if __name__ == "__main__":
    main()
