"""redcurrent.sync: the blocking clients, from plain threads, inside an event loop, and at exit.

Every claim is checked in Redis itself (XRANGE, XPENDING, INFO commandstats), as in the
async suites; consumers use the short timeouts of tests/support/consuming.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from support.consuming import HB, REBALANCE, SESSION
from support.entries import as_fields
from support.servers import Target

import redcurrent
import redcurrent.sync
from redcurrent import (
    Backoff,
    BatchError,
    ConfigError,
    ConsumerStoppedError,
    FencedError,
    IllegalStateError,
    Message,
    ProducerClosedError,
    Record,
    RecordMetadata,
    TopicExistsError,
    TopicPartition,
    UnknownTopicError,
)
from redcurrent.keys import Keys
from redcurrent.sync import Admin, Consumer, Producer

pytestmark = pytest.mark.timeout(60)

TOPIC = "orders"


# --------------------------------------------------------------------------- helpers


def until(predicate: Callable[[], Any], timeout: float = 5.0, message: str = "") -> Any:
    """Poll ``predicate`` until it is truthy (the sync twin of support.eventually)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message or 'condition not met'} after {timeout}s (last: {value!r})")
        time.sleep(0.02)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as c:
        yield c


@pytest.fixture
def admin(redis_url: str, namespace: str) -> Iterator[Admin]:
    with Admin(redis_url, namespace=namespace) as a:
        yield a


def consumer(url: str, namespace: str, *topics: str, **options: Any) -> Consumer:
    options.setdefault("group", "g")
    options.setdefault("start", "earliest")
    for name, value in (("heartbeat_interval", HB), ("session_timeout", SESSION),
                        ("rebalance_timeout", REBALANCE)):
        options.setdefault(name, value)
    return Consumer(*(topics or (TOPIC,)), url=url, namespace=namespace, **options)


def pending(client: redis.Redis, namespace: str, partition: int = 0, group: str = "g") -> list[str]:
    rows = client.xpending_range(Keys(namespace).stream(TOPIC, partition), group, "-", "+", 1000)
    return [row["message_id"].decode() for row in rows]


