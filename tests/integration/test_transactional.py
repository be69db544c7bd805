"""Consume → produce, exactly once (docs/exactly-once.md, "Consume → produce"):
``Consumer.process(handler, transactional=True)`` writes each input's outputs with its
ack in one fenced script call.

Each test runs twice (``target``: single / cluster) in its own namespace.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable

import pytest
from support.eventually import eventually
from support.proxy import FaultProxy
from support.servers import AsyncClient, Target

from redcurrent import (
    Admin,
    ConfigError,
    Consumer,
    DeadLetter,
    Message,
    Output,
    Producer,
    Record,
    UnknownTopicError,
    scripts,
)
from redcurrent.keys import Keys

_COMMIT_SHA = scripts.script("commit_outputs").sha.encode()
P = 4
FAST = {"heartbeat_interval": 0.2, "session_timeout": 1.5}


async def setup(admin: Admin, target: Target, namespace: str, n: int, *, colocate: bool = True) -> list[str]:
    """Topics ``in`` and ``out`` (co-located unless told), and ``n`` keyed inputs {"seq": i}."""
    await admin.create_topic("in", partitions=P)
    await admin.create_topic("out", partitions=P, colocate_with="in" if colocate else None)
    async with Producer(target.url, namespace=namespace) as producer:
        sent = await producer.send_batch("in", [Record({"seq": i}, key=f"k{i % 10}") for i in range(n)])
    return [m.id for m in sent]


async def outputs(admin: Admin, topic: str = "out") -> list[Message]:
    info = await admin.describe_topic(topic)
    got: list[Message] = []
    for p in range(info.partitions):
        got += await admin.read_partition(topic, p, count=100_000)
    return got


async def run(consumer: Consumer, handler: Callable[[Message], Awaitable[object]],
              done: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    task = asyncio.create_task(consumer.process(handler, transactional=True))
    try:
        await eventually(lambda: task.done() or done(), timeout=timeout, interval=0.05)
        if task.done():
            task.result()  # raises what process() raised
    finally:
        await consumer.stop()
        await asyncio.gather(task, return_exceptions=True)


def consumer(target: Target, namespace: str, **kw: object) -> Consumer:
    options: dict[str, object] = {**FAST, **kw}
    return Consumer("in", group="g", url=target.url, namespace=namespace, start="earliest",
                    **options)  # type: ignore[arg-type]


async def test_each_input_gets_its_outputs_once_in_its_partition(
        target: Target, admin: Admin, namespace: str) -> None:
    n = 300
    await setup(admin, target, namespace, n)

    async def handle(msg: Message) -> Iterable[Output]:
        return [Output("out", {"seq": msg.value["seq"]}, key=msg.key, headers={"src": "t"})]

    async def all_out() -> bool:
        return (await admin.describe_topic("out")).length >= n

    async with consumer(target, namespace) as c:
        await run(c, handle, all_out)
        assert c.stats()["processed"] == n
    got = await outputs(admin)
    assert sorted(m.value["seq"] for m in got) == list(range(n))
    inputs = {(m.partition, m.id): m for p in range(P) for m in await admin.read_partition("in", p, count=1000)}
    for m in got:
        topic, partition, input_id = m.headers["rc-input"].split("/")
        assert topic == "in"
        source = inputs[int(partition), input_id]
        assert source.value == m.value
        assert m.partition == source.partition and m.key == source.key and m.headers["src"] == "t"
    for p in range(P):  # per-key order kept
        seqs: dict[str | bytes | None, list[int]] = {}
        for m in await admin.read_partition("out", p, count=1000):
            seqs.setdefault(m.key, []).append(m.value["seq"])
        assert all(s == sorted(s) for s in seqs.values())
    assert all(p.pending == 0 and p.lag == 0 for p in (await admin.describe_group("in", "g")).partitions)


async def test_a_failing_input_is_dead_lettered_with_no_output(
        target: Target, admin: Admin, namespace: str) -> None:
    n = 50
    await setup(admin, target, namespace, n)
    calls: Counter[int] = Counter()

    async def handle(msg: Message) -> list[Output]:
        seq = msg.value["seq"]
        calls[seq] += 1
        if seq == 7:
            raise DeadLetter("no")
        if seq == 9 and calls[seq] == 1:
            raise RuntimeError("once")  # retried in place, then written once
        if seq % 5 == 0:
            return []  # acked, nothing written
        return [Output("out", seq, key=msg.key), Output("out", -seq, key=msg.key)]

    expected = [s for s in range(n) if s != 7 and s % 5]

    async def all_out() -> bool:
        return (await admin.describe_topic("out")).length >= 2 * len(expected)

    async with consumer(target, namespace, backoff=None) as c:
        await run(c, handle, all_out)
        await eventually(lambda: c.stats().get("dead_lettered") == 1, timeout=10)
    got = Counter(m.value for m in await outputs(admin))
    assert got == Counter([*expected, *(-s for s in expected)])
    assert [d.value for d in await admin.dead_letters("in", "g")] == [{"seq": 7}]
    await eventually(_all_acked(admin), timeout=10)


def _all_acked(admin: Admin) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return all(p.pending == 0 and p.lag == 0 for p in (await admin.describe_group("in", "g")).partitions)
    return check


async def test_an_output_topic_not_colocated(target: Target, admin: Admin, namespace: str) -> None:
    """On a cluster it is refused before anything is written; on one node the output is
    routed by its key."""
    n = 40
    await setup(admin, target, namespace, n, colocate=False)

    async def handle(msg: Message) -> list[Output]:
        return [Output("out", msg.value, key=msg.key)]

    async def all_out() -> bool:
        return (await admin.describe_topic("out")).length >= n

    async with consumer(target, namespace) as c:
        if target.is_cluster:
            with pytest.raises(ConfigError, match="co-located"):
                await run(c, handle, all_out)
            assert (await admin.describe_topic("out")).length == 0
            assert sum(p.lag or 0 for p in (await admin.describe_group("in", "g")).partitions) + sum(
                p.pending for p in (await admin.describe_group("in", "g")).partitions) == n
        else:
            await run(c, handle, all_out)
            from redcurrent.partitioner import partition_for_key
            got = await outputs(admin)
            assert sorted(m.value["seq"] for m in got) == list(range(n))
            assert all(m.partition == partition_for_key(m.key, P) for m in got)  # type: ignore[arg-type]


async def test_a_deleted_output_topic_writes_and_acks_nothing(
        target: Target, admin: Admin, namespace: str) -> None:
    await setup(admin, target, namespace, 0)
    await admin.delete_topic("out")
    await admin.create_topic("gone", partitions=P, colocate_with="in")

    async def handle(msg: Message) -> list[Output]:
        return [Output("gone", msg.value, key=msg.key)]

    async with consumer(target, namespace) as c:
        task = asyncio.create_task(c.process(handle, transactional=True))
        await eventually(lambda: c.assignment(), timeout=10)
        await asyncio.sleep(0.3)  # the output topic's metadata is read at the first output
        async with Producer(target.url, namespace=namespace) as producer:
            await producer.send("in", {"seq": 0}, key="a")
            await eventually(lambda: c.stats().get("processed") == 1, timeout=10)
            await admin.delete_topic("gone")  # deleted while the consumer knows it
            await producer.send("in", {"seq": 1}, key="a")
        with pytest.raises(UnknownTopicError, match="deleted"):
            await asyncio.wait_for(task, 20)
    group = await admin.describe_group("in", "g")
    assert sum(p.pending for p in group.partitions) == 1  # the second input: not acked


async def test_zombie_whose_lease_expired_writes_nothing(
        target: Target, admin: Admin, namespace: str) -> None:
    """Consumer A freezes in its handler (a blocked event loop: a GC pause, a stopped
    VM) past its session. Meanwhile consumer B (its own thread and event loop) takes the
    partitions over and writes every output, the frozen input's too. A wakes up with its
    lease expired and commits: the script refuses (nothing written, nothing acked) and
    no duplicate output appears."""
    n = 20
    await setup(admin, target, namespace, n)
    handled: list[int] = []
    frozen: list[int] = []
    b_done = threading.Event()
    b_errors: list[BaseException] = []

    def run_b() -> None:
        async def survivor(msg: Message) -> list[Output]:
            return [Output("out", {"seq": msg.value["seq"], "by": "b"}, key=msg.key)]

        async def main() -> None:
            async with Admin(target.url, namespace=namespace) as adm:
                async def all_out() -> bool:
                    return (await adm.describe_topic("out")).length >= n

                async with consumer(target, namespace, member_id="b") as b:
                    await run(b, survivor, all_out)
        try:
            asyncio.run(main())
        except BaseException as exc:
            b_errors.append(exc)
        finally:
            b_done.set()

    thread = threading.Thread(target=run_b, name="consumer-b")
    holder: list[Consumer] = []

    async def zombie(msg: Message) -> list[Output]:
        handled.append(msg.value["seq"])
        if not frozen and holder[0].stats().get("processed", 0) > 0:
            frozen.append(msg.value["seq"])
            thread.start()
            b_done.wait(60)  # blocks A's event loop: no heartbeat, its owner keys expire
        return [Output("out", {"seq": msg.value["seq"], "by": "a"}, key=msg.key)]

    try:
        async with consumer(target, namespace, member_id="a", batch_size=2) as a:
            holder.append(a)
            task = asyncio.create_task(a.process(zombie, transactional=True))
            # Refused by the script (commits_fenced), or dropped before it was sent, when
            # A's heartbeat told it first that the partition was lost: nothing written.
            await eventually(lambda: b_done.is_set() and (a.stats().get("commits_fenced", 0)
                                                          or a.stats().get("partitions_lost", 0)), timeout=60)
            await a.stop()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        b_done.wait(60)
        if thread.is_alive() or thread.ident is not None:
            thread.join(30)
    assert not b_errors, b_errors
    got = await outputs(admin)
    by = {m.value["seq"]: m.value["by"] for m in got}
    assert by[frozen[0]] == "b"  # the zombie's output of it was refused
    assert Counter(m.value["seq"] for m in got) == Counter(range(n))  # 0 missing, 0 duplicates
    await eventually(_all_acked(admin), timeout=10)


async def test_a_commit_after_a_takeover_is_refused_by_the_script(
        target: Target, admin: Admin, target_client: AsyncClient, namespace: str) -> None:
    """The script's own fence, without waiting for the coordinator to notice: while a
    handler runs, another owner's token replaces ours in the owner key (what a takeover's
    claim does); the commit then writes and acks nothing (FENCED), and the input is
    handled again once the partition is ours again: one output each."""
    n = 40
    await setup(admin, target, namespace, n)
    keys = Keys(namespace)
    stolen: list[int] = []
    holder: list[Consumer] = []

    async def handle(msg: Message) -> list[Output]:
        if not stolen and holder[0].stats().get("processed", 0) > 0:  # the output's route is known
            stolen.append(msg.value["seq"])
            await target_client.set(keys.owner("in", msg.partition, "g"), "thief|x", px=1500)
        return [Output("out", {"seq": msg.value["seq"]}, key=msg.key)]

    async def all_out() -> bool:
        return (await admin.describe_topic("out")).length >= n

    # A slow heartbeat: the commit, sent as the handler returns, reaches Redis first.
    async with consumer(target, namespace, batch_size=5, heartbeat_interval=1.0, session_timeout=4.0) as c:
        holder.append(c)
        await run(c, handle, all_out, timeout=60)
        assert c.stats().get("commits_fenced") == 1
    assert Counter(m.value["seq"] for m in await outputs(admin)) == Counter(range(n))
    await eventually(_all_acked(admin), timeout=10)


async def test_transactional_refuses_concurrency(target: Target, admin: Admin, namespace: str) -> None:
    await setup(admin, target, namespace, 0)
    async with consumer(target, namespace, concurrency=4) as c:
        with pytest.raises(ConfigError, match="concurrency"):
            await c.process(lambda m: asyncio.sleep(0), transactional=True)


@pytest.mark.single_node
async def test_a_commit_retried_after_a_lost_reply_writes_nothing_twice(
        target: Target, admin: Admin, target_client: AsyncClient, namespace: str, proxy: FaultProxy) -> None:
    """The commit ran, its reply was lost (the connection closed), and the consumer sent
    it again: the script writes an input's outputs only when its own XACK took the input
    out of the pending list, so the second run writes nothing."""
    n = 30
    await setup(admin, target, namespace, n)
    await target_client.script_load(scripts.script("commit_outputs").source)  # the drops hit real runs
    proxy.drop_next_reply(_COMMIT_SHA, times=2)

    async def handle(msg: Message) -> list[Output]:
        return [Output("out", {"seq": msg.value["seq"]}, key=msg.key)]

    async def all_out() -> bool:
        return not proxy.armed and (await admin.describe_topic("out")).length >= n

    c = Consumer("in", group="g", url=proxy.url, namespace=namespace, start="earliest", **FAST)  # type: ignore[arg-type]
    async with c:
        await run(c, handle, all_out)
        assert c.stats().get("redis_errors", 0) >= 2  # both lost replies were retried
    assert Counter(m.value["seq"] for m in await outputs(admin)) == Counter(range(n))
    await eventually(_all_acked(admin), timeout=10)


@pytest.mark.single_node
def test_the_blocking_consumer_processes_transactionally(target: Target, namespace: str) -> None:
    """``redcurrent.sync.Consumer.process(handler, transactional=True)``: a plain
    function returns the outputs, as an async handler does."""
    from redcurrent import sync

    n = 30
    with sync.Admin(target.url, namespace=namespace) as admin:
        admin.create_topic("in", partitions=P)
        admin.create_topic("out", partitions=P, colocate_with="in")
    with sync.Producer(target.url, namespace=namespace) as producer:
        producer.send_batch("in", [Record({"seq": i}, key=f"k{i % 5}") for i in range(n)])
    c = sync.Consumer("in", group="g", url=target.url, namespace=namespace, start="earliest",
                      heartbeat_interval=0.2, session_timeout=1.5)
    seen: list[int] = []

    def handle(msg: Message) -> list[Output]:
        seen.append(msg.value["seq"])
        if len(seen) == n:
            c.stop()  # from inside a handler: the stop commits what is in hand
        return [Output("out", {"seq": msg.value["seq"]}, key=msg.key)]

    c.process(handle, transactional=True)
    with sync.Admin(target.url, namespace=namespace) as admin:
        got = [m for p in range(P) for m in admin.read_partition("out", p)]
    assert Counter(m.value["seq"] for m in got) == Counter(range(n))


async def test_outputs_follow_the_output_topics_trimming(target: Target, admin: Admin, namespace: str) -> None:
    """The commit trims each output partition it wrote to by the topic's ``maxlen``
    (approximate, as the produce script does)."""
    n = 1200
    await admin.create_topic("in", partitions=P)
    await admin.create_topic("out", partitions=P, colocate_with="in", maxlen=10)
    async with Producer(target.url, namespace=namespace) as producer:
        await producer.send_batch("in", [Record({"seq": i}, key=f"k{i % 10}") for i in range(n)])
    done: list[int] = []

    async def handle(msg: Message) -> list[Output]:
        done.append(msg.value["seq"])
        return [Output("out", {"seq": msg.value["seq"]}, key=msg.key)]

    async def all_handled() -> bool:
        return len(done) >= n and await _all_acked(admin)()

    async with consumer(target, namespace) as c:
        await run(c, handle, all_handled)
    assert (await admin.describe_topic("out")).length < n // 2  # trimmed as written


async def test_an_idle_reader_of_the_outputs_wakes_at_each_commit(
        target: Target, admin: Admin, namespace: str) -> None:
    """A consumer of ``out``, idle in its wait (on a cluster: the shard-channel wait), is
    woken by a transactional consumer's commits and by a producer transaction's commit,
    not by a fallback poll (30 s): both commits announce their writes like a send."""
    await setup(admin, target, namespace, 0)
    seen: list[int] = []

    async def read(msg: Message) -> None:
        seen.append(msg.value["seq"])

    async def bill(msg: Message) -> Iterable[Output]:
        return [Output("out", {"seq": msg.value["seq"]}, key=msg.key)]

    reader = Consumer("out", group="r", url=target.url, namespace=namespace, start="earliest", **FAST)
    billing = consumer(target, namespace)
    async with reader, billing:
        tasks = [asyncio.create_task(reader.process(read)),
                 asyncio.create_task(billing.process(bill, transactional=True))]
        try:
            await eventually(lambda: len(reader.assignment()) == P and len(billing.assignment()) == P, timeout=15)
            await asyncio.sleep(1.0)  # both idle now
            async with Producer(target.url, namespace=namespace) as producer:
                await producer.send("in", {"seq": 1}, key="k1")
                await eventually(lambda: 1 in seen, timeout=5, message="woken by the consume→produce commit")
                await asyncio.sleep(1.0)  # idle again
                async with producer.transaction() as tx:
                    await tx.send("out", {"seq": 2}, key="k1")
                await eventually(lambda: 2 in seen, timeout=5, message="woken by the transaction's commit")
        finally:
            await reader.stop()
            await billing.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
