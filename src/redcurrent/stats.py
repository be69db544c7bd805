"""What a consumer counts: its counters and its handler-latency histogram.

Every counter is a field of :class:`ConsumerStats`, with the help text the metrics
exporter shows; nothing else names them. Counting is an attribute increment
(``stats.processed += 1``): it runs per message, so it must cost no more than that.
:meth:`Consumer.stats` returns the counters that counted something, as a dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

__all__ = ["CONSUMER_COUNTERS", "LATENCY_BUCKETS", "ConsumerStats", "Histogram"]


def _counter(help_text: str) -> int:
    return field(default=0, metadata={"help": help_text})


@dataclass(slots=True)
class ConsumerStats:
    """The counters of one consumer (private; :meth:`Consumer.stats` shows them)."""

    processed: int = _counter("Messages whose handler returned (then acked).")
    failed: int = _counter("Handler failures (each attempt).")
    retried: int = _counter("Messages retried in place after a failure.")
    dead_lettered: int = _counter("Messages moved to the dead-letter stream.")
    expired: int = _counter("Messages dropped because their TTL had passed.")
    decode_failures: int = _counter("Entries that could not be decoded (dead-lettered).")
    trimmed: int = _counter("Pending entries found trimmed away (dead-lettered as 'trimmed').")
    rebalances: int = _counter("Group epochs this consumer went through.")
    partitions_lost: int = _counter(
        "Partitions lost without a graceful handoff (fenced, or their fetch failed for good).")
    heartbeat_errors: int = _counter("Heartbeats that failed.")
    fetch_errors: int = _counter("Fetches that failed (each is retried).")
    redis_errors: int = _counter(
        "Redis calls of the consume path that failed (each is retried until request_timeout).")
    partition_errors: int = _counter(
        "Partitions given up after an error past request_timeout (process() raised it).")
    release_errors: int = _counter(
        "Partition releases that failed (retried; the owner key expires otherwise).")
    groups_recreated: int = _counter("Redis consumer groups recreated after they vanished.")
    requeue_skipped: int = _counter("Requeued dead letters of another group, acked and skipped.")
    commits_fenced: int = _counter(
        "Transactional commits refused because the partition was lost: nothing written, nothing acked.")

    def as_dict(self) -> dict[str, int]:
        """The counters that counted something: a counter never counted is absent."""
        return {name: n for name in CONSUMER_COUNTERS if (n := getattr(self, name))}


# Counter name -> help text, in field order (the metrics exporter's families).
CONSUMER_COUNTERS: Mapping[str, str] = {f.name: f.metadata["help"] for f in fields(ConsumerStats)}

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Cumulative-bucket histogram of handler latency in seconds (Prometheus-shaped)."""

    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.sum += seconds
        for i, bound in enumerate(self.buckets):
            if seconds <= bound:
                self.counts[i] += 1
                break

    def cumulative(self) -> list[tuple[float, int]]:
        out, total = [], 0
        for bound, n in zip(self.buckets, self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out
