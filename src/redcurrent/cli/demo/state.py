"""What the demo has seen so far: what was sent, what was handled, and the consumer it killed."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from redcurrent.testing import Event

from .fleet import Worker

__all__ = ["Kill", "Tally"]

RATE_WINDOW_NS = 1_000_000_000  # msg/s in the live view: the handled events of the last second


@dataclass(frozen=True, slots=True)
class Kill:
    """The consumer SIGKILLed: its partitions, when (``time.monotonic_ns()``), the epoch then."""

    worker: Worker
    partitions: tuple[int, ...]
    at_ns: int
    epoch: int


@dataclass
class Tally:
    """``sent`` maps ``(key, seq)`` to the entry id the producer got back; ``handled`` is
    every message a consumer process logged, with per-partition and per-consumer counts
    and the last second of them for the rates."""

    sent: dict[tuple[str, int], str] = field(default_factory=dict)
    handled: list[Event] = field(default_factory=list)
    by_partition: Counter[int | None] = field(default_factory=Counter)
    by_consumer: Counter[str] = field(default_factory=Counter)
    recent: deque[Event] = field(default_factory=deque)

    def add(self, events: Iterable[Event], now_ns: int) -> None:
        """Count ``events`` and keep in ``recent`` only those of the second before ``now_ns``."""
        for e in events:
            self.handled.append(e)
            self.by_partition[e.partition] += 1
            self.by_consumer[e.consumer] += 1
            self.recent.append(e)
        horizon = now_ns - RATE_WINDOW_NS
        self.recent = deque(
            sorted((e for e in self.recent if e.t_ns > horizon), key=lambda e: e.t_ns)
        )
