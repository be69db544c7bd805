"""Share groups (docs/guides/share-groups.md): any number of members read every partition; each
message is held by one member at a time under an acquisition lock; accept, release,
reject and renew are fenced by that lock; dead letters land in the group's stream.

Tests taking ``target`` run on one node and on the cluster (conftest), the multi-process
SIGKILL test too (its verdict from ``redcurrent.testing.check_history``); the throughput
test and the fault-proxy test run on one node. On Redis 6.2:
``pytest tests/integration/test_share_groups.py --server redis62 -m "not cluster"``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from support.consuming import make_consumer
from support.eventually import eventually
from support.leaks import resource_warnings
from support.proxy import FaultProxy
from support.servers import Target

from redcurrent import (
    Admin,
    ConsumerStoppedError,
    DeadLetter,
    FencedError,
    IllegalStateError,
    Message,
    Producer,
    Record,
    ShareConsumer,
    UnknownGroupError,
)
from redcurrent.testing import Event, Sent, check_history, read_log

WORKER = Path(__file__).resolve().parents[1] / "support" / "share_worker.py"


def share(target: Target, namespace: str, **options: Any) -> ShareConsumer:
    options.setdefault("group", "g")
    options.setdefault("start", "earliest")
    return ShareConsumer("t", url=target.url, namespace=namespace, **options)


async def produce(target: Target, namespace: str, n: int, first: int = 0) -> list[str]:
    """``n`` records ``{"seq": i}`` over 100 keys; where each went, as :func:`where`
    (entry ids repeat across partitions)."""
    ids: list[str] = []
    async with Producer(target.url, namespace=namespace) as producer:
        for start in range(first, first + n, 500):
            batch = [Record({"seq": i}, key=f"k{i % 100}") for i in range(start, min(first + n, start + 500))]
            ids += [f"{m.partition}/{m.id}" for m in await producer.send_batch("t", batch)]
    return ids


def where(msg: Message) -> str:
    return f"{msg.partition}/{msg.id}"


async def next_msg(sc: ShareConsumer, timeout: float = 5.0) -> Message:
    return await asyncio.wait_for(anext(sc), timeout)


async def nothing_within(sc: ShareConsumer, seconds: float) -> bool:
    try:
        await asyncio.wait_for(anext(sc), seconds)
    except TimeoutError:
        return True
    return False


@asynccontextmanager
async def processing(*pairs: tuple[ShareConsumer, Any]) -> AsyncIterator[None]:
    """Run ``sc.process(handler)`` for each pair; stop them all on the way out."""
    tasks = [asyncio.create_task(sc.process(h)) for sc, h in pairs]
    try:
        yield
    finally:
        await asyncio.gather(*(sc.stop() for sc, _ in pairs))
        await asyncio.gather(*tasks)


async def test_eight_members_on_two_partitions_all_get_work(target: Target, admin: Admin, namespace: str) -> None:
    await admin.create_topic("t", 2)
    handled: Counter[str] = Counter()
    accepted: set[str] = set()

    def handler(name: str) -> Any:
        async def handle(msg: Message) -> None:
            handled[name] += 1
            accepted.add(where(msg))
            await asyncio.sleep(0.001)
        return handle

    async with AsyncExitStack() as stack:
        members = [await stack.enter_async_context(share(target, namespace, batch_size=20)) for _ in range(8)]
        async with processing(*((sc, handler(f"m{i}")) for i, sc in enumerate(members))):
            ids = await produce(target, namespace, 8000)
            await eventually(lambda: len(accepted) == 8000, timeout=120, interval=0.1,
                             message="every message handled")
    assert accepted == set(ids)
    assert sum(handled.values()) == 8000  # no lock expired: nothing was handled twice
    assert min(handled[f"m{i}"] for i in range(8)) >= 400, handled  # each >= 5%


@pytest.mark.single_node
async def test_throughput_grows_with_members(target: Target, admin: Admin, namespace: str) -> None:
    await admin.create_topic("t", 2)
    one = await _rate(target, namespace, 1, "one", first=0)
    four = await _rate(target, namespace, 4, "four", first=1000)
    assert four > 2.5 * one, (one, four)


async def _rate(target: Target, namespace: str, n: int, group: str, first: int) -> float:
    """msg/s of ``n`` members of a new share group (at "latest": its own 100 * n
    messages), each handling one message at a time with a 10 ms handler."""
    done: set[str] = set()

    async def handle(msg: Message) -> None:
        await asyncio.sleep(0.01)
        done.add(where(msg))

    async with AsyncExitStack() as stack:
        members = [await stack.enter_async_context(
            share(target, namespace, group=group, batch_size=10, start="latest")) for _ in range(n)]
        ids = set(await produce(target, namespace, 100 * n, first=first))
        began = time.monotonic()
        async with processing(*((sc, handle) for sc in members)):
            await eventually(lambda: done >= ids, timeout=60, interval=0.01)
            return len(ids) / (time.monotonic() - began)


async def test_a_paused_member_is_fenced_and_the_new_holder_accepts(target: Target, admin: Admin,
                                                                   namespace: str) -> None:
    await admin.create_topic("t", 1)
    [eid] = await produce(target, namespace, 1)
    async with share(target, namespace, lock_timeout=0.5, batch_size=1) as a, \
            share(target, namespace, lock_timeout=0.5, batch_size=1) as b:
        held = await next_msg(a)
        assert (where(held), held.attempts) == (eid, 1)
        assert await nothing_within(b, 0.2)  # locked: b gets nothing
        await asyncio.sleep(0.5)  # a is paused past its lock
        taken = await next_msg(b)
        assert (where(taken), taken.attempts) == (eid, 2)
        with pytest.raises(FencedError):
            await a.acknowledge(held)
        with pytest.raises(FencedError):
            await a.renew(held)
        with pytest.raises(FencedError):
            await a.acknowledge(held, "reject")
        await b.acknowledge(taken)
        assert await nothing_within(a, 0.7) and await nothing_within(b, 0.1)
    assert await admin.count_dead_letters("t", "g") == 0


async def test_an_expired_lock_fences_its_holder_even_when_nobody_took_the_message(
        target: Target, admin: Admin, namespace: str) -> None:
    await admin.create_topic("t", 1)
    [eid] = await produce(target, namespace, 1)
    async with share(target, namespace, lock_timeout=0.3, batch_size=1) as a, \
            share(target, namespace, lock_timeout=0.3, batch_size=1) as b:
        held = await next_msg(a)
        await asyncio.sleep(0.4)
        for outcome in ("accept", "release", "reject"):
            with pytest.raises(FencedError):
                await a.acknowledge(held, outcome)  # type: ignore[arg-type]
        # Nothing changed: the message is still there, for the next member, as delivery 2.
        again = await next_msg(b)
        assert (where(again), again.attempts) == (eid, 2)
        await b.acknowledge(again)
    assert await admin.count_dead_letters("t", "g") == 0


async def test_release_makes_the_message_available_at_once_with_a_higher_count(
        target: Target, admin: Admin, namespace: str) -> None:
    await admin.create_topic("t", 1)
    [eid] = await produce(target, namespace, 1)
    async with share(target, namespace, batch_size=1) as a, share(target, namespace, batch_size=1) as b:
        first = await next_msg(a)
        await a.acknowledge(first, "release")
        began = time.monotonic()
        second = await next_msg(b, timeout=2.0)  # lock_timeout is 30 s: the release freed it
        assert time.monotonic() - began < 2.0
        assert (where(second), second.attempts) == (eid, 2)
        with pytest.raises(FencedError):
            await a.acknowledge(first)  # released: no longer a's
        await b.acknowledge(second)


async def test_the_next_message_does_not_acknowledge_the_previous_and_renew_extends_the_lock(
        target: Target, admin: Admin, namespace: str) -> None:
    await admin.create_topic("t", 1)
    ids = await produce(target, namespace, 2)
    async with share(target, namespace, lock_timeout=0.6, batch_size=2) as a, \
            share(target, namespace, lock_timeout=0.6) as b:
        m1 = await next_msg(a)
        m2 = await next_msg(a)
        assert [where(m1), where(m2)] == ids
        for _ in range(3):  # 1.2 s in all, twice the lock, renewed every 0.4 s
            await asyncio.sleep(0.4)
            await a.renew(m1)
            await a.renew(m2)
        assert await nothing_within(b, 0.2)
        info = await admin.describe_share_group("t", "g")
        assert sorted(f"{m.partition}/{m.id}" for m in info.in_flight) == ids
        await a.acknowledge(m1)
        await a.acknowledge(m2)


async def test_dead_letters_rejected_and_exhausted_then_requeue_and_purge(
        target: Target, admin: Admin, namespace: str) -> None:
    await admin.create_topic("t", 1)
    await produce(target, namespace, 3)
    deliveries: Counter[int] = Counter()
    async with share(target, namespace, lock_timeout=0.3, max_delivery_attempts=2) as sc:
        async def consume() -> None:
            async for msg in sc:
                seq = msg.value["seq"]
                deliveries[seq] += 1
                assert msg.attempts == deliveries[seq]
                if seq == 0:
                    await sc.acknowledge(msg, "reject")
                elif seq == 1:
                    await sc.acknowledge(msg, "release")
                # seq 2: never acknowledged, its lock expires each time

        task = asyncio.create_task(consume())
        try:
            await eventually(lambda: _count_is(admin, 3), timeout=10, message="three dead letters")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    letters = await admin.dead_letters("t", "g")
    by_seq = {d.value["seq"]: d for d in letters}
    assert by_seq[0].reason == "rejected" and by_seq[0].attempts == 1
    assert by_seq[1].reason == "delivery attempts exhausted" and by_seq[1].attempts == 2
    assert by_seq[2].reason == "delivery attempts exhausted" and by_seq[2].attempts == 2
    assert deliveries == Counter({0: 1, 1: 2, 2: 2})
    assert {d.group for d in letters} == {"g"}

    # Requeue works for a share group as for a consumer group: they come back, from 1.
    assert await admin.requeue_dead_letters("t", "g", [by_seq[0].dead_letter_id, by_seq[1].dead_letter_id]) == 2
    seen: list[Message] = []
    async with share(target, namespace) as sc:
        while len(seen) < 2:
            msg = await next_msg(sc)
            seen.append(msg)
            await sc.acknowledge(msg)
    assert sorted(m.value["seq"] for m in seen) == [0, 1] and {m.attempts for m in seen} == {1}
    assert await admin.delete_dead_letters("t", "g", [by_seq[2].dead_letter_id]) == 1
    assert await admin.purge_dead_letters("t", "g") == 0


async def _count_is(admin: Admin, n: int) -> bool:
    return await admin.count_dead_letters("t", "g") == n


async def test_process_accepts_releases_after_backoff_and_rejects_on_dead_letter(
        target: Target, admin: Admin, namespace: str) -> None:
    await admin.create_topic("t", 2)
    await produce(target, namespace, 20)
    attempts: dict[int, list[int]] = {}
    accepted: set[int] = set()

    async def handle(msg: Message) -> None:
        seq = msg.value["seq"]
        attempts.setdefault(seq, []).append(msg.attempts)
        if seq == 3 and msg.attempts == 1:
            raise RuntimeError("flaky")
        if seq == 5:
            raise DeadLetter("no such customer")
        accepted.add(seq)

    sc = share(target, namespace)
    async with sc, processing((sc, handle)):
        await eventually(lambda: len(accepted) == 19, timeout=10)
        await eventually(lambda: _count_is(admin, 1), timeout=5)
    assert attempts[3] == [1, 2]
    assert attempts[5] == [1]
    [letter] = await admin.dead_letters("t", "g")
    assert (letter.value["seq"], letter.reason, letter.error) == (5, "rejected", "no such customer")
    assert sc.stats()["processed"] == 19


async def test_a_share_group_and_a_consumer_group_of_the_same_name_are_independent(
        target: Target, admin: Admin, namespace: str) -> None:
    await admin.create_topic("t", 2)
    by_share: set[str] = set()
    by_group: set[str] = set()

    async def to_share(msg: Message) -> None:
        by_share.add(where(msg))

    async def to_group(msg: Message) -> None:
        by_group.add(where(msg))

    sc = share(target, namespace)
    consumer = make_consumer(target.url, namespace, "t", group="g", start="earliest")
    async with sc, consumer:
        group_task = asyncio.create_task(consumer.process(to_group))
        async with processing((sc, to_share)):
            ids = await produce(target, namespace, 200)
            await eventually(lambda: by_share == set(ids) and by_group == set(ids), timeout=20)
        await consumer.stop()
        await group_task
    info = await admin.describe_group("t", "g")
    assert info.pending == 0 and info.lag == 0
    share_info = await admin.describe_share_group("t", "g")
    assert share_info.in_flight == () and share_info.lag == 0


async def test_describe_share_group_lists_members_messages_in_flight_and_delivery_counts(
        target: Target, admin: Admin, namespace: str) -> None:
    await admin.create_topic("t", 1)
    with pytest.raises(UnknownGroupError):
        await admin.describe_share_group("t", "g")
    await produce(target, namespace, 10)
    async with share(target, namespace, batch_size=4) as a, share(target, namespace, batch_size=2) as b:
        held_a = [await next_msg(a) for _ in range(3)]
        held_b = [await next_msg(b) for _ in range(2)]
        await b.acknowledge(held_b[0], "release")
        info = await admin.describe_share_group("t", "g")
        members = {m.member_id: m for m in info.members}
        # a acquired 4 and handed out 3; b acquired 2 and released 1
        assert members[a.member_id].in_flight == 4 and members[b.member_id].in_flight == 1
        in_flight = {m.id: m for m in info.in_flight}
        assert {m.id for m in held_a} <= {i for i, m in in_flight.items() if m.member_id == a.member_id}
        assert in_flight[held_b[1].id].delivery_count == 1 and held_b[0].id not in in_flight
        assert (info.released, info.lag) == (1, 4)  # 10 written, 6 delivered
        await a.acknowledge(held_a[0])
    # Stopping released what they held and forgot their names.
    info = await admin.describe_share_group("t", "g")
    assert (info.members, info.in_flight, info.released, info.lag) == ((), (), 5, 4)


async def test_sigkill_of_a_member_loses_nothing_its_locks_pass_to_others(
        target: Target, admin: Admin, namespace: str, tmp_path: Path) -> None:
    """Three member processes; one is SIGKILLed mid-stream. Verdict by the history
    checker: nothing lost, nothing left unacked, and every extra delivery explained (the
    victim's in-flight messages, or a lock a survivor reports lost). No order is promised."""
    await admin.create_topic("t", 2)
    lock = 1.0
    logs = [tmp_path / f"w{i}.log" for i in range(3)]
    procs = [_spawn(target.url, namespace, log, f"w{i}", lock) for i, log in enumerate(logs)]
    try:
        await eventually(lambda: all(p.exists() and read_log(p) for p in logs), timeout=30)
        ids = await produce(target, namespace, 1500)

        def acked_by_victim() -> int:
            return sum(e.event == "acked" for e in read_log(logs[0]))

        await eventually(lambda: acked_by_victim() >= 50, timeout=30)
        os.kill(procs[0].pid, signal.SIGKILL)
        killed_ns = time.monotonic_ns()
        procs[0].wait(5)

        def all_acked() -> bool:
            return {_at(e) for log in logs for e in read_log(log) if e.event == "acked"} >= set(ids)

        await eventually(all_acked, timeout=60, interval=0.1, message="every message handled")
        victim = read_log(logs[0])
        orphans = {_at(e) for e in victim if e.event == "handled"} - {_at(e) for e in victim if e.event == "acked"}
        survivors = [e for log in logs[1:] for e in read_log(log) if e.event == "handled"]
        # Whatever the victim had in hand reached another member, only after its lock passed.
        for eid in orphans:
            later = [e for e in survivors if _at(e) == eid]
            assert later and min(e.t_ns for e in later) >= killed_ns, eid
        await eventually(lambda: _nothing_in_flight(admin), timeout=10)
        for p in procs[1:]:
            p.terminate()  # a graceful stop: each survivor logs "stopped" with its stats
        for p, log in zip(procs[1:], logs[1:], strict=True):
            assert p.wait(10) == 0, log.with_suffix(".err").read_text()
        locks_lost = sum(_stopped_stats(log).get("locks_lost", 0) for log in logs[1:])
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    report = check_history(_sent(ids), [e for log in logs for e in read_log(log)])
    # Share groups promise no order: the report's order violations are not a verdict.
    assert not (report.lost or report.unacked or report.unexpected or report.mismatched), report.summary()
    # An extra delivery is one of the victim's (killed before its accept reached Redis),
    # or one a survivor held past its lock (counted in its stats as locks_lost).
    by_victim = {(e.key, e.seq) for e in victim if e.event == "handled"}
    redelivered_from_victim = sum(1 for m in report.duplicated if m in by_victim)
    assert report.duplicates <= redelivered_from_victim + locks_lost, (locks_lost, report.summary())


def _sent(ids: list[str]) -> list[Sent]:
    """What :func:`produce` wrote from 0: ``ids[i]`` is ``{"seq": i}`` with key ``k{i % 100}``."""
    out = []
    for seq, at in enumerate(ids):
        partition, entry_id = at.split("/", 1)
        out.append(Sent(f"k{seq % 100}", seq, entry_id, int(partition)))
    return out


def _stopped_stats(log: Path) -> dict[str, int]:
    """The stats a share worker logged on its graceful stop."""
    stopped = [rec for line in log.read_bytes().splitlines() if line
               for rec in [json.loads(line)] if rec.get("e") == "stopped"]
    assert stopped, f"{log.name}: no 'stopped' line"
    stats: dict[str, int] = stopped[-1]["stats"]
    return stats


def _at(e: Event) -> str:
    return f"{e.partition}/{e.entry_id}"


def _spawn(url: str, namespace: str, log: Path, member: str, lock: float) -> subprocess.Popen[bytes]:
    with open(log.with_suffix(".err"), "wb") as err:  # the child keeps its own fd
        return subprocess.Popen(
            [sys.executable, str(WORKER), "--url", url, "--namespace", namespace, "--topic", "t",
             "--group", "g", "--log", str(log), "--member", member, "--lock", str(lock),
             "--work-ms", "5", "--batch-size", "40"],
            stdout=subprocess.DEVNULL, stderr=err)


async def _nothing_in_flight(admin: Admin) -> bool:
    info = await admin.describe_share_group("t", "g")
    return info.in_flight == () and info.lag == 0


@pytest.mark.single_node
async def test_lost_replies_and_a_lost_connection_lose_nothing(
        target: Target, admin: Admin, namespace: str, proxy: FaultProxy) -> None:
    """A reply cut half-way (the script ran: entries acquired unseen, or settled unknown)
    and every connection reset for a while: process() goes on, and every message is
    accepted; what was acquired unseen comes back once its lock passes."""
    await admin.create_topic("t", 2)
    accepted: set[str] = set()

    async def handle(msg: Message) -> None:
        await asyncio.sleep(0.002)
        accepted.add(where(msg))

    sc = ShareConsumer("t", group="g", url=proxy.url, namespace=namespace, start="earliest",
                       lock_timeout=1.0, batch_size=20)
    async with sc:
        task = asyncio.create_task(sc.process(handle))
        ids = await produce(target, namespace, 300)
        await eventually(lambda: len(accepted) >= 50, timeout=10)
        proxy.cut_next_reply(b"EVALSHA", times=3)
        await eventually(lambda: not proxy.armed and proxy.cut_replies >= 3, timeout=10)
        proxy.refuse_new()
        proxy.reset_all()
        await asyncio.sleep(0.5)
        proxy.heal()
        await eventually(lambda: accepted >= set(ids), timeout=30, message="every message accepted")
        assert not task.done()
        stats = sc.stats()
        assert stats.get("fetch_errors", 0) + stats.get("redis_errors", 0) >= 1, stats
        await sc.stop()
        await task
    await eventually(lambda: _nothing_in_flight(admin), timeout=5)


async def test_a_partition_added_while_members_run_is_read_from_its_first_entry(
        target: Target, admin: Admin, namespace: str) -> None:
    await admin.create_topic("t", 1)
    async with share(target, namespace, start="latest") as sc:
        await admin.alter_partitions("t", 2)
        async with Producer(target.url, namespace=namespace) as producer:
            meta = await producer.send("t", {"seq": 1}, partition=1)
        msg = await next_msg(sc, timeout=10)  # seen at the member's next look at the topic
        assert (msg.partition, msg.id, msg.attempts) == (1, meta.id, 1)
        await sc.acknowledge(msg)


async def test_a_partition_added_while_no_member_runs_is_read_from_its_first_entry(
        target: Target, admin: Admin, namespace: str) -> None:
    """A share group that exists (a member ran, then stopped) gets the group on a partition
    added meanwhile at 0: a member that starts later with start="latest" still reads what
    was written there before it started (as consumer groups do after growth)."""
    await admin.create_topic("t", 1)
    async with share(target, namespace, start="latest"):
        pass
    await admin.alter_partitions("t", 2)
    async with Producer(target.url, namespace=namespace) as producer:
        meta = await producer.send("t", {"seq": 1}, partition=1)
    async with share(target, namespace, start="latest") as sc:
        msg = await next_msg(sc, timeout=10)
        assert (msg.partition, msg.id) == (1, meta.id)
        await sc.acknowledge(msg)


async def test_stop_from_a_handler_ends_process_and_releases_what_it_held(
        target: Target, admin: Admin, namespace: str) -> None:
    await admin.create_topic("t", 1)
    ids = await produce(target, namespace, 20)
    first: list[str] = []
    sc = share(target, namespace, batch_size=10)

    async def handle(msg: Message) -> None:
        first.append(where(msg))
        if len(first) == 1:
            with pytest.raises(IllegalStateError):  # one process() call at a time
                await sc.process(handle)
        if len(first) == 3:
            await sc.stop()  # returns at once; the stop completes after this handler

    async with sc:
        await asyncio.wait_for(sc.process(handle), 10)
        with pytest.raises(ConsumerStoppedError):
            await sc.process(handle)
    assert len(first) == 3
    rest: list[Message] = []
    async with share(target, namespace) as other:
        while len(rest) < 17:
            msg = await next_msg(other)
            rest.append(msg)
            await other.acknowledge(msg)
    assert sorted(first + [where(m) for m in rest]) == sorted(ids)
    # the 7 acquired and never handed out kept their delivery count
    assert sorted(m.attempts for m in rest) == [1] * 17


def test_process_returns_after_a_stop_from_a_handler_is_complete(redis_url: str, namespace: str) -> None:
    """A program whose handler calls stop() leaves its event loop once process() returns:
    the stop must be complete by then, or asyncio.run cancels its last steps and the
    share consumer's connections are left open (found as unclosed sockets at collection)."""

    async def program(round_: int) -> None:
        if round_ == 0:
            async with Admin(redis_url, namespace=namespace) as admin:
                await admin.create_topic("t", 1)
        async with Producer(redis_url, namespace=namespace) as producer:
            await producer.send_batch("t", [Record({"seq": i}, key="k") for i in range(3)])
        sc = ShareConsumer("t", group="g", url=redis_url, namespace=namespace, start="earliest")

        async def handle(msg: Message) -> None:
            await sc.stop()

        await asyncio.wait_for(sc.process(handle), 10)

    assert resource_warnings(program) == []
