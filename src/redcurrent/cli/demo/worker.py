"""One consumer process of ``redcurrent demo`` (not a public interface).

    REDCURRENT_DEMO_URL=redis://… python -m redcurrent.cli.demo.worker NS TOPIC GROUP MEMBER LOG

Handles messages ``{"k": key, "s": seq}`` and logs a ``handled`` event per message to
LOG with :class:`redcurrent.testing.EventLog`: one ``os.write`` on an ``O_APPEND``
descriptor, stamped with ``time.monotonic_ns()`` (one clock for all processes of the
machine), so the record survives a SIGKILL. SIGTERM or SIGINT stop it gracefully.
Imports neither Click nor Rich.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from redcurrent import Consumer, Message, run_consumer
from redcurrent.testing import HANDLED, EventLog

HEARTBEAT_S = 0.2
SESSION_S = 1.5
WORK_S = 0.001


async def run(namespace: str, topic: str, group: str, member: str, log_path: str) -> None:
    log = EventLog(log_path, member)

    async def handle(msg: Message) -> None:
        value = msg.value
        log.write(HANDLED, p=msg.partition, id=msg.id, k=value["k"], s=value["s"])
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
        log.close()


async def _exit_with_parent(parent: int) -> None:
    """If the demo dies without stopping us (SIGKILL, a crash), stop gracefully on our own."""
    while os.getppid() == parent:
        await asyncio.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)  # run_consumer's graceful stop


def main() -> None:
    if len(sys.argv) != 6:
        sys.exit("usage: python -m redcurrent.cli.demo.worker NAMESPACE TOPIC GROUP MEMBER LOG")
    asyncio.run(run(*sys.argv[1:6]))


if __name__ == "__main__":
    main()
