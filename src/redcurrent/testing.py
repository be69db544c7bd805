"""The history checker: what producers sent against what consumers handled and acked.

Use it in your own tests of a consumer group: record what the producer got entry ids
for, record what each handler saw, and let :func:`check_history` say whether anything
was lost, left unacked, delivered out of per-key order or delivered twice. The
``redcurrent demo`` command and the library's own crash, pause and handoff tests use
it. Example::

    from redcurrent.testing import Event, Sent, check_history

    sent = [Sent("k", seq, meta.id) for seq, meta in enumerate(metas)]
    events = [Event("c1", "handled", m.key, m.value["seq"], m.id, time.monotonic_ns())
              for m in seen]  # plus an "acked" Event once each handler returned
    report = check_history(sent, events)
    assert report.ok, report.summary()

The two inputs:

* ``sent``: one :class:`Sent` per record a producer got an entry id for, ``(key, seq,
  entry_id)``. ``(key, seq)`` identifies a message; producers number each key's records
  0, 1, 2, … in the order they send them, so within a key, seq order *is* stream order.
* ``events``: one :class:`Event` per thing a consumer did, ``(consumer, event, key, seq,
  entry_id, t_ns)`` with ``t_ns`` from ``time.monotonic_ns()`` (one clock for every
  process on the machine). ``event`` is ``"handled"`` (the handler got the message) or
  ``"acked"`` (the handler returned, so the library acks it); other events (``assign``,
  ``lost``, …) are ignored by the checker.

Consumers in other processes write their events with :class:`EventLog` (one ``write``
per line on an ``O_APPEND`` file, so what was logged survives a SIGKILL) and the test
reads them back with :func:`read_log`.

What the report says
--------------------

``lost``
    sent, never handled by anyone.
``unacked``
    handled at least once, but no handler ever returned for it: at-least-once means some
    delivery must have completed.
``duplicated``
    ``(key, seq) -> n`` for messages handled ``n > 1`` times (allowed after a crash,
    forbidden after a graceful stop).
``unexpected`` / ``mismatched``
    handled events for a ``(key, seq)`` nobody sent, or with another entry id than the
    one the producer got back (a double write, or the checker was fed the wrong data).
``violations``
    per-key order violations, by the rule below.

The order rule
--------------

Per key, take the *handled* events in time order (``t_ns``; ties keep input order). A
*tenure* is a maximal run of consecutive events by one consumer: one stretch of one
owner delivering that key's partition.

1. Within a tenure every seq is exactly the previous seq + 1. A smaller one is
   ``"backwards"`` (the owner went back on its own, e.g. read new entries before the
   pending ones it took over); a larger one is a ``"gap"`` (it overtook a message).
2. A tenure that follows another may start at any seq up to ``high + 1``, where ``high``
   is the highest seq of that key handled so far. Starting at or below ``high`` is a
   *replay*: the new owner redelivers the unacked in-flight tail of the previous owner
   (handled, but the ack never reached Redis). Those events are duplicates, not
   violations, and the replay must then go on contiguously by rule 1.
3. A tenure starting above ``high + 1`` is ``"skipped"``: some earlier message of the key
   had not been handled yet.

The first event of a key may have any seq (a group that starts at "latest" begins
mid-stream); what it skipped shows up as ``lost`` if it was expected.
"""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

import orjson

__all__ = [
    "ACKED",
    "HANDLED",
    "Event",
    "EventLog",
    "History",
    "Sent",
    "Violation",
    "check_history",
    "order_violations",
    "parse_log_line",
    "read_log",
]

HANDLED = "handled"
ACKED = "acked"

Key: TypeAlias = Hashable
"""A message key as the test identifies it: whatever the producer used (str, bytes, a tuple …)."""


@dataclass(frozen=True, slots=True)
class Sent:
    """A record a producer stored: its key, per-key sequence number and entry id."""

    key: Key
    seq: int
    entry_id: str
    partition: int | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """Something a consumer did with a message (or with partitions, for listener events)."""

    consumer: str
    event: str
    key: Key
    seq: int
    entry_id: str
    t_ns: int
    partition: int | None = None


