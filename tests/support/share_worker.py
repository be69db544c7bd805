"""A share-group member process for the multi-process share-group tests and benchmark.

    python tests/support/share_worker.py --url redis://127.0.0.1:6379 --namespace t1 \\
        --topic orders --group g --log /tmp/w1.log --member w1 --lock 1.0 --work-ms 5

``--url`` may be any node of a Redis Cluster: the library detects the cluster.
Runs ``ShareConsumer.process`` until SIGTERM (or SIGINT), which calls ``stop()``.
Messages are expected to carry ``{"seq": n}`` values. Its log is a
:class:`redcurrent.testing.EventLog` (one JSON line per event, which survives a SIGKILL):

    {"t", "c": member, "e": "handled", "p", "id", "k", "s", "a": delivery count}
    {"t", "c", "e": "acked", "p", "id", "k", "s"}   the handler returned: the library accepts it
    {"t", "c", "e": "started" | "stopped"}          lifecycle ("stopped" carries "stats")

``redcurrent.testing.read_log`` reads it back for ``check_history``; the values' seq
identifies a message with its key.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

import redcurrent
from redcurrent.testing import EventLog


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--member", required=True, help="the name this process logs under")
    p.add_argument("--lock", type=float, default=30.0, help="lock_timeout, s")
    p.add_argument("--work-ms", type=float, default=0.0, help="time each handler takes")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--start", default="earliest", choices=["earliest", "latest"])
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    log = EventLog(args.log, args.member)

    async def handler(msg: redcurrent.Message) -> None:
        fields = {"p": msg.partition, "id": msg.id, "k": msg.key, "s": msg.value["seq"]}
        log.write("handled", a=msg.attempts, **fields)
        if args.work_ms:
            await asyncio.sleep(args.work_ms / 1000)
        log.write("acked", **fields)

    sc = redcurrent.ShareConsumer(
        args.topic, group=args.group, url=args.url, namespace=args.namespace, start=args.start,
        lock_timeout=args.lock, batch_size=args.batch_size,
    )
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def graceful() -> None:
        if not stopping:
            stopping.append(loop.create_task(sc.stop(), name="share-worker-stop"))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, graceful)
    async with sc:
        log.write("started")
        # a SIGTERM that arrived before process() began has already stopped it
        with contextlib.suppress(redcurrent.ConsumerStoppedError):
            await sc.process(handler)
    await asyncio.gather(*stopping)
    log.write("stopped", stats=sc.stats())


def main() -> None:
    asyncio.run(run(parse_args(sys.argv[1:])))


if __name__ == "__main__":
    main()
