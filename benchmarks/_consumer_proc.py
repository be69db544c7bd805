"""A consumer process for the failover benchmark: logs "<monotonic> <partition>" per message."""

from __future__ import annotations

import asyncio
import os
import sys
import time

from redcurrent import Consumer, Message


async def main(url: str, ns: str, log_path: str, hb: float, session: float) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    async def handle(msg: Message) -> None:
        os.write(fd, b"%f %d\n" % (time.time(), msg.partition))

    async with Consumer("lat", group="failover", url=url, namespace=ns, start="earliest",
                        heartbeat_interval=hb, session_timeout=session) as consumer:
        await consumer.process(handle)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])))
