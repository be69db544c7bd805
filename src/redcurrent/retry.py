"""Failure policy: backoff, handler-requested retries and dead letters.

Attempts are counted from the pending entry's delivery count, which the fetcher
persists on every failed attempt (XCLAIM ... RETRYCOUNT), so a restart does not
reset them. After ``max_attempts`` the message is written to the group's
dead-letter stream (:mod:`redcurrent.deadletter`) and only then acked: a crash in
between duplicates a dead letter, it never loses the message. ``DeadLetter`` is the
handler's way to ask for that at once, next to ``Retry`` and ``BatchError``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from .config import positive
from .errors import ConfigError
from .structs import Message

__all__ = ["Backoff", "BatchError", "DeadLetter", "Retry", "RetryPolicy"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter between attempts of one message.

    ``delay(n) = min(max, initial * multiplier ** (n - 1))``, then scaled by a random
    factor in ``[1 - jitter, 1]``. ``Backoff(initial=0.1, multiplier=2.0, max=30.0, jitter=0.5)``
    """

    initial: float = 0.1
    multiplier: float = 2.0
    max: float = 30.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        positive(self.initial, "Backoff.initial", allow_zero=True)
        positive(self.max, "Backoff.max", allow_zero=True)
        if isinstance(self.multiplier, bool) or not isinstance(self.multiplier, int | float) \
                or not math.isfinite(self.multiplier) or self.multiplier < 1:
            raise ConfigError(f"Backoff.multiplier must be a finite number >= 1, got {self.multiplier!r}")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, int | float) or not 0 <= self.jitter <= 1:
            raise ConfigError(f"Backoff.jitter must be between 0 and 1, got {self.jitter!r}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max, self.initial * self.multiplier ** max(0, attempt - 1))
        return base * (1 - self.jitter * random.random())


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts and backoff for one topic, overriding the consumer's defaults.

    ``Consumer("orders", "audit", group="g", topic_retry={"audit": RetryPolicy(max_attempts=20)})``
    """

    max_attempts: int = 5
    backoff: Backoff = Backoff()

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be an int >= 1, got {self.max_attempts!r}")
        if not isinstance(self.backoff, Backoff):
            raise ConfigError("backoff must be a redcurrent.Backoff")


class Retry(Exception):
    """Raise from a handler to retry the message after ``after`` seconds.

    ``raise redcurrent.Retry(after=5.0)`` — counts as a failed attempt.
    """

    def __init__(self, after: float | None = None) -> None:
        super().__init__(f"retry requested after {after}s" if after is not None else "retry requested")
        self.after = None if after is None else positive(after, "Retry.after", allow_zero=True)


class DeadLetter(Exception):
    """Raise from a handler to send the message to the dead-letter stream at once.

    ``raise redcurrent.DeadLetter("customer does not exist")``
    """

    def __init__(self, reason: str = "dead-lettered by handler") -> None:
        super().__init__(reason)
        self.reason = reason


class BatchError(Exception):
    """Raise from a ``process_batch`` handler to say which messages failed.

    The others are acked; only ``failed`` are retried (and dead-lettered after the
    last attempt). ``raise redcurrent.BatchError([msgs[3]], "bad payload")``
    """

    def __init__(self, failed: Sequence[Message], reason: str = "batch partially failed") -> None:
        super().__init__(reason)
        self.failed = list(failed)
