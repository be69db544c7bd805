"""A transactional consumer process for the consume → produce kill loop.

    python tests/support/tx_worker.py --url redis://127.0.0.1:6379 --namespace t1 \\
        --member w1 --log /tmp/w1.log --work-ms 1

``--url`` may be any node of a Redis Cluster: the library detects the cluster.
Runs ``run_consumer(..., transactional=True)`` on topic ``in``, group ``g``: for each
input ``{"seq": n}`` (keyed) it writes one output ``{"seq": n}`` with the same key to
topic ``out`` (co-located with ``in``). Each handler invocation appends one line to
``--log`` (``seq``), with ``os.write`` on an O_APPEND fd, so a SIGKILL loses none:
the test compares invocations with outputs (an input handled twice must still have
one output). A SIGTERM stops it gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import redcurrent


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--member", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--work-ms", type=float, default=0.0, help="time each handler takes")
    p.add_argument("--batch-size", type=int, default=50)
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    work = args.work_ms / 1000

    async def handler(msg: redcurrent.Message) -> list[redcurrent.Output]:
        seq = msg.value["seq"]
        os.write(fd, b"%d\n" % seq)
        if work:
            await asyncio.sleep(work)
        return [redcurrent.Output("out", {"seq": seq}, key=msg.key)]

    consumer = redcurrent.Consumer(
        "in", group="g", url=args.url, namespace=args.namespace, member_id=args.member,
        start="earliest", heartbeat_interval=0.2, session_timeout=1.5, batch_size=args.batch_size,
    )
    os.write(fd, b"started\n")
    await redcurrent.run_consumer(consumer, handler, transactional=True, grace_period=5)


def main() -> None:
    asyncio.run(run(parse_args(sys.argv[1:])))


if __name__ == "__main__":
    main()
