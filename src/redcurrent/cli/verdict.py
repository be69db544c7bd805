"""The demo's verdict: what was really sent against what the consumer processes handled.

``sent`` maps ``(key, seq)`` to the entry id the producer got back; producers number
each key's messages 0, 1, 2, … in send order, so within a key seq order is stream order.
``handled`` is every record the workers appended to their logs (one ``os.write`` per
record on an ``O_APPEND`` descriptor, so a SIGKILLed worker's records survive it).

The order rule (the same one the project's fault tests use): per key, take the handled
records in time order; a *tenure* is a run of records by one consumer. Within a tenure
each seq is the previous + 1. A new tenure may start at any seq up to ``high + 1``
(``high``: the highest seq of the key handled so far): starting at or below it is the
new owner replaying the unacked tail of the previous one (duplicates, allowed by
at-least-once), starting above it skips a message (a violation).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Handled",
    "Verdict",
    "order_violations",
    "recovery_seconds",
    "resumed_seconds",
    "verdict",
]


@dataclass(frozen=True, slots=True)
class Handled:
    """One record a worker logged: the handler got this message."""

    t_ns: int
    consumer: str
    partition: int
    entry_id: str
    key: str
    seq: int

    @classmethod
    def from_log(cls, rec: Mapping[str, Any]) -> Handled:
        return cls(
            int(rec["t"]),
            str(rec["c"]),
            int(rec["p"]),
            str(rec["id"]),
            str(rec["k"]),
            int(rec["s"]),
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    produced: int
    consumed: int
    deliveries: int
    lost: int
    duplicated: int
    order_violations: int
    unexpected: int
    examples: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not (self.lost or self.order_violations or self.unexpected)


def order_violations(handled: Iterable[Handled]) -> list[str]:
    """Per-key order violations by the tenure rule of the module docstring."""
    by_key: dict[str, list[Handled]] = defaultdict(list)
    for h in sorted(handled, key=lambda h: h.t_ns):  # stable: ties keep log order
        by_key[h.key].append(h)
    out = []
    for key, events in by_key.items():
        high, prev = -1, None
        for e in events:
            if prev is not None and e.consumer == prev.consumer and e.seq != prev.seq + 1:
                kind = "backwards" if e.seq <= prev.seq else "gap"
                out.append(f"{kind}: key {key} seq {e.seq} after {prev.seq} by {e.consumer}")
            elif prev is not None and e.consumer != prev.consumer and e.seq > high + 1:
                out.append(f"skipped: key {key} seq {e.seq} by {e.consumer}, highest before {high}")
            prev, high = e, max(high, e.seq)
    return out


def verdict(sent: Mapping[tuple[str, int], str], handled: list[Handled]) -> Verdict:
    """Counts over everything: lost = sent and never handled; duplicated = extra deliveries."""
    times = Counter((h.key, h.seq) for h in handled)
    unexpected = [h for h in handled if sent.get((h.key, h.seq)) != h.entry_id]
    lost = [ks for ks in sent if ks not in times]
    violations = order_violations(handled)
    examples = (
        [f"lost: key {k} seq {s}" for k, s in lost[:3]]
        + violations[:3]
        + [f"unexpected: key {h.key} seq {h.seq} id {h.entry_id}" for h in unexpected[:3]]
    )
    return Verdict(
        produced=len(sent),
        consumed=sum(1 for ks in times if ks in sent),
        deliveries=len(handled),
        lost=len(lost),
        duplicated=sum(n - 1 for n in times.values()),
        order_violations=len(violations),
        unexpected=len(unexpected),
        examples=tuple(examples),
    )


def recovery_seconds(
    handled: Iterable[Handled], killed: str, partitions: Iterable[int], kill_ns: int
) -> float | None:
    """From the SIGKILL until every partition the victim owned was handled again by a survivor.

    None when one of them saw no message afterwards (nothing to prove recovery with)."""
    first: dict[int, int] = {}
    wanted = set(partitions)
    for h in handled:
        if h.partition in wanted and h.consumer != killed and h.t_ns > kill_ns:
            first[h.partition] = min(first.get(h.partition, h.t_ns), h.t_ns)
    if not wanted or set(first) != wanted:
        return None
    return (max(first.values()) - kill_ns) / 1e9


def resumed_seconds(
    handled: Iterable[Handled], partitions: Iterable[int], kill_ns: int, after_ms: int
) -> float | None:
    """From a Redis node's SIGKILL until, on every partition it held, a message *written
    after the kill* (entry id time above ``after_ms``) was handled: the partition is
    written and consumed again. None when one of them saw no such message."""
    first: dict[int, int] = {}
    wanted = set(partitions)
    for h in handled:
        if h.partition in wanted and h.t_ns > kill_ns and int(h.entry_id.split("-")[0]) > after_ms:
            first[h.partition] = min(first.get(h.partition, h.t_ns), h.t_ns)
    if not wanted or set(first) != wanted:
        return None
    return (max(first.values()) - kill_ns) / 1e9
