"""The demo's verdict: what was really sent against what the consumer processes handled.

``sent`` maps ``(key, seq)`` to the entry id the producer got back; producers number
each key's messages 0, 1, 2, … in send order, so within a key seq order is stream order.
``handled`` is every ``handled`` event the workers logged. The checking is
:func:`redcurrent.testing.check_history`, the one the project's fault tests use (its
docstring states the per-key order rule); this module turns its report into the
demo's counts, example lines, JSON and table, and adds the two timings of a kill.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from redcurrent.testing import Event, Sent, Violation, check_history
from redcurrent.testing import order_violations as _violations

from ..output import table

__all__ = [
    "Verdict",
    "order_violations",
    "print_verdict",
    "recovery_seconds",
    "resumed_seconds",
    "verdict",
]

EXAMPLES = 3  # of each kind of problem


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


def describe(v: Violation) -> str:
    """One violation as the demo prints it."""
    if v.kind == "skipped":
        return f"skipped: key {v.key} seq {v.seq} by {v.consumer}, highest before {v.highest}"
    return f"{v.kind}: key {v.key} seq {v.seq} after {v.previous_seq} by {v.consumer}"


def order_violations(handled: Iterable[Event]) -> list[str]:
    """Per-key order violations (``redcurrent.testing``'s rule), described."""
    return [describe(v) for v in _violations(handled)]


def verdict(sent: Mapping[tuple[str, int], str], handled: Sequence[Event]) -> Verdict:
    """Counts over everything: lost = sent and never handled; duplicated = extra deliveries;
    unexpected = handled but not sent, or under another entry id."""
    history = check_history((Sent(k, s, entry_id) for (k, s), entry_id in sent.items()), handled)
    unexpected = history.unexpected + history.mismatched
    examples = (
        [f"lost: key {k} seq {s}" for k, s in history.lost[:EXAMPLES]]
        + [describe(v) for v in history.violations[:EXAMPLES]]
        + [f"unexpected: key {e.key} seq {e.seq} id {e.entry_id}" for e in unexpected[:EXAMPLES]]
    )
    return Verdict(
        produced=history.sent,
        consumed=history.consumed,
        deliveries=history.handled,
        lost=len(history.lost),
        duplicated=history.duplicates,
        order_violations=len(history.violations),
        unexpected=len(unexpected),
        examples=tuple(examples),
    )


def recovery_seconds(
    handled: Iterable[Event], killed: str, partitions: Iterable[int], kill_ns: int
) -> float | None:
    """From the SIGKILL until every partition the victim owned was handled again by a survivor.

    None when one of them saw no message afterwards (nothing to prove recovery with)."""
    wanted = set(partitions)
    after = (h for h in handled if h.consumer != killed and h.t_ns > kill_ns)
    return _until_each(after, wanted, kill_ns)


def resumed_seconds(
    handled: Iterable[Event], partitions: Iterable[int], kill_ns: int, after_ms: int
) -> float | None:
    """From a Redis node's SIGKILL until, on every partition it held, a message *written
    after the kill* (entry id time above ``after_ms``) was handled: the partition is
    written and consumed again. None when one of them saw no such message."""
    wanted = set(partitions)
    after = (h for h in handled if h.t_ns > kill_ns and int(h.entry_id.split("-")[0]) > after_ms)
    return _until_each(after, wanted, kill_ns)


def _until_each(handled: Iterable[Event], wanted: set[int], since_ns: int) -> float | None:
    """Seconds from ``since_ns`` until each of the ``wanted`` partitions had one of
    ``handled``; None if one never had."""
    first: dict[int | None, int] = {}
    for h in handled:
        if h.partition in wanted:
            first[h.partition] = min(first.get(h.partition, h.t_ns), h.t_ns)
    if not wanted or set(first) != wanted:
        return None
    return (max(first.values()) - since_ns) / 1e9


def print_verdict(r: Mapping[str, Any], c: Console) -> None:
    """The verdict table, the example problems, and the one-line conclusion."""
    rec = "-" if r["recovery_s"] is None else f"{r['recovery_s']:.2f}"
    rows = [
        ("produced", r["produced"]),
        ("consumed", r["consumed"]),
        ("lost", r["lost"]),
        ("duplicated", r["duplicated"]),
        ("order violations", r["order_violations"]),
        ("seconds to recover", rec),
    ]
    primary = (r.get("cluster") or {}).get("primary")
    if primary:
        back = "-" if primary["back_s"] is None else f"{primary['back_s']:.2f}"
        rows += [
            (
                "Redis primary killed",
                f":{primary['killed']['port']} {primary['killed']['partitions']}",
            ),
            ("replaced by (promoted)", f":{primary['replaced_by']['port']}"),
            ("seconds to promote", f"{primary['promoted_s']:.2f}"),
            ("seconds until its partitions were back", back),
        ]
    c.print()
    c.print(table("verdict", ["", "value"], rows))
    for example in r["examples"]:
        c.print(f"  {example}", markup=False)
    if r["ok"]:
        dup = (
            f"{r['duplicated']} duplicate deliveries: messages the killed consumer handled but "
            "never acked, redelivered (at-least-once)"
            if r["duplicated"]
            else "no duplicates"
        )
        c.print(f"[bold green]OK[/]: nothing lost, per-key order kept, {dup}.")
    else:
        c.print("[bold red]FAILED[/]: see the counts above.")
    if r["kept"]:
        c.print(
            f"kept topic {r['kept']['topic']} (group demo) and the consumers' logs in {r['kept']['logs']}",
            markup=False,
        )
