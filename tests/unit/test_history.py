"""The history checker itself: each rule on a tiny hand-written history."""

from __future__ import annotations

import json
import os
from pathlib import Path

from redcurrent.testing import Event, Sent, check_history, read_log


def sent(key: str, n: int) -> list[Sent]:
    return [Sent(key, s, f"1-{s}") for s in range(n)]


def run(consumer: str, key: str, seqs: list[int], t0: int, *, ack: bool = True) -> list[Event]:
    """Handled (and acked) events of ``seqs`` by ``consumer``, 10 ns apart from ``t0``."""
    out = []
    for i, s in enumerate(seqs):
        out.append(Event(consumer, "handled", key, s, f"1-{s}", t0 + 10 * i))
        if ack:
            out.append(Event(consumer, "acked", key, s, f"1-{s}", t0 + 10 * i + 5))
    return out


def test_a_clean_history_is_ok() -> None:
    report = check_history(
        sent("k", 5) + sent("j", 3), run("a", "k", [0, 1, 2, 3, 4], 0) + run("b", "j", [0, 1, 2], 0)
    )
    assert report.ok, report.summary()
    assert (report.sent, report.handled, report.acked) == (8, 8, 8)
    assert report.duplicated == {} and report.duplicates == 0


def test_a_message_nobody_handled_is_lost() -> None:
    report = check_history(sent("k", 4), run("a", "k", [0, 1, 3], 0))
    assert report.lost == [("k", 2)]
    assert not report.ok
    assert "lost=1" in report.summary()


def test_a_message_whose_handler_never_returned_is_unacked() -> None:
    events = run("a", "k", [0, 1], 0) + run("a", "k", [2], 100, ack=False)
    report = check_history(sent("k", 3), events)
    assert report.unacked == [("k", 2)]
    assert report.lost == [] and not report.ok


def test_a_later_ack_by_another_consumer_completes_the_message() -> None:
    events = run("a", "k", [0, 1], 0, ack=False) + run("b", "k", [0, 1, 2], 100)
    report = check_history(sent("k", 3), events)
    assert report.ok, report.summary()
    assert report.duplicated == {("k", 0): 2, ("k", 1): 2}


def test_new_owner_replaying_the_unacked_tail_is_a_duplicate_not_a_violation() -> None:
    # a handled 0..3, acked up to 1 in Redis, then crashed; b replays 2, 3 and goes on.
    events = run("a", "k", [0, 1, 2, 3], 0) + run("b", "k", [2, 3, 4, 5], 1000)
    report = check_history(sent("k", 6), events)
    assert report.violations == []
    assert report.duplicated == {("k", 2): 2, ("k", 3): 2}
    assert report.duplicates == 2 and report.ok


def test_an_owner_going_back_on_its_own_is_a_violation() -> None:
    report = check_history(sent("k", 4), run("a", "k", [0, 2, 1, 3], 0))
    kinds = [v.kind for v in report.violations]
    assert kinds == ["gap", "backwards", "gap"]
    assert not report.ok


def test_new_owner_reading_new_entries_before_the_taken_over_ones_is_a_violation() -> None:
    # b handles 2, 3 (new) before replaying 0, 1 that a handled but never acked
    events = run("a", "k", [0, 1], 0, ack=False) + run("b", "k", [2, 3, 0, 1], 1000)
    report = check_history(sent("k", 4), events)
    assert [v.kind for v in report.violations] == ["backwards"]
    v = report.violations[0]
    assert (v.key, v.seq, v.previous_seq, v.consumer) == ("k", 0, 3, "b")


def test_new_owner_skipping_a_pending_message_is_a_violation() -> None:
    # a fetched 2 but died before handling it; b must handle 2 before 3
    events = run("a", "k", [0, 1], 0) + run("b", "k", [3, 2], 1000)
    report = check_history(sent("k", 4), events)
    assert [v.kind for v in report.violations] == ["skipped", "backwards"]
    assert "skipped: key 'k' seq 3 by b after seq 1 by a" in report.summary()


def test_order_is_judged_by_time_not_by_input_order() -> None:
    # logs are concatenated per consumer: b's file comes first, but a handled first
    events = run("b", "k", [2, 3], 1000) + run("a", "k", [0, 1], 0)
    assert check_history(sent("k", 4), events).ok


def test_a_zombie_handling_after_the_handoff_shows_as_duplicate_in_a_tenure_of_its_own() -> None:
    events = (
        run("a", "k", [0, 1], 0)
        + run("b", "k", [1, 2, 3], 100)
        + run("a", "k", [2], 200)
        + run("b", "k", [4], 300)
    )
    report = check_history(sent("k", 5), events)
    assert report.violations == []
    assert report.duplicated == {("k", 1): 2, ("k", 2): 2}


def test_keys_are_independent() -> None:
    events = run("a", "k", [0, 1], 0) + run("a", "j", [0, 1], 5)
    assert check_history(sent("k", 2) + sent("j", 2), events).ok


def test_first_event_of_a_key_may_start_mid_stream() -> None:
    report = check_history(sent("k", 5)[3:], run("a", "k", [3, 4], 0))
    assert report.ok, report.summary()


def test_bytes_keys_work() -> None:
    s = [Sent(b"\x00k", i, f"1-{i}") for i in range(2)]
    events = [
        Event("a", e, b"\x00k", i, f"1-{i}", i * 10 + j)
        for i in range(2)
        for j, e in enumerate(["handled", "acked"])
    ]
    assert check_history(s, events).ok


def test_unknown_and_mismatched_events_are_reported() -> None:
    events = [
        *run("a", "k", [0], 0),
        Event("a", "handled", "ghost", 0, "9-9", 50),
        Event("a", "handled", "k", 1, "7-7", 60),  # k#1 was stored as 1-1
    ]
    report = check_history(sent("k", 2), events)
    assert [e.key for e in report.unexpected] == ["ghost"]
    assert [e.entry_id for e in report.mismatched] == ["7-7"]
    assert report.lost == [("k", 1)]
    assert not report.ok
    text = report.summary()
    assert "unexpected=1" in text and "mismatched=1" in text


def test_summary_limits_examples() -> None:
    report = check_history(sent("k", 30), [])
    text = report.summary(limit=3)
    assert "lost=30" in text and "(+27 more)" in text
    assert str(report) == report.summary()


def test_read_log_parses_worker_lines_and_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    lines = [
        {"t": 1, "c": "w1", "e": "started"},
        {"t": 2, "c": "w1", "e": "assign", "ps": [0, 3]},
        {"t": 3, "c": "w1", "e": "handled", "p": 3, "id": "5-0", "k": "k7", "s": 4, "a": 1},
        {"t": 4, "c": "w1", "e": "acked", "p": 3, "id": "5-0", "k": "k7", "s": 4},
    ]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    for rec in lines:
        os.write(fd, (json.dumps(rec) + "\n").encode())
    os.write(fd, b'{"t": 5, "c": "w1", "e": "hand')  # SIGKILL mid-line
    os.close(fd)
    events = read_log(path)
    assert [(e.event, e.partition) for e in events] == [
        ("started", None),
        ("assign", 0),
        ("assign", 3),
        ("handled", 3),
        ("acked", 3),
    ]
    handled = events[3]
    assert (handled.consumer, handled.key, handled.seq, handled.entry_id, handled.t_ns) == (
        "w1",
        "k7",
        4,
        "5-0",
        3,
    )
