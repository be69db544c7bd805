"""Helpers for the consumer-group suites (single node and cluster share them).

Short timeouts everywhere (heartbeat 0.2 s, session 1.5 s) keep each test to seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson

import redcurrent
from redcurrent import Consumer, Message, Producer, Record, TopicPartition
from redcurrent.keys import Keys
from redcurrent.testing import Event, Sent

HB = 0.2  # heartbeat interval, s
SESSION = 1.5  # session timeout, s
REBALANCE = 2.0  # rebalance timeout, s
STOP_TIMEOUT = 8.0  # a graceful stop needs at most the rebalance timeout plus a few round trips

STOP_HANG = (
    "Consumer.stop() hung (its background tasks outlived a cancel: redis-py's asyncio.wait_for "
    "swallows cancellations on Python 3.11, so every loop must be cancelled until it is done)"
)


def make_consumer(
    url: str, namespace: str, *topics: str, group: str = "g", **options: Any
) -> Consumer:
    """A Consumer with the suite's short timeouts (overridable)."""
    options.setdefault("heartbeat_interval", HB)
    options.setdefault("session_timeout", SESSION)
    options.setdefault("rebalance_timeout", REBALANCE)
    return Consumer(*topics, group=group, url=url, namespace=namespace, **options)


async def create_topic(url: str, namespace: str, name: str, partitions: int) -> None:
    async with redcurrent.Admin(url, namespace=namespace) as admin:
        await admin.create_topic(name, partitions)


async def produce(
    producer: Producer, topic: str, keys: Iterable[str | bytes], rounds: int, *, first_seq: int = 0
) -> list[Sent]:
    """``rounds`` rounds of one record per key with value ``{"seq": n}``; each round is one
    ``send_batch`` and waits for the previous, so per key, seq order is stream order."""
    keys = list(keys)
    out: list[Sent] = []
    for seq in range(first_seq, first_seq + rounds):
        metas = await producer.send_batch(topic, [Record({"seq": seq}, key=k) for k in keys])
        out += [Sent(k, seq, m.id, m.partition) for k, m in zip(keys, metas, strict=True)]
    return out


@dataclass
class Seen:
    """Records what handlers got, as history events, with the message itself."""

    events: list[Event] = field(default_factory=list)
    messages: list[tuple[str, Message]] = field(default_factory=list)

    def handler(self, name: str, work: float = 0.0) -> Callable[[Message], Awaitable[None]]:
        async def handle(msg: Message) -> None:
            self.record(name, "handled", msg)
            if work:
                await asyncio.sleep(work)
            self.record(name, "acked", msg)

        return handle

    def record(self, name: str, event: str, msg: Message) -> None:
        seq = msg.value["seq"] if isinstance(msg.value, dict) and "seq" in msg.value else -1
        self.events.append(
            Event(name, event, msg.key, seq, msg.id, time.monotonic_ns(), msg.partition)
        )
        if event == "handled":
            self.messages.append((name, msg))

    def handled(self, name: str | None = None) -> list[Message]:
        return [m for n, m in self.messages if name is None or n == name]

    def count(self) -> int:
        return len(self.messages)

    def first_after(self, t_ns: int, partition: int, name: str | None = None) -> int | None:
        """Monotonic ns of the first handled event on ``partition`` after ``t_ns``."""
        for e in self.events:
            if e.event == "handled" and e.t_ns > t_ns and e.partition == partition:
                if name is None or e.consumer == name:
                    return e.t_ns
        return None


def start_processing(
    consumer: Consumer, handler: Callable[[Message], Awaitable[None]]
) -> asyncio.Task[None]:
    """``consumer.process(handler)`` in a task (stop it with ``consumer.stop()``)."""
    return asyncio.create_task(consumer.process(handler), name=f"process-{consumer.member_id}")


async def stop(consumer: Consumer, timeout: float = STOP_TIMEOUT) -> None:
    """``consumer.stop()``, bounded: a hang fails the test (STOP_HANG) after the library's
    leftover tasks were cancelled, so later tests run clean."""
    task = asyncio.ensure_future(consumer.stop())
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if done:
        task.result()
        return
    await cancel_library_tasks()
    await asyncio.wait({task}, timeout=5)  # with its loops gone, stop() leaves and closes
    raise AssertionError(f"{STOP_HANG}: still running after {timeout}s")


async def cancel_library_tasks(timeout: float = 3.0) -> None:
    """Cancel (again and again) every task the library started, until they are all done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [
            t
            for t in asyncio.all_tasks()
            if t.get_name().startswith("redcurrent-") and not t.done()
        ]
        if not left:
            return
        for t in left:
            t.cancel()
        await asyncio.wait(left, timeout=0.05)


async def stop_all(*pairs: tuple[Consumer, asyncio.Task[Any] | None]) -> None:
    """Stop every consumer (bounded) and wait for its ``process`` task; the first failure
    (e.g. STOP_HANG) is raised only once all of them were stopped."""
    first: BaseException | None = None
    for consumer, _ in pairs:
        try:
            await stop(consumer)
        except BaseException as exc:
            first = first or exc
    tasks = [t for _, t in pairs if t is not None]
    if tasks:
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    if first is not None:
        raise first


@asynccontextmanager
async def running(consumer: Consumer) -> AsyncIterator[Consumer]:
    """``async with consumer`` with a bounded stop (see :func:`stop`)."""
    await consumer.start()
    try:
        yield consumer
    finally:
        await stop(consumer)


@dataclass(frozen=True)
class GroupState:
    """The coordinator's state hash of one group on one topic."""

    epoch: int
    assignment: dict[str, list[int]]
    partitions: int

    def owner_of(self) -> dict[int, str]:
        return {p: m for m, ps in self.assignment.items() for p in ps}


async def group_state(client: Any, namespace: str, topic: str, group: str = "g") -> GroupState:
    raw: Mapping[bytes, bytes] = await client.hgetall(Keys(namespace).group_state(topic, group))
    decoded = orjson.loads(raw[b"assignment"]) if raw.get(b"assignment") else {}
    # cjson encodes an empty Lua table as {} rather than []
    assignment = {m: sorted(ps) if isinstance(ps, list) else [] for m, ps in decoded.items()}
    return GroupState(int(raw.get(b"epoch", 0)), assignment, int(raw.get(b"partitions", 0)))


def full_and_disjoint(assignment: Mapping[str, list[int]], partitions: int) -> bool:
    """Every partition assigned to exactly one member."""
    flat = [p for ps in assignment.values() for p in ps]
    return sorted(flat) == list(range(partitions))


async def settled(
    client: Any,
    namespace: str,
    topic: str,
    consumers: Iterable[Consumer],
    partitions: int,
    group: str = "g",
) -> GroupState | None:
    """The group state when the rebalance is over: every partition assigned to exactly one of
    ``consumers`` and each consumer owning exactly its target; else None."""
    consumers = list(consumers)
    state = await group_state(client, namespace, topic, group)
    if state.partitions != partitions or not full_and_disjoint(state.assignment, partitions):
        return None
    if set(state.assignment) != {c.member_id for c in consumers}:
        return None
    for c in consumers:
        owned = {tp.partition for tp in c.assignment() if tp.topic == topic}
        if owned != set(state.assignment[c.member_id]):
            return None
    return state


def tps(topic: str, *partitions: int) -> set[TopicPartition]:
    return {TopicPartition(topic, p) for p in partitions}
