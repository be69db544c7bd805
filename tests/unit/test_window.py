"""The window of concurrent process() (redcurrent.lanes): where a re-read starts."""

from __future__ import annotations

from redcurrent.lanes import Window


def test_floor_is_just_before_the_oldest_open_entry_whatever_finished_after_it() -> None:
    w = Window()
    for entry_id in ("5-0", "5-1", "7-0", "9-3"):
        w.add(entry_id)
    assert w.floor() == "4-18446744073709551615"
    assert w.close("5-1") and w.close("9-3")  # finished out of order: the floor stays
    assert w.floor() == "4-18446744073709551615"
    assert w.close("5-0")
    assert w.floor() == "6-18446744073709551615"  # before 7-0, the oldest still open
    assert not w.close("5-0")  # closing twice gives nothing back twice
    assert w.close("7-0")
    assert w.floor() is None and not w.open


def test_clear_reports_how_many_were_open() -> None:
    w = Window()
    for entry_id in ("1-0", "1-1", "1-2"):
        w.add(entry_id)
    w.close("1-1")
    assert w.clear() == 2
    assert w.floor() is None
