"""The ``redcurrent`` command through its real entry point (``python -m redcurrent``), on a real server.

Every command's happy path with ``--json`` parsed, the human output of a few, and the
error contract: one line on stderr, a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import subprocess
import sys
import threading
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from support.eventually import eventually

from redcurrent import Admin, Consumer, Message, Producer, partition_for_key
from redcurrent.keys import Keys

Run = Callable[..., subprocess.CompletedProcess[str]]
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}


def _cmd(url: str, namespace: str, args: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "redcurrent", "--url", url, "--namespace", namespace, *args]


@pytest.fixture
def rc(redis_url: str, namespace: str) -> Run:
    """``rc("topics", "list", input=...)``: the CLI in a subprocess, bound to this test's namespace."""

    def run(
        *args: str, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            _cmd(redis_url, namespace, args),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=CHILD_ENV,
        )

    return run


@pytest.fixture
def rcj(rc: Run) -> Callable[..., Any]:
    """The CLI with ``--json``: asserts success and returns the parsed document."""

    def run(*args: str, input: str | None = None) -> Any:
        done = rc("--json", *args, input=input)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    return run


async def arun(url: str, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI without blocking the event loop (in-process consumers keep heartbeating)."""
    proc = await asyncio.create_subprocess_exec(
        *_cmd(url, namespace, args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=CHILD_ENV
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode != 0, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("redcurrent: error: "), lines[0]
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


pytestmark = pytest.mark.single_node  # conftest's admin, on one node


# -- topics --------------------------------------------------------------------------


def test_topics_create_list_describe_alter_delete(rc: Run, rcj: Callable[..., Any]) -> None:
    created = rcj(
        "topics",
        "create",
        "orders",
        "--partitions",
        "4",
        "--maxlen",
        "1000",
        "--retention-ms",
        "60000",
    )
    assert created["name"] == "orders"
    assert created["partitions"] == 4
    assert created["config"]["maxlen"] == 1000
    assert created["config"]["retention_ms"] == 60000

    assert [t["name"] for t in rcj("topics", "list")] == ["orders"]
    described = rcj("topics", "describe", "orders")
    assert [p["partition"] for p in described["partition_info"]] == [0, 1, 2, 3]
    assert described["groups"] == []

    altered = rcj("topics", "alter", "orders", "--partitions", "6")
    assert (altered["partitions"], altered["previous_partitions"]) == (6, 4)
    ordered = rcj("topics", "alter", "orders", "--partitions", "8", "--preserve-key-order")
    assert (ordered["partitions"], ordered["previous_partitions"]) == (8, 6)
    configured = rcj("topics", "alter", "orders", "--config", "maxlen=none", "-c", "ttl=30",
                     "-c", "dead_letter_expired=true")
    assert configured["config"] == {"maxlen": None, "retention_ms": 60000, "ttl_ms": 30000,
                                    "dead_letter_expired": True, "dedup_window_ms": 600000}
    for bad in ("maxlen", "colour=red", "maxlen=lots", "dead_letter_expired=maybe"):
        refused = rc("topics", "alter", "orders", "--config", bad)
        assert refused.returncode == 2 and "--config" in refused.stderr, bad
    assert rc("topics", "alter", "orders").returncode == 2  # nothing to do

    human = rc("topics", "list")
    assert human.returncode == 0 and "orders" in human.stdout

    assert rcj("topics", "delete", "orders") == {"topic": "orders", "deleted": True}
    assert rcj("topics", "list") == []


def test_topics_create_if_not_exists_is_idempotent(rc: Run) -> None:
    assert rc("topics", "create", "t", "-p", "2").returncode == 0
    again = rc("topics", "create", "t", "-p", "2")
    assert_one_line_error(again, "already exists")
    assert rc("topics", "create", "t", "-p", "2", "--if-not-exists").returncode == 0


def test_topics_create_colocated(rc: Run, rcj: Callable[..., Any]) -> None:
    rc("topics", "create", "orders", "-p", "3")
    created = rcj("topics", "create", "invoices", "-p", "3", "--colocate-with", "orders")
    assert created["colocate_with"] == "orders"
    assert "co-located with: orders" in rc("topics", "describe", "invoices").stdout
    assert_one_line_error(rc("topics", "create", "refunds", "-p", "4", "--colocate-with", "orders"),
                          "partition count")


# -- produce and consume -------------------------------------------------------------


def test_produce_json_lines_then_consume_them_back(rc: Run, rcj: Callable[..., Any]) -> None:
    rcj("topics", "create", "orders", "--partitions", "3")
    lines = "".join(json.dumps({"id": i, "customer": f"c{i % 4}"}) + "\n" for i in range(12)) + "\n"
    summary = rcj(
        "produce", "orders", "--key-field", "customer", "-H", "source=cli", "-H", "v=1", input=lines
    )
    assert summary["sent"] == 12
    assert sum(summary["partitions"].values()) == 12

    got = json_lines(rc("--json", "consume", "orders", "--from-beginning").stdout)
    assert sorted(m["value"]["id"] for m in got) == list(range(12))
    for m in got:
        assert m["key"] == m["value"]["customer"]
        assert m["partition"] == partition_for_key(m["key"], 3)
        assert m["headers"] == {"source": "cli", "v": "1"}
        assert re.fullmatch(r"\d+-\d+", m["id"])
    for key in {m["key"] for m in got}:  # per key, stream order is send order
        ids = [m["value"]["id"] for m in got if m["key"] == key]
        assert ids == sorted(ids)

    assert (
        len(json_lines(rc("--json", "consume", "orders", "--from-beginning", "--max", "5").stdout))
        == 5
    )
    human = rc("consume", "orders", "--from-beginning", "--max", "1")
    partition, _id, key, headers, value = human.stdout.rstrip("\n").split("\t")
    assert int(partition) == partition_for_key(key, 3)
    assert key.startswith("c") and "source=cli" in headers and json.loads(value)["customer"] == key
    assert "consumed 1 messages" in human.stderr


def test_produce_raw_lines_with_a_fixed_key(rc: Run, rcj: Callable[..., Any]) -> None:
    rcj("topics", "create", "logs", "--partitions", "4")
    summary = rcj("produce", "logs", "--raw", "--key", "host-1", input="GET /\nnot json {\n")
    assert summary["sent"] == 2
    assert list(summary["partitions"]) == [str(partition_for_key("host-1", 4))]
    got = json_lines(rc("--json", "consume", "logs", "--from-beginning").stdout)
    assert [(m["key"], m["value"]) for m in got] == [("host-1", "GET /"), ("host-1", "not json {")]


def test_consume_without_from_beginning_starts_at_the_end(rc: Run, rcj: Callable[..., Any]) -> None:
    rcj("topics", "create", "t", "--partitions", "2")
    rcj("produce", "t", input='{"old": 1}\n')
    done = rc("--json", "consume", "t")
    assert done.returncode == 0 and done.stdout == ""


def test_consume_follow_waits_for_new_messages(
    redis_url: str, namespace: str, rcj: Callable[..., Any]
) -> None:
    rcj("topics", "create", "t", "--partitions", "2")
    rcj("produce", "t", input='{"n": 0}\n')
    follower = subprocess.Popen(
        _cmd(
            redis_url,
            namespace,
            ("--json", "consume", "t", "--follow", "--from-beginning", "--max", "4"),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CHILD_ENV,
    )
    try:
        rcj("produce", "t", input='{"n": 1}\n{"n": 2}\n{"n": 3}\n')
        out, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 0, err
    assert sorted(m["value"]["n"] for m in json_lines(out)) == [0, 1, 2, 3]


def test_consume_with_a_group_acks_what_it_prints(rc: Run, rcj: Callable[..., Any]) -> None:
    rcj("topics", "create", "t", "--partitions", "2")
    rcj(
        "produce",
        "t",
        "--key-field",
        "k",
        input="".join(f'{{"k": "k{i}", "n": {i}}}\n' for i in range(10)),
    )
    first = json_lines(
        rc("--json", "consume", "t", "--group", "g", "--from-beginning", "--max", "4").stdout
    )
    assert len(first) == 4
    rest = json_lines(rc("--json", "consume", "t", "--group", "g").stdout)
    # What the first member printed was acked; what it fetched beyond is redelivered.
    assert sorted(m["value"]["n"] for m in first + rest) == list(range(10))
    described = rcj("groups", "describe", "t", "g")
    assert (described["lag"], described["pending"], described["members"]) == (0, 0, [])


# -- groups and offsets --------------------------------------------------------------


async def test_groups_list_and_describe_show_a_live_member(
    redis_url: str, namespace: str, admin: Admin
) -> None:
    await admin.create_topic("orders", 4)
    async with Producer(redis_url, namespace=namespace) as producer:
        for i in range(6):
            await producer.send("orders", {"i": i}, key=f"k{i}")
    async with Consumer(
        "orders",
        group="billing",
        url=redis_url,
        namespace=namespace,
        start="latest",
        heartbeat_interval=0.2,
        session_timeout=2.0,
    ) as consumer:
        await eventually(lambda: len(consumer.assignment()) == 4)
        done = await arun(redis_url, namespace, "--json", "groups", "describe", "orders", "billing")
        assert done.returncode == 0, done.stderr
        info = json.loads(done.stdout)
        listed = json.loads(
            (await arun(redis_url, namespace, "--json", "groups", "list", "orders")).stdout
        )
        human = await arun(redis_url, namespace, "groups", "describe", "orders", "billing")
    assert info["epoch"] >= 1
    [member] = info["members"]
    assert member["member_id"] == consumer.member_id and member["pid"] == os.getpid()
    assert sorted(member["partitions"]) == [0, 1, 2, 3]
    assert info["assignment"] == {consumer.member_id: member["partitions"]}
    assert {p["owner"] for p in info["partitions"]} == {consumer.member_id}
    assert all(p["lag"] == 0 and p["pending"] == 0 for p in info["partitions"])  # started at latest
    assert listed == [
        {"group": "billing", "epoch": info["epoch"], "members": 1, "pending": 0, "lag": 0}
    ]
    assert consumer.member_id in human.stdout and "epoch" in human.stdout


def test_offsets_reset_replays_messages_to_the_group(rc: Run, rcj: Callable[..., Any]) -> None:
    rcj("topics", "create", "t", "--partitions", "1")
    rcj("produce", "t", input="".join(f'{{"n": {i}}}\n' for i in range(5)))
    assert len(json_lines(rc("--json", "consume", "t", "-g", "g", "--from-beginning").stdout)) == 5
    ids = [m["id"] for m in json_lines(rc("--json", "consume", "t", "--from-beginning").stdout)]

    dry = rcj("offsets", "reset", "t", "g", "--to-earliest", "--dry-run")
    assert dry["dry_run"] and dry["partitions"][0]["lag_after"] is None
    assert rcj("groups", "describe", "t", "g")["lag"] == 0  # the dry run changed nothing

    reset = rcj("offsets", "reset", "t", "g", "--to-earliest")
    assert reset["partitions"] == [
        {"partition": 0, "position": "0", "lag_before": 0, "lag_after": 5}
    ]
    replayed = json_lines(rc("--json", "consume", "t", "-g", "g").stdout)
    assert [m["value"]["n"] for m in replayed] == [0, 1, 2, 3, 4]

    rcj("offsets", "reset", "t", "g", "--to-id", ids[2], "--partition", "0")
    assert [
        m["value"]["n"] for m in json_lines(rc("--json", "consume", "t", "-g", "g").stdout)
    ] == [2, 3, 4]

    ms = int(ids[3].split("-")[0])
    import datetime as dt

    when = dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()
    after_time = rcj("offsets", "reset", "t", "g", "--to-datetime", when)
    assert after_time["partitions"][0]["lag_after"] == sum(
        1 for i in ids if int(i.split("-")[0]) >= ms
    )

    latest = rcj("offsets", "reset", "t", "g", "--to-latest")
    assert latest["partitions"][0]["lag_after"] == 0
    human = rc("offsets", "reset", "t", "g", "--to-earliest", "--dry-run")
    assert human.returncode == 0 and "dry run" in human.stdout


async def test_offsets_reset_refuses_while_members_are_live_unless_forced(
    redis_url: str, namespace: str, admin: Admin
) -> None:
    await admin.create_topic("t", 2)
    async with Consumer(
        "t",
        group="g",
        url=redis_url,
        namespace=namespace,
        heartbeat_interval=0.2,
        session_timeout=2.0,
    ) as consumer:
        await eventually(lambda: len(consumer.assignment()) == 2)
        refused = await arun(redis_url, namespace, "offsets", "reset", "t", "g", "--to-earliest")
        forced = await arun(
            redis_url, namespace, "--json", "offsets", "reset", "t", "g", "--to-earliest", "--force"
        )
    assert_one_line_error(refused, "live member", "--force")
    assert forced.returncode == 0, forced.stderr
    assert [p["partition"] for p in json.loads(forced.stdout)["partitions"]] == [0, 1]


# -- retention -----------------------------------------------------------------------


async def test_safe_trim_never_removes_unacked_entries(
    redis_url: str, namespace: str, admin: Admin, rc: Run, rcj: Callable[..., Any]
) -> None:
    await admin.create_topic("t", 1)
    async with Producer(redis_url, namespace=namespace) as producer:
        sent = [(await producer.send("t", {"n": i})).id for i in range(10)]
    handled: list[Message] = []
    async with Consumer(
        "t",
        group="g",
        url=redis_url,
        namespace=namespace,
        start="earliest",
        auto_ack=False,
        heartbeat_interval=0.2,
        session_timeout=2.0,
    ) as consumer:
        async for msg in consumer:
            handled.append(msg)
            if len(handled) <= 4:
                await consumer.ack(
                    msg
                )  # 0..3 acked; 4..9 delivered and pending, or not yet delivered
            if len(handled) == 10:
                break
        await consumer.abort()  # leave 4..9 pending, as a crashed member would
    removed = rcj("topics", "trim", "t", "--maxlen", "0")
    assert removed == {"topic": "t", "removed": 4, "safe": True}
    left = [m["id"] for m in json_lines(rc("--json", "consume", "t", "--from-beginning").stdout)]
    assert left == sent[4:]
    assert rcj("topics", "trim", "t")["removed"] == 0  # nothing more is acked
    assert rcj("topics", "trim", "t", "--maxlen", "0", "--unsafe") == {
        "topic": "t",
        "removed": 6,
        "safe": False,
    }


# -- dead letters --------------------------------------------------------------------


async def _dead_letters(
    redis_url: str, namespace: str, admin: Admin, n: int, raw: tuple[dict[bytes, bytes], ...] = ()
) -> None:
    """``n`` messages whose handler fails, then the ``raw`` entries: all dead-lettered."""
    await admin.create_topic("pay", 1)

    async def fail(msg: Message) -> None:
        raise RuntimeError(f"card declined {msg.value['n']}")

    async with Producer(redis_url, namespace=namespace) as producer:
        for i in range(n):
            await producer.send("pay", {"n": i}, key=f"k{i}", headers={"trace": str(i)})
    for fields in raw:
        await admin.connection.client.xadd(Keys(namespace).stream("pay", 0), fields)  # type: ignore[arg-type]
    n += len(raw)
    async with Consumer(
        "pay",
        group="g",
        url=redis_url,
        namespace=namespace,
        start="earliest",
        max_attempts=1,
        heartbeat_interval=0.2,
        session_timeout=2.0,
    ) as consumer:
        task = asyncio.create_task(consumer.process(fail))
        await eventually(_count_is(admin, n), 10)
        await consumer.stop()
        await task


def _count_is(admin: Admin, n: int) -> Callable[[], Any]:
    async def check() -> bool:
        return await admin.count_dead_letters("pay", "g") == n

    return check


async def test_dlq_list_show_requeue_delete_purge(
    redis_url: str, namespace: str, admin: Admin
) -> None:
    await _dead_letters(redis_url, namespace, admin, 4)

    async def cli(*args: str) -> Any:
        done = await arun(redis_url, namespace, "--json", *args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    listed = await cli("dlq", "list", "pay", "g")
    assert listed["total"] == 4
    first, second, third, _ = (d["dead_letter_id"] for d in listed["dead_letters"])
    assert {d["reason"] for d in listed["dead_letters"]} == {"max_attempts"}
    assert listed["dead_letters"][0]["error"] == "card declined 0"

    [shown] = await cli("dlq", "show", "pay", "g", first)
    assert (
        shown["value"] == {"n": 0} and shown["headers"] == {"trace": "0"} and shown["key"] == "k0"
    )
    assert "RuntimeError: card declined 0" in shown["traceback"]

    assert (await cli("dlq", "requeue", "pay", "g", first))["requeued"] == 1
    back = json_lines(
        (await arun(redis_url, namespace, "--json", "consume", "pay", "--from-beginning")).stdout
    )
    assert back[-1]["value"] == {"n": 0} and back[-1]["headers"]["rc-requeue-group"] == "g"

    assert (await cli("dlq", "delete", "pay", "g", second))["deleted"] == 1
    assert (await cli("dlq", "list", "pay", "g"))["total"] == 2
    again = await arun(redis_url, namespace, "dlq", "delete", "pay", "g", third, second)
    assert_one_line_error(again, "no dead letter", second)  # ...and nothing was deleted
    assert again.returncode == 1
    assert (await cli("dlq", "list", "pay", "g"))["total"] == 2
    missing = await arun(redis_url, namespace, "dlq", "show", "pay", "g", second)
    assert_one_line_error(missing, "no dead letter")
    human = await arun(redis_url, namespace, "dlq", "list", "pay", "g")
    assert third in human.stdout
    assert (await cli("dlq", "purge", "pay", "g"))["purged"] == 2
    assert (await cli("dlq", "list", "pay", "g")) == {"total": 0, "dead_letters": []}


async def test_dlq_requeue_moves_the_others_and_fails_naming_an_undecodable_dead_letter(
    redis_url: str, namespace: str, admin: Admin
) -> None:
    broken = {b"f": b"1jn", b"v": b'{"n": 9}', b"h": b"not json"}
    await _dead_letters(redis_url, namespace, admin, 1, raw=(broken,))
    await _dead_letters_after(admin, redis_url, namespace)
    letters = await admin.dead_letters("pay", "g")
    assert len(letters) == 3
    [bad_id] = [d.dead_letter_id for d in letters if d.reason != "max_attempts"]

    done = await arun(redis_url, namespace, "--json", "dlq", "requeue", "pay", "g")
    assert_one_line_error(done, "could not be requeued", bad_id, "not JSON")
    assert done.returncode == 1
    out = json.loads(done.stdout)
    assert (out["requeued"], list(out["failed"])) == (2, [bad_id])
    assert "not JSON" in out["failed"][bad_id]
    assert [d.dead_letter_id for d in await admin.dead_letters("pay", "g")] == [bad_id]
    back = json_lines(
        (await arun(redis_url, namespace, "--json", "consume", "pay", "--from-beginning")).stdout
    )
    assert [m["value"] for m in back if "rc-requeue-group" in m["headers"]] == [{"n": 0}, {"n": 1}]

    human = await arun(redis_url, namespace, "dlq", "requeue", "pay", "g", bad_id)
    assert human.stdout.startswith("requeued 0 dead letter(s)")
    assert_one_line_error(human, bad_id)


async def _dead_letters_after(admin: Admin, redis_url: str, namespace: str) -> None:
    """One more good message of topic pay, dead-lettered after what is there."""
    async with Producer(redis_url, namespace=namespace) as producer:
        await producer.send("pay", {"n": 1}, key="k1")

    async def fail(msg: Message) -> None:
        raise RuntimeError("card declined")

    before = await admin.count_dead_letters("pay", "g")
    async with Consumer(
        "pay", group="g", url=redis_url, namespace=namespace, max_attempts=1,
        heartbeat_interval=0.2, session_timeout=2.0,
    ) as consumer:
        task = asyncio.create_task(consumer.process(fail))
        await eventually(_count_is(admin, before + 1), 10)
        await consumer.stop()
        await task


# -- errors: one line, non-zero, no traceback ----------------------------------------


@pytest.mark.parametrize(
    ("args", "needle", "code"),
    [
        (("topics", "describe", "nope"), "unknown topic 'nope'", 1),
        (("topics", "create", "bad", "--partitions", "0"), "partitions", 1),
        (("topics", "create", "bad", "--partitions", "many"), "many", 2),
        (("topics", "create", "bad"), "--partitions", 2),
        (("topics", "create", "bad:name", "-p", "1"), "invalid topic name", 1),
        (("topics", "alter", "t", "--partitions", "1"), "", 1),
        (("groups", "describe", "t", "nogroup"), "unknown group 'nogroup'", 1),
        (("groups", "list", "nope"), "unknown topic", 1),
        (("consume", "nope"), "unknown topic", 1),
        (("consume", "nope", "--group", "g"), "unknown topic", 1),
        (("produce", "nope"), "unknown topic 'nope'", 1),
        (("offsets", "reset", "t", "g"), "exactly one of", 2),
        (("offsets", "reset", "t", "g", "--to-datetime", "yesterday"), "ISO 8601", 2),
        (("offsets", "reset", "t", "nogroup", "--to-earliest"), "unknown group", 1),
        (("offsets", "reset", "t", "g", "--to-id", "bogus"), "not a stream entry id", 2),
        (("dlq", "list", "t", "nogroup"), "unknown group", 1),
        (("dlq", "delete", "t", "g"), "IDS", 2),
        # a malformed id is a usage error in every dlq command; a missing one is not
        (("dlq", "delete", "t", "g", "bogus"), "'bogus' is not a stream entry id", 2),
        (("dlq", "show", "t", "g", "bogus"), "'bogus' is not a stream entry id", 2),
        (("dlq", "requeue", "t", "g", "1-x"), "'1-x' is not a stream entry id", 2),
        (("dlq", "list", "t", "g", "--after", "x"), "'x' is not a stream entry id", 2),
        (("dlq", "delete", "t", "g", "1-0"), "no dead letter 1-0", 1),
        (("dlq", "show", "t", "g", "1"), "no dead letter 1-0", 1),
        (("dlq", "requeue", "t", "g", "1-0"), "no dead letter 1-0", 1),
        (("consume", "t", "--idle-timeout", "-1"), "--idle-timeout", 2),
        (("consume", "t", "-g", "g", "--idle-timeout", "nan"), "--idle-timeout", 2),
        (("topics", "create", "..", "-p", "1"), "made only of dots", 1),
        (("topics", "create", "-p", "1", "--", "-t"), "cannot start with '-'", 1),
        (("nosuchcommand",), "No such command", 2),
    ],
)
def test_errors_are_one_line_and_a_nonzero_exit(
    error_namespace: str, redis_url: str, args: tuple[str, ...], needle: str, code: int
) -> None:
    done = subprocess.run(
        _cmd(redis_url, error_namespace, args),
        capture_output=True,
        text=True,
        timeout=60,
        env=CHILD_ENV,
    )
    assert_one_line_error(done, needle)
    assert done.returncode == code


@pytest.fixture(scope="module")
def error_namespace(redis_url: str) -> str:
    """One namespace for the error cases: topic t with group g (made once, they only read)."""
    namespace = "t" + uuid.uuid4().hex[:10]
    for args in (("topics", "create", "t", "--partitions", "2"), ("consume", "t", "--group", "g")):
        done = subprocess.run(
            _cmd(redis_url, namespace, args),
            capture_output=True,
            text=True,
            timeout=60,
            env=CHILD_ENV,
        )
        assert done.returncode == 0, done.stderr
    return namespace


def test_unreachable_redis_is_one_line(namespace: str) -> None:
    done = subprocess.run(
        _cmd("redis://127.0.0.1:1/0", namespace, ("topics", "list")),
        capture_output=True,
        text=True,
        timeout=60,
        env=CHILD_ENV,
    )
    assert_one_line_error(done, "unreachable")
    assert done.returncode == 1


def test_a_url_whose_database_is_not_a_number_is_refused_without_echoing_it(
    redis_url: str, namespace: str
) -> None:
    """redis-py reads ``redis://host:port/abc`` as database 0: the command would work on
    the wrong database instead of saying so."""
    where = urlsplit(redis_url)
    bad = f"redis://someone:s3cret-pw@{where.hostname}:{where.port}/abc"
    by_option = subprocess.run(
        _cmd(bad, namespace, ("topics", "list")),
        capture_output=True, text=True, timeout=60, env=CHILD_ENV,
    )
    by_env = subprocess.run(
        [sys.executable, "-m", "redcurrent", "--namespace", namespace, "topics", "list"],
        capture_output=True, text=True, timeout=60, env={**CHILD_ENV, "REDIS_URL": bad},
    )
    for done in (by_option, by_env):
        assert_one_line_error(done, "--url", "database", "'/abc'")
        assert done.returncode == 2
        assert "s3cret-pw" not in done.stderr
    for good in (f"redis://{where.hostname}:{where.port}", f"redis://{where.hostname}:{where.port}/0/"):
        ok = subprocess.run(
            _cmd(good, namespace, ("topics", "list")),
            capture_output=True, text=True, timeout=60, env=CHILD_ENV,
        )
        assert ok.returncode == 0, ok.stderr


def test_produce_stopped_by_a_bad_key_field_line_prints_only_its_error(
    rc: Run, rcj: Callable[..., Any]
) -> None:
    rcj("topics", "create", "t", "--partitions", "1")
    lines = '{"id": 1}\n{"no id": 2}\n' + "".join(f'{{"id": {i}}}\n' for i in range(5000))
    done = rc("produce", "t", "--key-field", "id", input=lines)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "sent 1 messages to t (per partition 0:1)",
        "redcurrent: error: line 2: no field 'id' for --key-field",
    ]


def test_the_stdin_reader_leaves_no_coroutine_unawaited_when_the_command_ended_first() -> None:
    """``produce`` stops at a bad line while its stdin thread may still be handing over
    chunks; one handed over after the command's event loop closed used to leave a
    ``Queue.put`` coroutine never awaited (a RuntimeWarning printed at exit)."""
    from redcurrent.cli.app import cli  # noqa: F401  (app imports the commands first)
    from redcurrent.cli.produce import StdinChunks

    go = threading.Event()
    chunks = [b'{"n": 1}\n{"n": 2}\n']

    def read(_n: int) -> bytes:
        go.wait(10)
        return chunks.pop() if chunks else b""

    loop = asyncio.new_event_loop()
    StdinChunks(read, loop, lambda _n: None).start()
    loop.close()  # the command is over before the thread reads its next chunk
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        go.set()
        for thread in threading.enumerate():
            if thread.name == "redcurrent-stdin":
                thread.join(10)
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []


def test_bad_json_input_is_one_line_and_keeps_what_came_before(
    rc: Run, rcj: Callable[..., Any]
) -> None:
    rcj("topics", "create", "t", "--partitions", "1")
    done = rc("produce", "t", input='{"ok": 1}\n{"ok": 2}\n{oops\n{"ok": 4}\n')
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("redcurrent: error:")]
    assert len(errors) == 1 and "line 3" in errors[0] and "--raw" in errors[0]
    assert "Traceback" not in done.stderr
    assert [
        m["value"] for m in json_lines(rc("--json", "consume", "t", "--from-beginning").stdout)
    ] == [{"ok": 1}, {"ok": 2}]


def test_bad_namespace_and_conflicting_options_are_one_line(rc: Run, redis_url: str) -> None:
    done = subprocess.run(
        _cmd(redis_url, "bad:ns", ("topics", "list")),
        capture_output=True,
        text=True,
        timeout=60,
        env=CHILD_ENV,
    )
    assert_one_line_error(done, "namespace")
    assert_one_line_error(rc("produce", "t", "--key", "a", "--key-field", "b"), "not both")


# -- the server, the entry points ----------------------------------------------------


def test_without_a_url_an_embedded_server_is_started_and_stopped(tmp_path: Path) -> None:
    from redcurrent.cli.env import local_server_answers

    if local_server_answers():
        pytest.skip("something answers on localhost:6379: the CLI would use it")
    done = subprocess.run(
        [sys.executable, "-m", "redcurrent", "--json", "topics", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env=CHILD_ENV,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    [line] = done.stderr.strip().splitlines()
    assert "embedded server" in line
    port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))  # type: ignore[union-attr]
    assert not local_server_answers(port=port)  # stopped on exit


def test_console_script_and_help(rc: Run) -> None:
    script = Path(sys.executable).with_name("redcurrent")
    if script.exists():
        done = subprocess.run(
            [str(script), "--version"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0 and "0.1.0" in done.stdout
    for args in (
        ("--help",),
        ("topics", "--help"),
        ("demo", "--help"),
        ("bench", "--help"),
        ("offsets", "reset", "--help"),
        ("dlq", "--help"),
    ):
        done = rc(*args)
        assert done.returncode == 0 and "Usage:" in done.stdout, args


@pytest.mark.cluster
def test_the_cli_works_on_a_redis_cluster(cluster: Any, namespace: str) -> None:
    """Partitions live on different nodes: reads, groups and resets go through the same commands."""

    def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            _cmd(cluster.url, namespace, args),
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            env=CHILD_ENV,
        )
        assert done.returncode == 0, done.stderr
        return done

    run("topics", "create", "t", "--partitions", "6")
    run(
        "produce",
        "t",
        "--key-field",
        "k",
        input="".join(f'{{"k": "k{i}", "n": {i}}}\n' for i in range(20)),
    )
    assert (
        len(
            {
                m["partition"]
                for m in json_lines(run("--json", "consume", "t", "--from-beginning").stdout)
            }
        )
        > 1
    )
    assert (
        len(json_lines(run("--json", "consume", "t", "-g", "g", "--from-beginning").stdout)) == 20
    )
    assert json.loads(run("--json", "groups", "describe", "t", "g").stdout)["lag"] == 0
    reset = json.loads(run("--json", "offsets", "reset", "t", "g", "--to-earliest").stdout)
    assert sum(p["lag_after"] for p in reset["partitions"]) == 20
    assert (
        json.loads(run("--json", "topics", "trim", "t").stdout)["removed"] == 0
    )  # g needs them again
    run("topics", "delete", "t")
