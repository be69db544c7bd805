"""A consumer's counters: named in one place, reported only once they counted."""

from __future__ import annotations

from dataclasses import fields

from redcurrent.stats import CONSUMER_COUNTERS, ConsumerStats, Histogram


def test_every_counter_has_help_text_for_the_exporter() -> None:
    assert list(CONSUMER_COUNTERS) == [f.name for f in fields(ConsumerStats)]
    assert all(text.strip() for text in CONSUMER_COUNTERS.values())


def test_stats_report_only_counters_that_counted() -> None:
    stats = ConsumerStats()
    assert stats.as_dict() == {}
    stats.processed += 3
    stats.dead_lettered += 1
    assert stats.as_dict() == {"processed": 3, "dead_lettered": 1}


def test_histogram_buckets_are_cumulative() -> None:
    hist = Histogram((0.1, 1.0))
    for seconds in (0.05, 0.5, 0.7, 5.0):
        hist.observe(seconds)
    assert hist.cumulative() == [(0.1, 1), (1.0, 3)]
    assert hist.count == 4 and abs(hist.sum - 6.25) < 1e-9