@dataclass(frozen=True, slots=True)
class Violation:
    """One per-key order violation (see the module docstring for the rule).

    ``highest`` is the highest seq of the key handled before this event.
    """

    kind: Literal["backwards", "gap", "skipped"]
    key: Key
    seq: int
    previous_seq: int
    consumer: str
    previous_consumer: str
    t_ns: int
    highest: int = -1

    def __str__(self) -> str:
        return (
            f"{self.kind}: key {self.key!r} seq {self.seq} by {self.consumer} after seq "
            f"{self.previous_seq} by {self.previous_consumer}"
        )


@dataclass
class History:
    """The checker's report; ``ok`` when nothing was lost, left unacked, out of order or odd."""

    sent: int
    handled: int
    acked: int
    lost: list[tuple[Key, int]] = field(default_factory=list)
    unacked: list[tuple[Key, int]] = field(default_factory=list)
    duplicated: dict[tuple[Key, int], int] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    unexpected: list[Event] = field(default_factory=list)
    mismatched: list[Event] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing left unacked, order kept, no foreign events (duplicates allowed)."""
        return not (
            self.lost or self.unacked or self.violations or self.unexpected or self.mismatched
        )

    @property
    def consumed(self) -> int:
        """Distinct messages sent and handled at least once."""
        return self.sent - len(self.lost)

    @property
    def duplicates(self) -> int:
        """Extra deliveries over all messages."""
        return sum(n - 1 for n in self.duplicated.values())

    def summary(self, limit: int = 10) -> str:
        """One line of counts, then up to ``limit`` examples of each problem."""
        lines = [
            f"sent={self.sent} handled={self.handled} acked={self.acked} lost={len(self.lost)} "
            f"unacked={len(self.unacked)} duplicated={len(self.duplicated)} "
            f"(+{self.duplicates} deliveries) violations={len(self.violations)} "
            f"unexpected={len(self.unexpected)} mismatched={len(self.mismatched)}"
        ]

        def some(title: str, items: Sequence[object]) -> None:
            if items:
                more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
                lines.append(f"  {title}: " + "; ".join(map(str, items[:limit])) + more)

        some("lost", self.lost)
        some("unacked", self.unacked)
        some("duplicated", [f"{k!r}#{s} x{n}" for (k, s), n in list(self.duplicated.items())])
        some("violations", self.violations)
        some("unexpected", self.unexpected)
        some("mismatched", self.mismatched)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def check_history(sent: Iterable[Sent], events: Iterable[Event]) -> History:
    """Compare what was sent with what consumers handled and acked (rules: module docstring)."""
    sent_by_msg: dict[tuple[Key, int], Sent] = {(s.key, s.seq): s for s in sent}
    indexed = list(enumerate(events))
    handled = [(i, e) for i, e in indexed if e.event == HANDLED]
    acked = [e for _, e in indexed if e.event == ACKED]
    report = History(sent=len(sent_by_msg), handled=len(handled), acked=len(acked))

    known: list[tuple[int, Event]] = []
    for i, e in handled:
        s = sent_by_msg.get((e.key, e.seq))
        if s is None:
            report.unexpected.append(e)
        elif e.entry_id and s.entry_id and e.entry_id != s.entry_id:
            report.mismatched.append(e)
        else:
            known.append((i, e))

    counts = Counter((e.key, e.seq) for _, e in known)
    completed = {(e.key, e.seq) for e in acked}
    report.lost = sorted((m for m in sent_by_msg if m not in counts), key=_order)
    report.unacked = sorted((m for m in counts if m not in completed), key=_order)
    report.duplicated = {
        m: n for m, n in sorted(counts.items(), key=lambda kv: _order(kv[0])) if n > 1
    }

    report.violations = order_violations(e for _, e in known)
    return report


def _order(m: tuple[Key, int]) -> tuple[str, int]:
    return (repr(m[0]), m[1])


def order_violations(events: Iterable[Event]) -> list[Violation]:
    """Per-key order violations among the handled ``events``, by the rule of the module
    docstring (keys in ``repr`` order; no ``sent`` needed)."""
    by_key: dict[Key, list[tuple[int, Event]]] = defaultdict(list)
    for i, e in enumerate(events):
        if e.event == HANDLED:
            by_key[e.key].append((i, e))
    out: list[Violation] = []
    for key in sorted(by_key, key=repr):
        ordered = [e for _, e in sorted(by_key[key], key=lambda ie: (ie[1].t_ns, ie[0]))]
        out.extend(_tenure_violations(ordered))
    return out


def _tenure_violations(events: list[Event]) -> list[Violation]:
    """Apply the tenure rule to one key's handled events, already in time order."""
    out: list[Violation] = []
    prev: Event | None = None
    high = -1
    for e in events:
        if prev is not None:
            kind: Literal["backwards", "gap", "skipped"] | None = None
            if e.consumer == prev.consumer:  # same tenure: strictly contiguous
                if e.seq <= prev.seq:
                    kind = "backwards"
                elif e.seq > prev.seq + 1:
                    kind = "gap"
            elif e.seq > high + 1:  # a new tenure may replay, never skip
                kind = "skipped"
            if kind is not None:
                out.append(
                    Violation(kind, e.key, e.seq, prev.seq, e.consumer, prev.consumer, e.t_ns, high)
                )
        high = max(high, e.seq)
        prev = e
    return out