def evalsha_calls(urls: list[str]) -> int:
    total = 0
    for url in urls:
        with redis.Redis.from_url(url) as c:
            total += int(c.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
    return total


def run_script(code: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=env)


# --------------------------------------------------------------------------- the surface


def _public(cls: type) -> dict[str, Any]:
    return {n: v for n, v in vars(cls).items() if not n.startswith("_") and callable(v)}


@pytest.mark.parametrize(("sync_cls", "async_cls"), [
    (Producer, redcurrent.Producer), (Consumer, redcurrent.Consumer), (Admin, redcurrent.Admin),
])
def test_every_public_async_method_has_a_blocking_twin_with_its_parameters(
    sync_cls: type, async_cls: type
) -> None:
    assert inspect.signature(sync_cls) == inspect.signature(async_cls)  # derived, not copied
    handlers = {"process", "process_batch"}  # sync handlers, plus threads=
    for name, method in _public(async_cls).items():
        twin = getattr(sync_cls, name, None)
        assert twin is not None, f"{sync_cls.__name__}.{name} is missing"
        assert not inspect.iscoroutinefunction(twin)
        if name not in handlers:
            assert inspect.signature(twin).parameters == inspect.signature(method).parameters, name
        assert twin.__doc__, f"{sync_cls.__name__}.{name} has no docstring"
    for name in ("__enter__", "__exit__", "close"):
        assert hasattr(sync_cls, name)
    undeclared = redcurrent.sync._UNDECLARED.get(sync_cls.__name__)
    assert not undeclared, (
        f"mirrored at run time but not declared (so untyped): add "
        f"`name = _blocking({async_cls.__name__}.name)` to redcurrent.sync.{sync_cls.__name__} "
        f"for {undeclared}"
    )


# --------------------------------------------------------------------------- Producer


def test_send_send_batch_and_flush_store_what_they_report(
    redis_url: str, namespace: str, client: redis.Redis, admin: Admin
) -> None:
    admin.create_topic(TOPIC, partitions=2)
    with Producer(redis_url, namespace=namespace) as producer:
        meta = producer.send(TOPIC, {"id": 1}, key="customer-7", headers={"source": "web"})
        metas = producer.send_batch(TOPIC, [Record({"id": i}, key=f"c{i}") for i in range(10)])
        future = producer.send_async(TOPIC, {"id": 99}, partition=1)
        producer.flush()
        assert future.done()
        assert producer.partitions_for(TOPIC) == 2
        assert producer.stats()["sent"] == 12
        assert len(producer.producer_id) == 32
    assert isinstance(meta, RecordMetadata)
    stored = {(p, eid.decode()) for p in (0, 1)
              for eid, _ in client.xrange(Keys(namespace).stream(TOPIC, p))}
    assert {(m.partition, m.id) for m in [meta, *metas, future.result()]} == stored


def test_fifty_threads_sharing_one_producer_coalesce_into_few_script_calls(
    redis_url: str, namespace: str, client: redis.Redis, admin: Admin
) -> None:
    admin.create_topic(TOPIC, partitions=4)
    producer = Producer(redis_url, namespace=namespace)
    producer.partitions_for(TOPIC)  # metadata known: count the sends only
    before = evalsha_calls([redis_url])
    sent: list[tuple[int, RecordMetadata]] = []

    def sender(t: int) -> None:
        for i in range(20):
            sent.append((t, producer.send(TOPIC, {"t": t, "i": i}, key=f"key-{t}")))

    threads = [threading.Thread(target=sender, args=(t,)) for t in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    calls = evalsha_calls([redis_url]) - before
    producer.close()
    assert calls < 150, f"1,000 sends from 50 threads took {calls} EVALSHA calls"
    assert len({(m.partition, m.id) for _, m in sent}) == 1000
    assert sum(client.xlen(Keys(namespace).stream(TOPIC, p)) for p in range(4)) == 1000
    by_thread: dict[int, list[tuple[int, int]]] = {}  # one key each: its sends keep their order
    for t, m in sent:
        ms, seq = m.id.split("-")
        by_thread.setdefault(t, []).append((int(ms), int(seq)))
    assert all(ids == sorted(ids) for ids in by_thread.values())


def test_measure_send_from_fifty_threads_against_a_thousand_tasks(
    redis_url: str, namespace: str, admin: Admin, capsys: pytest.CaptureFixture[str]
) -> None:
    """Prints the numbers (docs/sync.md quotes them); asserts no timing."""
    admin.create_topic(TOPIC, partitions=4)
    total = 10_000

    def threads_run() -> tuple[float, int]:
        with Producer(redis_url, namespace=namespace) as producer:
            producer.partitions_for(TOPIC)
            before, started = evalsha_calls([redis_url]), time.perf_counter()

            def sender(t: int) -> None:
                for i in range(total // 50):
                    producer.send(TOPIC, {"i": i}, key=f"k{(t * 200 + i) % 1000}")

            threads = [threading.Thread(target=sender, args=(t,)) for t in range(50)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return time.perf_counter() - started, evalsha_calls([redis_url]) - before

    async def tasks_run(tasks: int) -> tuple[float, int]:
        async with redcurrent.Producer(redis_url, namespace=namespace) as producer:
            await producer.partitions_for(TOPIC)
            before, started = evalsha_calls([redis_url]), time.perf_counter()

            async def sender(t: int) -> None:
                for i in range(total // tasks):
                    await producer.send(TOPIC, {"i": i}, key=f"k{(t * 10 + i) % 1000}")

            await asyncio.gather(*(sender(t) for t in range(tasks)))
            return time.perf_counter() - started, evalsha_calls([redis_url]) - before

    def send_async_run() -> tuple[float, int]:
        with Producer(redis_url, namespace=namespace) as producer:
            producer.partitions_for(TOPIC)
            before, started = evalsha_calls([redis_url]), time.perf_counter()
            futures = [producer.send_async(TOPIC, {"i": i}, key=f"k{i % 1000}") for i in range(total)]
            concurrent.futures.wait(futures)
            return time.perf_counter() - started, evalsha_calls([redis_url]) - before

    rows = []
    for _ in range(2):
        for name, run in (("50 threads, send", threads_run),
                          ("1,000 tasks, async send", lambda: asyncio.run(tasks_run(1000))),
                          ("50 tasks, async send", lambda: asyncio.run(tasks_run(50))),
                          ("1 thread, send_async", send_async_run)):
            elapsed, calls = run()
            rows.append(f"{name:>24}: {total / elapsed:9,.0f} msg/s, {calls:4d} script calls "
                        f"({total / calls:6.1f} records a call)")
    with capsys.disabled():
        print("\n" + "\n".join(rows))


def test_sends_racing_with_close_end_stored_or_refused_never_hung(
    redis_url: str, namespace: str, client: redis.Redis, admin: Admin
) -> None:
    admin.create_topic(TOPIC)
    producer = Producer(redis_url, namespace=namespace)
    producer.partitions_for(TOPIC)
    stored: list[RecordMetadata] = []
    refused: list[BaseException] = []

    def sender() -> None:
        while True:
            try:
                stored.append(producer.send(TOPIC, {"a": 1}))
                future = producer.send_async(TOPIC, {"a": 2})
                stored.append(future.result(10))
            except ProducerClosedError as exc:
                refused.append(exc)
                return

    threads = [threading.Thread(target=sender) for _ in range(20)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    producer.close()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    assert len(refused) == 20 and stored
    assert client.xlen(Keys(namespace).stream(TOPIC, 0)) == len(stored)


def test_errors_are_the_typed_errors_of_the_async_api(
    redis_url: str, namespace: str, admin: Admin
) -> None:
    with pytest.raises(ConfigError):
        Producer(redis_url, namespace=namespace, batch_size=0)  # at once, in the caller
    producer = Producer(redis_url, namespace=namespace, auto_create_topics=False)
    with pytest.raises(UnknownTopicError):
        producer.send("missing", {"a": 1})
    with pytest.raises(UnknownTopicError):
        producer.send_async("missing", {"a": 1}).result(5)
    admin.create_topic(TOPIC)
    with pytest.raises(TopicExistsError):
        admin.create_topic(TOPIC)
    producer.close()
    producer.close()  # idempotent
    with pytest.raises(ProducerClosedError):
        producer.send(TOPIC, {"a": 1})
    with pytest.raises(ProducerClosedError):
        producer.send_async(TOPIC, {"a": 1})
    c = consumer(redis_url, namespace)
    c.close()
    with pytest.raises(ConsumerStoppedError):
        c.getone()
    assert list(c) == []  # a stopped consumer's iteration ends, as the async one's


def test_blocking_calls_inside_a_running_event_loop_raise_illegal_state(
    redis_url: str, namespace: str, admin: Admin
) -> None:
    admin.create_topic(TOPIC)
    producer = Producer(redis_url, namespace=namespace)
    c = consumer(redis_url, namespace)

    async def main() -> RecordMetadata:
        for call in (lambda: producer.send(TOPIC, {"a": 1}), producer.flush, c.getone,
                     lambda: next(iter(c)), admin.list_topics, c.start):
            with pytest.raises(IllegalStateError, match="runs an event loop"):
                call()
        # send_async never blocks: allowed, and awaitable through wrap_future
        return await asyncio.wrap_future(producer.send_async(TOPIC, {"a": 2}))

    meta = asyncio.wait_for(main(), 10)
    assert asyncio.run(meta).topic == TOPIC
    producer.close()
    c.close()


def test_a_producer_left_open_flushes_at_interpreter_exit(
    redis_url: str, namespace: str, client: redis.Redis
) -> None:
    """No close(), no flush(): 200 queued sends are stored when the script ends. The URL
    names localhost, so connecting at exit resolves a host name (in our own threads:
    concurrent.futures refuses work by then)."""
    url = redis_url.replace("127.0.0.1", "localhost")
    result = run_script(f"""
        from redcurrent.sync import Producer
        producer = Producer({url!r}, namespace={namespace!r})
        futures = [producer.send_async("exit", {{"i": i}}) for i in range(200)]
    """)
    assert result.returncode == 0, result.stderr
    assert client.xlen(Keys(namespace).stream("exit", 0)) == 200


def test_a_consumer_left_open_at_exit_acks_unless_the_program_died_of_an_exception(
    redis_url: str, namespace: str, client: redis.Redis, admin: Admin
) -> None:
    admin.create_topic(TOPIC)
    with Producer(redis_url, namespace=namespace) as producer:
        ids = [producer.send(TOPIC, {"i": i}).id for i in range(2)]
    script = f"""
        from redcurrent.sync import Consumer
        consumer = Consumer({TOPIC!r}, group="g", url={redis_url!r}, namespace={namespace!r},
                            start="earliest", heartbeat_interval={HB}, session_timeout={SESSION})
        msg = consumer.getone()
        print(msg.id)
        if msg.value["i"] == 0:
            raise SystemExit(0)                       # a normal end: the message is handled
        raise RuntimeError("the handler died")        # an uncaught error: it is not
    """
    first = run_script(script)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == [ids[0]]
    assert pending(client, namespace) == [ids[1]] or pending(client, namespace) == []
    second = run_script(script)
    assert second.returncode == 1 and "the handler died" in second.stderr
    assert second.stdout.split() == [ids[1]]
    assert ids[1] in pending(client, namespace)  # left for the group's next member
    assert ids[0] not in pending(client, namespace)


def test_a_producer_made_before_fork_works_in_the_child_and_a_used_one_refuses(
    redis_url: str, namespace: str, client: redis.Redis
) -> None:
    """gunicorn --preload: a client made at import time is first used in each worker."""
    result = run_script(f"""
        import os, sys
        from redcurrent import IllegalStateError
        from redcurrent.sync import Producer
        fresh = Producer({redis_url!r}, namespace={namespace!r})
        used = Producer({redis_url!r}, namespace={namespace!r})
        used.send("fork", {{"who": "parent"}})
        pid = os.fork()
        if pid == 0:
            fresh.send("fork", {{"who": "child"}})
            fresh.close()
            try:
                used.send("fork", {{"who": "child, used"}})
            except IllegalStateError as exc:
                print("refused:", exc)
            os._exit(0)
        os.waitpid(pid, 0)
        used.close()
    """)
    assert result.returncode == 0, result.stderr
    assert "refused: this Producer was used before os.fork()" in result.stdout
    who = sorted(as_fields(f)[b"v"] for _, f in client.xrange(Keys(namespace).stream("fork", 0)))
    assert who == [b'{"who":"child"}', b'{"who":"parent"}']


# --------------------------------------------------------------------------- Consumer


def test_for_loop_acks_on_next_and_on_break(
    redis_url: str, namespace: str, client: redis.Redis, admin: Admin
) -> None:
    admin.create_topic(TOPIC)
    with Producer(redis_url, namespace=namespace) as producer:
        ids = [m.id for m in producer.send_batch(TOPIC, [{"i": i} for i in range(3)])]
    seen: list[str] = []
    with consumer(redis_url, namespace) as c:
        for msg in c:
            seen.append(msg.id)
            if len(seen) == 2:
                assert msg.id in pending(client, namespace)  # in our hands
                break
    assert seen == ids[:2]
    assert not set(ids[:2]) & set(pending(client, namespace))  # break: acked on leaving
    assert ids[2] in pending(client, namespace)  # fetched, never handed out: the next owner's


def test_an_exception_in_the_with_body_leaves_the_message_in_hand_unacked(
    redis_url: str, namespace: str, client: redis.Redis, admin: Admin
) -> None:
    admin.create_topic(TOPIC)
    with Producer(redis_url, namespace=namespace) as producer:
        ids = [m.id for m in producer.send_batch(TOPIC, [{"i": i} for i in range(2)])]
    with pytest.raises(ZeroDivisionError), consumer(redis_url, namespace) as c:
        for msg in c:
            if msg.id == ids[1]:
                1 / 0  # noqa: B018
    assert ids[1] in pending(client, namespace) and ids[0] not in pending(client, namespace)
    with consumer(redis_url, namespace) as again:  # the group's next member gets it
        msg = again.getone()
        assert (msg.id, msg.attempts) == (ids[1], 2)


def test_getone_and_manual_acks(
    redis_url: str, namespace: str, client: redis.Redis, admin: Admin
) -> None:
    admin.create_topic(TOPIC)
    with Producer(redis_url, namespace=namespace) as producer:
        producer.send_batch(TOPIC, [{"i": i} for i in range(4)])
    with consumer(redis_url, namespace, auto_ack=False) as c:
        got = [c.getone() for _ in range(4)]
        assert sorted(pending(client, namespace)) == sorted(m.id for m in got)
        c.ack(got[0])
        c.ack_many(got[1:3])
        assert pending(client, namespace) == [got[3].id]
        stranger = got[3]._replace(partition=5)
        with pytest.raises(FencedError):
            c.ack(stranger)
        assert c.assignment() == {TopicPartition(TOPIC, 0)}
        assert c.epoch() >= 1
        c.pause(TopicPartition(TOPIC, 0))
        assert c.paused() == {TopicPartition(TOPIC, 0)}


def test_process_runs_plain_handlers_in_worker_threads_one_at_a_time_per_partition(
    redis_url: str, namespace: str, admin: Admin
) -> None:
    admin.create_topic(TOPIC, partitions=4)
    with Producer(redis_url, namespace=namespace) as producer:
        producer.send_batch(TOPIC, [Record({"seq": s}, key=f"k{k}") for s in range(15) for k in range(8)])
    c = consumer(redis_url, namespace)
    lock = threading.Lock()
    running: dict[int, int] = {}
    seqs: dict[str, list[int]] = {}
    threads: set[str] = set()
    most = 0

    def handle(msg: Message) -> None:
        nonlocal most
        with lock:
            running[msg.partition] = running.get(msg.partition, 0) + 1
            assert running[msg.partition] == 1, "two handlers at once on one partition"
            most = max(most, sum(running.values()))
            threads.add(threading.current_thread().name)
        time.sleep(0.002)
        with lock:
            running[msg.partition] -= 1
            seqs.setdefault(str(msg.key), []).append(msg.value["seq"])
            if sum(map(len, seqs.values())) == 120:
                c.stop()  # from inside a handler: returns at once

    started = time.monotonic()
    c.process(handle)
    assert time.monotonic() - started < 10
    assert seqs == {f"k{k}": list(range(15)) for k in range(8)}  # per key (partition) order
    assert all(t.startswith("redcurrent-handler") for t in threads)
    assert most > 1  # partitions ran concurrently
    assert c.stats()["processed"] == 120


def test_a_slow_sync_handler_past_handler_timeout_is_retried_only_after_it_returns(
    redis_url: str, namespace: str, admin: Admin
) -> None:
    admin.create_topic(TOPIC)
    with Producer(redis_url, namespace=namespace) as producer:
        producer.send_batch(TOPIC, [{"i": 0}, {"i": 1}])
    c = consumer(redis_url, namespace, handler_timeout=0.1, backoff=Backoff(initial=0.01))
    spans: list[tuple[int, int, float, float]] = []

    def handle(msg: Message) -> None:
        begun = time.monotonic()
        if msg.attempts == 1 and msg.value["i"] == 0:
            time.sleep(0.4)  # a thread cannot be interrupted
        spans.append((msg.value["i"], msg.attempts, begun, time.monotonic()))
        if msg.value["i"] == 1:
            c.stop()

    c.process(handle)
    assert [(i, a) for i, a, _, _ in spans] == [(0, 1), (0, 2), (1, 1)]
    assert spans[1][2] >= spans[0][3]  # the retry began after the first call ended
    assert c.stats()["failed"] == 1


def test_process_batch_with_a_plain_handler_retries_only_the_failed(
    redis_url: str, namespace: str, admin: Admin
) -> None:
    admin.create_topic(TOPIC)
    with Producer(redis_url, namespace=namespace) as producer:
        producer.send_batch(TOPIC, [{"i": i} for i in range(6)])
    c = consumer(redis_url, namespace, backoff=Backoff(initial=0.01), max_attempts=2)
    calls: list[list[int]] = []

    def handle(msgs: list[Message]) -> None:
        calls.append([m.value["i"] for m in msgs])
        if len(calls) == 1:
            raise BatchError([m for m in msgs if m.value["i"] % 2])
        c.stop()

    c.process_batch(handle)
    assert calls[0] == list(range(6)) and calls[1] == [1, 3, 5]
    assert c.stats()["processed"] == 6


def test_failing_handlers_retry_then_dead_letter(redis_url: str, namespace: str, admin: Admin) -> None:
    admin.create_topic(TOPIC)
    with Producer(redis_url, namespace=namespace) as producer:
        producer.send_batch(TOPIC, [{"poison": True}, {"poison": False}])
    c = consumer(redis_url, namespace, backoff=Backoff(initial=0.01), max_attempts=2)

    def handle(msg: Message) -> None:
        if msg.value["poison"]:
            raise ValueError("cannot handle it")
        c.stop()

    c.process(handle)
    assert admin.count_dead_letters(TOPIC, "g") == 1
    [letter] = admin.dead_letters(TOPIC, "g")
    assert "cannot handle it" in letter.error


def test_stop_from_another_thread_ends_a_blocked_for_loop(
    redis_url: str, namespace: str, admin: Admin
) -> None:
    admin.create_topic(TOPIC)
    c = consumer(redis_url, namespace)
    c.start()
    got: list[Message] = []
    ended = threading.Event()

    def iterate() -> None:
        got.extend(c)  # blocks: nothing to read
        ended.set()

    reader = threading.Thread(target=iterate)
    reader.start()
    time.sleep(3 * HB)
    c.stop()
    assert ended.wait(5) and got == []
    reader.join()


def test_abort_returns_at_once_while_a_graceful_stop_waits_for_a_handler(
    redis_url: str, namespace: str, client: redis.Redis, admin: Admin
) -> None:
    """The handler stays blocked until abort() has returned, so abort cannot have waited
    for it (no race against a fixed sleep); the stop that does wait ends once it returns."""
    admin.create_topic(TOPIC)
    with Producer(redis_url, namespace=namespace) as producer:
        [meta] = producer.send_batch(TOPIC, [{"i": 0}])
    c = consumer(redis_url, namespace)
    handling, release = threading.Event(), threading.Event()

    def handle(msg: Message) -> None:
        handling.set()
        release.wait(30)  # a stop waits for it (up to the rebalance timeout)

    worker = threading.Thread(target=c.process, args=(handle,))
    worker.start()
    assert handling.wait(5)
    stopper = threading.Thread(target=c.stop)
    stopper.start()
    until(lambda: c._loop.closing, message="the graceful stop never began")
    aborter = threading.Thread(target=c.abort)
    aborter.start()
    # Well inside the stop's wait for the handler (REBALANCE): abort does not wait for it.
    aborter.join(REBALANCE)
    try:
        assert not aborter.is_alive(), "abort() waited for the handler in progress"
        assert not release.is_set()
    finally:
        release.set()
    stopper.join(REBALANCE + 3)
    worker.join(5)
    assert not stopper.is_alive() and not worker.is_alive()
    assert pending(client, namespace) == [meta.id]  # aborted: not acked


def test_a_plain_handler_may_seek_its_partition_back(
    redis_url: str, namespace: str, client: redis.Redis, admin: Admin
) -> None:
    """The blocking seek from a handler's worker thread: the loop runs it while the
    partition waits for that very handler, without deadlock; reading goes on there."""
    admin.create_topic(TOPIC)
    with Producer(redis_url, namespace=namespace) as producer:
        ids = [m.id for m in producer.send_batch(TOPIC, [{"i": i} for i in range(5)])]
    c = consumer(redis_url, namespace)
    seen: list[int] = []

    def handle(msg: Message) -> None:
        seen.append(msg.value["i"])
        if msg.value["i"] == 3 and seen.count(3) == 1:
            c.seek(TOPIC, 0, ids[1])
        if len(seen) == 8:
            c.stop()

    c.process(handle)
    assert seen == [0, 1, 2, 3, 1, 2, 3, 4]
    assert pending(client, namespace) == []
    with pytest.raises(ConsumerStoppedError):
        c.seek(TOPIC, 0, ids[0])


def test_plain_listeners_run_off_the_event_loop(redis_url: str, namespace: str, admin: Admin) -> None:
    admin.create_topic(TOPIC, partitions=2)
    calls: list[tuple[str, list[TopicPartition]]] = []

    def on_assign(partitions: list[TopicPartition]) -> None:
        calls.append((threading.current_thread().name, partitions))

    with consumer(redis_url, namespace, on_assign=on_assign) as c:
        until(c.assignment)
        until(lambda: calls)
    assert calls[0] == ("redcurrent-listener-0", [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])


def test_a_sync_handler_may_produce_with_a_shared_producer(
    redis_url: str, namespace: str, client: redis.Redis, admin: Admin
) -> None:
    """Consume, transform, produce: two objects, two loops, no deadlock."""
    admin.create_topic(TOPIC)
    with Producer(redis_url, namespace=namespace) as producer:
        producer.send_batch(TOPIC, [{"i": i} for i in range(5)])
        c = consumer(redis_url, namespace)

        def handle(msg: Message) -> None:
            producer.send("out", {"twice": msg.value["i"] * 2})
            if msg.value["i"] == 4:
                c.stop()

        c.process(handle)
    assert client.xlen(Keys(namespace).stream("out", 0)) == 5


# --------------------------------------------------------------------------- Admin and targets


def test_admin_blocking_methods(redis_url: str, namespace: str, admin: Admin) -> None:
    assert admin.create_topic(TOPIC, partitions=1).partitions == 1
    assert admin.alter_partitions(TOPIC, 2).partitions == 2
    assert admin.list_topics() == [TOPIC]
    with Producer(redis_url, namespace=namespace) as producer:
        producer.send_batch(TOPIC, [Record({"i": i}, partition=i % 2) for i in range(4)])
    with consumer(redis_url, namespace) as c:
        c.getone()
        assert admin.list_groups(TOPIC) == ["g"]
        assert admin.describe_group(TOPIC, "g").members
    assert set(admin.lag(TOPIC, "g")) == {0, 1}
    assert set(admin.reset_offsets(TOPIC, "g", "earliest", dry_run=True)) == {0, 1}
    assert admin.describe_topic(TOPIC).partition_info[0].length == 2
    assert [m.value for m in admin.read_partition(TOPIC, 1)] == [{"i": 1}, {"i": 3}]
    assert admin.alter_topic_config(TOPIC, maxlen=1000).config.maxlen == 1000
    assert admin.dead_letter(TOPIC, "g", "0-1") is None
    assert admin.trim(TOPIC) >= 0
    assert admin.count_dead_letters(TOPIC, "g") == 0 and admin.purge_dead_letters(TOPIC, "g") == 0
    assert admin.delete_dead_letters(TOPIC, "g", []) == 0 and admin.requeue_dead_letters(TOPIC, "g") == 0
    admin.delete_group(TOPIC, "g")
    admin.delete_topic(TOPIC)
    assert admin.list_topics() == []
    admin.close()
    assert admin.list_topics() == []  # usable again after close(), as the async Admin


def test_the_readme_snippet_runs_as_written(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n## Without asyncio\n", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {"url": redis_url})
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_send_and_consume_on_each_target(target: Target, namespace: str) -> None:
    with Admin(target.url, namespace=namespace) as admin:
        admin.create_topic(TOPIC, partitions=4)
    with Producer(target.url, namespace=namespace) as producer:
        metas = producer.send_batch(TOPIC, [Record({"i": i}, key=f"k{i}") for i in range(20)])
    c = consumer(target.url, namespace)
    seen: list[str] = []

    def handle(msgs: list[Message]) -> None:
        seen.extend(m.id for m in msgs)
        if len(seen) >= 20:
            c.stop()

    c.process_batch(handle)
    assert sorted(seen) == sorted(m.id for m in metas)
