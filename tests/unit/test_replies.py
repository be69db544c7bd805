"""Each script's reply parser, once, on the raw shapes redis-py gives (no response
callbacks: bulk strings are bytes, Lua numbers ints). Every status a script's contract
lists is here: success statuses become results, refusals typed errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from redcurrent.errors import (
    FencedError,
    FencedInstanceError,
    GroupMissingError,
    InvalidPartitionsError,
    LeaseExpiredError,
    PartitionBusyError,
    PartitionMissingError,
    RedcurrentError,
    StaleRouteError,
    StaleSequenceError,
    UnknownTopicError,
)
from redcurrent.replies import (
    Assignment,
    Claimed,
    Fetched,
    Gated,
    PartitionsAltered,
    Produced,
    Requeued,
    TopicCreated,
    parse_alter_partitions,
    parse_barrier,
    parse_claim,
    parse_create_topic,
    parse_drained,
    parse_fetch,
    parse_fetch_ack,
    parse_heartbeat,
    parse_nack,
    parse_produce,
    parse_refresh,
    parse_refresh_set,
    parse_release,
    parse_requeue,
    parse_seek,
    parse_set_topic_config,
)
from redcurrent.structs import TopicPartition

TP = TopicPartition("orders", 3)


def test_produce_gives_one_result_per_batch_and_refusals_as_values() -> None:
    reply = [
        [b"OK", b"1-0,1-1", b"2"],
        [b"DUP", b"1-2", b"3"],
        [b"STALE", 7],
        [b"NOTOPIC"],
    ]
    ok, dup, stale, notopic = parse_produce(reply, 4)
    assert ok == Produced(b"1-0,1-1", 2, False)
    assert dup == Produced(b"1-2", 3, True)
    assert isinstance(stale, StaleSequenceError) and "7" in str(stale)
    assert isinstance(notopic, PartitionMissingError)


def test_produce_refuses_a_stale_route_with_the_barriers_version() -> None:
    [refused] = parse_produce([[b"STALE_ROUTE", 5, b"5"]], 1)
    assert isinstance(refused, StaleRouteError) and refused.floor == 5


def test_fetch_stopped_at_a_growth_barrier() -> None:
    assert parse_fetch([b"BARRIER", b"7-1", 1], TP) == Gated("7-1", True)
    assert parse_fetch([b"BARRIER", b"0-0", 0], TP) == Gated("0-0", False)


def test_barrier_and_drained() -> None:
    assert parse_barrier([b"OK", b"9-0"], "orders", 3) == "9-0"
    with pytest.raises(UnknownTopicError):
        parse_barrier([b"NOTOPIC"], "orders", 3)
    assert parse_drained([b"OPEN"]) and parse_drained([b"DRAINED", b"9-0"])
    assert not parse_drained([b"WAIT", b"9-0"]) and not parse_drained([b"WAIT"])
    with pytest.raises(RedcurrentError, match="drained"):
        parse_drained([b"HUH"])


def test_produce_reply_of_the_wrong_size_is_an_error() -> None:
    with pytest.raises(RedcurrentError, match="unexpected reply from the produce script"):
        parse_produce([[b"OK", b"1-0", b"1"]], 2)
    with pytest.raises(RedcurrentError):
        parse_produce(b"OK", 1)
    [odd] = parse_produce([[b"WHAT"]], 1)
    assert type(odd) is RedcurrentError


def test_fetch_keeps_entries_as_read() -> None:
    entries = [[b"1-0", [b"f", b"1js", b"v", b"1", b"k", b"a"]], [b"1-1", None]]
    assert parse_fetch([b"OK", b"", entries, [2, 1]], TP) == Fetched(b"", entries, [2, 1])
    got = parse_fetch([b"OK", b"5-0", [], []], TP)
    assert got.last_id == b"5-0" and got.entries == [] and got.counts == []
    assert parse_fetch([b"OK", b"", entries, []], TP).entries is entries  # no copy per batch


def test_fetch_refusals() -> None:
    with pytest.raises(FencedError):
        parse_fetch([b"FENCED"], TP)
    with pytest.raises(GroupMissingError):
        parse_fetch([b"NOGROUP"], TP)
    with pytest.raises(RedcurrentError, match="fetch"):
        parse_fetch([b"HUH"], TP)


def test_ack_only_fetch() -> None:
    parse_fetch_ack([b"OK", b""], TP)
    parse_fetch_ack([b"NOGROUP"], TP)  # nothing left to ack: the next read recreates it
    with pytest.raises(FencedError, match=r"orders\[3\] is no longer owned"):
        parse_fetch_ack([b"FENCED"], TP)


def test_claim() -> None:
    assert parse_claim([b"OK", 1, [b"1-0", b"2-0"]], TP) == Claimed(True, ["1-0", "2-0"])
    assert parse_claim([b"OK", 0, []], TP) == Claimed(False, [])
    with pytest.raises(PartitionBusyError) as busy:
        parse_claim([b"BUSY", 1500], TP)
    assert busy.value.retry_ms == 1500
    with pytest.raises(PartitionBusyError) as expiring:
        parse_claim([b"BUSY", -2], TP)  # the key vanished between GET and PTTL
    assert expiring.value.retry_ms == 1
    assert isinstance(busy.value, FencedError)


def test_refresh() -> None:
    parse_refresh([b"OK"], TP)
    with pytest.raises(LeaseExpiredError):
        parse_refresh([b"ABSENT"], TP)
    with pytest.raises(FencedError) as fenced:
        parse_refresh([b"FENCED"], TP)
    assert type(fenced.value) is FencedError


def test_native_refresh_reads_the_previous_value() -> None:
    parse_refresh_set(b"m|i", "m|i", TP)  # mine: extended
    with pytest.raises(LeaseExpiredError):
        parse_refresh_set(None, "m|i", TP)  # expired: nothing created
    with pytest.raises(FencedError) as fenced:
        parse_refresh_set(b"m|other", "m|i", TP)  # another owner: nothing changed
    assert type(fenced.value) is FencedError
    with pytest.raises(RedcurrentError):
        parse_refresh_set(1, "m|i", TP)


@pytest.mark.parametrize("parse", [parse_release, parse_nack])
def test_release_and_nack(parse: Callable[[Any, TopicPartition], None]) -> None:
    parse([b"OK"], TP)
    with pytest.raises(FencedError):
        parse([b"FENCED"], TP)
    with pytest.raises(RedcurrentError):
        parse([b"?"], TP)


def test_seek() -> None:
    assert parse_seek([b"OK", [b"1-0", b"1-1"]], TP) == {"1-0", "1-1"}
    assert parse_seek([b"OK", []], TP) == set()
    with pytest.raises(FencedError, match="not sought"):
        parse_seek([b"FENCED"], TP)


def test_heartbeat_assignment() -> None:
    assert parse_heartbeat([b"OK", 4, 8, 6, b"1,5,7", 0], "orders", "g", "m") == \
        Assignment(4, 8, 6, frozenset({1, 5, 7}), False)
    assert parse_heartbeat([b"OK", 5, 8, 8, b"", 1], "orders", "g", "m") == \
        Assignment(5, 8, 8, frozenset(), True)


def test_heartbeat_refusals_say_whether_to_rejoin_or_stop() -> None:
    with pytest.raises(FencedError) as fenced:
        parse_heartbeat([b"FENCED"], "orders", "g", "m")
    assert not isinstance(fenced.value, FencedInstanceError)  # rejoin
    with pytest.raises(FencedInstanceError, match="newer instance"):
        parse_heartbeat([b"REPLACED"], "orders", "g", "m")
    with pytest.raises(FencedInstanceError, match="deleted by an operator"):
        parse_heartbeat([b"DELETED"], "orders", "g", "m")
    with pytest.raises(UnknownTopicError):
        parse_heartbeat([b"UNKNOWN_TOPIC"], "orders", "g", "m")


def test_create_topic() -> None:
    assert parse_create_topic([b"CREATED", 4, 1]) == TopicCreated(True, 4, 1)
    assert parse_create_topic([b"EXISTS", 2, 3]) == TopicCreated(False, 2, 3)


def test_alter_partitions() -> None:
    assert parse_alter_partitions([b"OK", 2, 4, 3], "orders", 4) == PartitionsAltered(2, 4, 3)
    assert parse_alter_partitions([b"SAME", 4], "orders", 4) == PartitionsAltered(4, 4, None)
    with pytest.raises(InvalidPartitionsError, match="has 4 partitions"):
        parse_alter_partitions([b"SHRINK", 4], "orders", 2)
    with pytest.raises(UnknownTopicError):
        parse_alter_partitions([b"UNKNOWN"], "orders", 2)


def test_set_topic_config() -> None:
    assert parse_set_topic_config([b"OK", 9], "orders") == 9
    with pytest.raises(UnknownTopicError):
        parse_set_topic_config([b"UNKNOWN"], "orders")


def test_requeue() -> None:
    assert parse_requeue([b"OK", b"9-0"]) == Requeued("9-0")
    assert parse_requeue([b"DONE"]) == Requeued(None)
    with pytest.raises(RedcurrentError):
        parse_requeue([b"NOPE"])