# --------------------------------------------------------------------------- event logs


class EventLog:
    """A consumer's append-only event log, for a test that reads it from another process.

    Each :meth:`write` is one line, one JSON object, written with a single ``os.write``
    on an ``O_APPEND`` descriptor and stamped ``t`` = ``time.monotonic_ns()``: the
    kernel has the line as soon as the call returns, so it survives a SIGKILL of the
    writer, and lines of processes sharing a file never interleave. The lines
    :func:`read_log` understands::

        {"t", "c": member, "e": "handled" | "acked", "p", "id", "k", "s", ...}   a message
        {"t", "c", "e": "assign" | "revoke" | "lost", "ps": [partition, ...]}  listeners
        {"t", "c", "e": "started" | "stopped", ...}                           anything else

    Example::

        log = EventLog("/tmp/c1.log", "c1")
        log.write("handled", p=msg.partition, id=msg.id, k=msg.key, s=msg.value["seq"])
    """

    def __init__(self, path: str | Path, member: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._member = member

    def write(self, event: str, **fields: Any) -> None:
        """Append one ``event`` line with ``fields`` (values that are not JSON become str)."""
        rec = {"t": time.monotonic_ns(), "c": self._member, "e": event, **fields}
        os.write(self._fd, orjson.dumps(rec, default=str) + b"\n")

    def close(self) -> None:
        os.close(self._fd)


def parse_log_line(line: str | bytes) -> list[Event]:
    """The events of one :class:`EventLog` line; none for a torn line (a writer killed mid-write).

    Message events become one :class:`Event` with their key and seq; listener events
    (``assign``/``revoke``/``lost``) become one Event per partition with seq -1.
    """
    try:
        rec = orjson.loads(line)
    except ValueError:
        return []
    if not isinstance(rec, dict):
        return []
    if "ps" in rec:
        return [Event(rec["c"], rec["e"], None, -1, "", rec["t"], p) for p in rec["ps"]]
    if "s" in rec:
        return [Event(rec["c"], rec["e"], rec["k"], rec["s"], rec["id"], rec["t"], rec["p"])]
    return [Event(rec["c"], rec["e"], None, -1, "", rec["t"])]


def read_log(path: str | Path) -> list[Event]:
    """Every event of an :class:`EventLog` file, in file order (a torn last line is skipped)."""
    data = Path(path).read_bytes()
    return [e for line in data.splitlines() if line for e in parse_log_line(line)]
