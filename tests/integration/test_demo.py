"""``redcurrent demo``: three consumer processes, one SIGKILLed midway, nothing lost, order kept;
with ``--cluster``, a Redis primary SIGKILLed too.

Also the verdict's own rules (lost, duplicated, the per-key order rule, recovery time),
checked on hand-made histories.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from redcurrent.cli.demo.report import (
    order_violations,
    recovery_seconds,
    resumed_seconds,
    verdict,
)
from redcurrent.testing import Event

CHILD_ENV = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}


def demo(redis_url: str, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "redcurrent",
            "--url",
            redis_url,
            "--namespace",
            namespace,
            "demo",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=CHILD_ENV,
    )


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow
def test_demo_survives_a_sigkill_with_nothing_lost_and_order_kept(
    redis_url: str, namespace: str
) -> None:
    done = demo(
        redis_url, namespace, "--duration", "10", "--partitions", "4", "--consumers", "3", "--json"
    )
    assert done.returncode == 0, done.stderr
    v = json.loads(done.stdout)
    assert v["ok"] is True, v
    assert (v["lost"], v["order_violations"], v["unexpected"]) == (0, 0, 0), v["examples"]
    assert v["produced"] > 500 and v["consumed"] == v["produced"]
    assert v["deliveries"] == v["produced"] + v["duplicated"]
    assert v["drained"] is True
    assert v["killed"]["partitions"], "the victim owned partitions when it was killed"
    assert v["recovery_s"] is not None and v["recovery_s"] < 10
    assert v["elapsed_s"] < 60
    assert all(gone(pid) for pid in v["pids"].values()), "no consumer process outlives the demo"
    topics = subprocess.run(
        [
            sys.executable,
            "-m",
            "redcurrent",
            "--url",
            redis_url,
            "--namespace",
            namespace,
            "--json",
            "topics",
            "list",
        ],
        capture_output=True,
        text=True,
        env=CHILD_ENV,
    )
    assert json.loads(topics.stdout) == []  # its topic is deleted unless --keep
    assert v["kept"] is None


@pytest.mark.slow
def test_demo_prints_a_table_and_a_verdict_when_not_on_a_terminal(
    redis_url: str, namespace: str
) -> None:
    done = demo(redis_url, namespace, "--duration", "3", "--partitions", "2", "--consumers", "2")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for needle in (
        "consumers joined",
        "SIGKILL consumer-",
        "partition",
        "owner",
        "lag",
        "verdict",
        "lost",
        "order violations",
        "seconds to recover",
        "OK",
    ):
        assert needle in out, needle
    assert len(out.splitlines()) < 60  # short enough to read in a CI log
    assert "\x1b[" not in out  # no cursor movement or colour codes in a pipe


@pytest.mark.slow
@pytest.mark.cluster
def test_demo_on_a_cluster_survives_a_primary_sigkill_and_a_consumer_sigkill(
    namespace: str,
) -> None:
    """``demo --cluster`` with no --url starts its own 3 + 3 cluster, kills a primary
    that holds partitions (its replica is promoted, the node rejoins as a replica), then
    a consumer; acks="replica" makes "nothing lost" a guarantee, not luck."""
    done = subprocess.run(
        [sys.executable, "-m", "redcurrent", "--namespace", namespace, "demo", "--cluster",
         "--duration", "8", "--partitions", "6", "--consumers", "3", "--json"],
        capture_output=True, text=True, timeout=120, env=CHILD_ENV,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "started an embedded Redis Cluster" in done.stderr
    v = json.loads(done.stdout)
    assert v["ok"] is True, v
    assert (v["lost"], v["order_violations"], v["unexpected"]) == (0, 0, 0), v["examples"]
    assert v["produced"] > 500 and v["consumed"] == v["produced"] and v["drained"] is True
    primary = v["cluster"]["primary"]
    assert v["cluster"]["acks"] == "replica"
    assert primary["killed"]["partitions"], "the killed primary held some of the partitions"
    assert primary["replaced_by"]["port"] != primary["killed"]["port"]
    assert primary["replaced_by"]["role"] == "primary" and primary["rejoined_as_replica"] is True
    assert primary["back_s"] is not None and primary["back_s"] < 10, primary
    assert v["killed"]["partitions"] and v["recovery_s"] is not None
    assert all(gone(pid) for pid in v["pids"].values()), "no consumer process outlives the demo"


# -- the verdict's rules ------------------------------------------------------------


def h(t: int, consumer: str, key: str, seq: int, partition: int = 0) -> Event:
    return Event(consumer, "handled", key, seq, f"{key}-{seq}", t, partition)


def sent_for(*items: tuple[str, int]) -> dict[tuple[str, int], str]:
    return {(k, n): f"{k}-{n}" for k, last in items for n in range(last)}


def test_a_replay_at_handoff_is_duplicates_not_violations() -> None:
    history = [
        h(1, "a", "k", 0),
        h(2, "a", "k", 1),
        h(3, "a", "k", 2),  # a handled 0..2, acked 0
        h(4, "b", "k", 1),
        h(5, "b", "k", 2),
        h(6, "b", "k", 3),
    ]  # b replays 1, 2 then goes on
    v = verdict(sent_for(("k", 4)), history)
    assert (v.lost, v.duplicated, v.order_violations, v.ok) == (0, 2, 0, True)
    assert (v.produced, v.consumed, v.deliveries) == (4, 4, 6)


def test_gaps_skips_and_going_backwards_are_violations() -> None:
    assert order_violations([h(1, "a", "k", 0), h(2, "a", "k", 2)]) == [
        "gap: key k seq 2 after 0 by a"
    ]
    assert order_violations([h(1, "a", "k", 1), h(2, "a", "k", 0)])[0].startswith("backwards")
    assert order_violations([h(1, "a", "k", 0), h(2, "b", "k", 2)])[0].startswith("skipped")
    assert (
        order_violations([h(2, "a", "k", 1), h(1, "a", "k", 0)]) == []
    )  # time order, not log order
    assert (
        order_violations([h(1, "a", "x", 0), h(2, "a", "y", 5), h(3, "a", "x", 1)]) == []
    )  # per key


def test_lost_and_unexpected_messages_fail_the_verdict() -> None:
    v = verdict(sent_for(("k", 3)), [h(1, "a", "k", 0), h(2, "a", "k", 1)])
    assert (v.lost, v.ok) == (1, False) and v.examples == ("lost: key k seq 2",)
    stray = verdict(sent_for(("k", 1)), [h(1, "a", "k", 0), h(2, "a", "other", 0)])
    assert (stray.unexpected, stray.ok) == (1, False)


def test_recovery_is_until_every_lost_partition_is_handled_by_a_survivor() -> None:
    history = [
        h(1, "a", "k", 0, partition=0),
        h(5, "a", "k", 1, partition=0),  # the victim, then dead
        h(2_000_000_000, "b", "k", 2, partition=0),
        h(3_500_000_000, "c", "j", 0, partition=1),
    ]
    assert recovery_seconds(history, "a", [0, 1], kill_ns=1_000_000_000) == pytest.approx(2.5)
    assert recovery_seconds(history, "a", [0, 2], kill_ns=1_000_000_000) is None


def test_a_killed_node_is_back_once_each_partition_handles_a_message_written_after_it() -> None:
    def at(t_s: float, partition: int, written_ms: int) -> Event:
        return Event("b", "handled", "k", 0, f"{written_ms}-0", int(t_s * 1e9), partition)

    kill_ns, kill_ms = 1_000_000_000, 5_000
    history = [
        at(1.5, 0, 4_999),  # written before the kill: proves nothing
        at(2.0, 0, 5_001),
        at(3.0, 1, 5_500),
    ]
    assert resumed_seconds(history, [0, 1], kill_ns, kill_ms) == pytest.approx(2.0)
    assert resumed_seconds(history[:1], [0], kill_ns, kill_ms) is None
