"""A consumer process for the multi-process fault tests.

    python tests/support/worker.py --url redis://127.0.0.1:6379 --namespace t1 \\
        --topic orders --group g --log /tmp/w1.log --member-id w1

Runs ``Consumer.process`` until SIGTERM (or SIGINT), which calls ``consumer.stop()``:
a graceful stop. Messages are expected to carry ``{"seq": n}`` values.

Every line of the log is one JSON object, written with a single ``os.write`` on an
``O_APPEND`` descriptor, so what was logged survives a SIGKILL (the kernel has it), and
stamped ``t`` = ``time.monotonic_ns()``, one clock for every process on the machine:

    {"t", "c": member, "e": "handled", "p", "id", "k", "s", "a": attempts}  the handler got it
    {"t", "c", "e": "acked", "p", "id", "k", "s"}    the handler returned: the library acks it
    {"t", "c", "e": "assign" | "revoke" | "lost", "ps": [partition, ...]}   listeners
    {"t", "c", "e": "started" | "stopped"}           lifecycle ("stopped" carries "stats")

It is a :class:`redcurrent.testing.EventLog`; ``redcurrent.testing.read_log`` reads it back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

import redcurrent
from redcurrent.testing import EventLog


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--member-id", required=True)
    p.add_argument("--start", default="earliest", choices=["earliest", "latest"])
    p.add_argument("--assignor", default="round_robin", choices=["round_robin", "sticky"])
    p.add_argument("--heartbeat", type=float, default=0.2, help="heartbeat interval, s")
    p.add_argument("--session", type=float, default=1.5, help="session timeout, s")
    p.add_argument("--rebalance", type=float, default=3.0, help="rebalance timeout, s")
    p.add_argument("--work-ms", type=float, default=0.0, help="time each handler takes")
    p.add_argument("--concurrency", type=int, default=None, help="Consumer(concurrency=N)")
    p.add_argument("--ordering", default="partition", choices=["partition", "key", "none"])
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    log = EventLog(args.log, args.member_id)

    def listener(name: str) -> Any:
        def on_event(partitions: list[redcurrent.TopicPartition]) -> None:
            log.write(name, ps=[tp.partition for tp in partitions])

        return on_event

    async def handler(msg: redcurrent.Message) -> None:
        fields = {"p": msg.partition, "id": msg.id, "k": msg.key, "s": msg.value["seq"]}
        log.write("handled", a=msg.attempts, **fields)
        if args.work_ms:
            await asyncio.sleep(args.work_ms / 1000)
        log.write("acked", **fields)  # the handler returns right after: the library acks it

    consumer = redcurrent.Consumer(
        args.topic,
        group=args.group,
        url=args.url,
        namespace=args.namespace,
        member_id=args.member_id,
        start=args.start,
        heartbeat_interval=args.heartbeat,
        session_timeout=args.session,
        rebalance_timeout=args.rebalance,
        assignor=args.assignor,
        on_assign=listener("assign"),
        on_revoke=listener("revoke"),
        on_lost=listener("lost"),
        concurrency=args.concurrency,
        ordering=args.ordering,
    )
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def graceful() -> None:
        if not stopping:
            stopping.append(loop.create_task(consumer.stop(), name="worker-stop"))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, graceful)
    async with consumer:
        log.write("started")
        # a SIGTERM that arrived while joining has already stopped it: nothing to process
        with contextlib.suppress(redcurrent.ConsumerStoppedError):
            await consumer.process(handler)
    await asyncio.gather(*stopping)
    log.write("stopped", stats=consumer.stats())


def main() -> None:
    asyncio.run(run(parse_args(sys.argv[1:])))


if __name__ == "__main__":
    main()
