"""Option defaults, units and validation, in one place.

Public durations are float seconds; whatever reaches Redis is converted here to ms.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .errors import ConfigError
from .keys import Keys, validate_name

if TYPE_CHECKING:
    from .protocols import Deserializer, Listener, Serializer
    from .retry import Backoff, RetryPolicy

__all__ = [
    "IDEMPOTENCE_WINDOW_MS",
    "ConsumerOptions",
    "ProducerOptions",
    "check_bool",
    "check_ttl_ms",
    "handler_timeout_of",
    "positive",
    "seconds_to_ms",
]

DEFAULT_NAMESPACE = "rc"
MiB = 1024 * 1024


def positive(value: object, what: str, *, allow_zero: bool = False) -> float:
    """``value`` as a float if it is a finite number > 0 (or >= 0), else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{what} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{what} must be a positive int, got {value!r}")
    return value


MAX_TTL_S = 100 * 365 * 24 * 3600.0  # a century: beyond it a TTL means "never"


def check_ttl_ms(ttl: object) -> int:
    """A TTL in seconds, validated, as ms (ConfigError unless 0 < ttl <= 100 years)."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl) \
            or not 0 < ttl <= MAX_TTL_S:
        raise ConfigError(f"ttl must be a positive number of seconds, at most {MAX_TTL_S:.0f} (100 years), got {ttl!r}")
    return max(1, int(ttl * 1000))


def check_bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be True or False, got {value!r}")
    return value


def seconds_to_ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


# How long the produce script remembers a producer's last batch on a partition
# (docs/architecture.md §9): a resend within it is answered DUP, never stored twice.
# Not an option: resends come within delivery_timeout (two minutes by default).
IDEMPOTENCE_WINDOW_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class ProducerOptions:
    """Validated producer settings (see :class:`redcurrent.Producer`)."""

    keys: Keys
    linger: float = 0.005
    batch_size: int = 500
    batch_bytes: int = MiB
    max_message_bytes: int = MiB
    idempotent: bool = True
    auto_create_topics: bool = True
    default_partitions: int = 1
    serializer: Serializer | None = None
    request_timeout: float = 30.0
    delivery_timeout: float = 120.0
    retry_backoff: float = 0.05
    metadata_max_age: float = 0.5
    acks: Literal["leader", "replica"] = "leader"

    def __post_init__(self) -> None:
        positive(self.linger, "linger", allow_zero=True)
        positive_int(self.batch_size, "batch_size")
        positive_int(self.batch_bytes, "batch_bytes")
        positive_int(self.max_message_bytes, "max_message_bytes")
        positive_int(self.default_partitions, "default_partitions")
        positive(self.request_timeout, "request_timeout")
        positive(self.delivery_timeout, "delivery_timeout")
        positive(self.retry_backoff, "retry_backoff", allow_zero=True)
        positive(self.metadata_max_age, "metadata_max_age")
        check_bool(self.idempotent, "idempotent")
        check_bool(self.auto_create_topics, "auto_create_topics")
        if self.acks not in ("leader", "replica"):
            raise ConfigError(f"acks must be 'leader' or 'replica', got {self.acks!r}")
        if self.serializer is not None and not callable(self.serializer):
            raise ConfigError("serializer must be a callable taking a value and returning bytes")


@dataclass(frozen=True, slots=True)
class ConsumerOptions:
    """Validated consumer settings (see :class:`redcurrent.Consumer`).

    Validation also settles what was given: ``topics`` without duplicates (first
    mention first), ``backoff`` a Backoff (``Backoff()`` for None), ``topic_retry``
    a dict of its own.
    """

    keys: Keys
    topics: tuple[str, ...]
    group: str
    member_id: str | None = None
    start: Literal["latest", "earliest"] = "latest"
    batch_size: int = 100
    heartbeat_interval: float = 1.0
    session_timeout: float = 10.0
    rebalance_timeout: float = 30.0
    max_in_flight: int = 10_000
    assignor: Literal["round_robin", "sticky"] = "round_robin"
    on_assign: Listener | None = None
    on_revoke: Listener | None = None
    on_lost: Listener | None = None
    deserializer: Deserializer | None = None
    auto_ack: bool = True
    max_attempts: int = 5
    backoff: Backoff | None = None
    topic_retry: Mapping[str, RetryPolicy] | None = None
    handler_timeout: float | None = None
    block: float = 2.0
    request_timeout: float = 30.0
    concurrency: int | None = None
    ordering: Literal["partition", "key", "none"] = "partition"

    def __post_init__(self) -> None:
        self._check_names()
        self._check_callables()
        self._check_concurrency()
        if self.start not in ("latest", "earliest"):
            raise ConfigError(f"start must be 'latest' or 'earliest', got {self.start!r}")
        if self.assignor not in ("round_robin", "sticky"):
            raise ConfigError(f"assignor must be 'round_robin' or 'sticky', got {self.assignor!r}")
        positive_int(self.batch_size, "batch_size")
        positive_int(self.max_in_flight, "max_in_flight")
        check_bool(self.auto_ack, "auto_ack")
        hb = positive(self.heartbeat_interval, "heartbeat_interval")
        session = positive(self.session_timeout, "session_timeout")
        positive(self.rebalance_timeout, "rebalance_timeout")
        positive(self.block, "block")
        positive(self.request_timeout, "request_timeout")
        if self.handler_timeout is not None:
            positive(self.handler_timeout, "handler_timeout")
        if session < 2 * hb:
            raise ConfigError(
                f"session_timeout ({session}) must be at least 2x heartbeat_interval ({hb}); "
                "Kafka's advice is 3x"
            )
        self._check_retry()

    def _check_names(self) -> None:
        if not self.topics:
            raise ConfigError("Consumer needs at least one topic: Consumer('orders', group='billing')")
        for t in self.topics:
            validate_name(t)
        object.__setattr__(self, "topics", tuple(dict.fromkeys(self.topics)))  # frozen: set once, here
        validate_name(self.group, "group")
        member_id = self.member_id
        if member_id is not None and (not isinstance(member_id, str) or not member_id
                                      or len(member_id) > 200 or "|" in member_id):
            raise ConfigError(f"member_id must be 1-200 characters without '|', got {member_id!r}")

    def _check_concurrency(self) -> None:
        if self.ordering not in ("partition", "key", "none"):
            raise ConfigError(f"ordering must be 'partition', 'key' or 'none', got {self.ordering!r}")
        if self.concurrency is None:
            if self.ordering != "partition":
                raise ConfigError(f"ordering={self.ordering!r} needs concurrency=N (the most handler "
                                  "calls in flight at once); without it one runs per partition")
            return
        positive_int(self.concurrency, "concurrency")
        if self.max_in_flight < self.concurrency:
            raise ConfigError(f"max_in_flight ({self.max_in_flight}) must be at least concurrency "
                              f"({self.concurrency}): only fetched messages can be in flight")

    def _check_callables(self) -> None:
        if self.deserializer is not None and not callable(self.deserializer):
            raise ConfigError("deserializer must be a callable taking bytes")
        for name, fn in (("on_assign", self.on_assign), ("on_revoke", self.on_revoke), ("on_lost", self.on_lost)):
            if fn is not None and not callable(fn):
                raise ConfigError(f"{name} must be a callable taking a list of TopicPartition")

    def _check_retry(self) -> None:
        # Imported here: retry's value types validate themselves with this module's helpers.
        from .retry import Backoff, RetryPolicy

        max_attempts = self.max_attempts
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
        if self.backoff is None:
            object.__setattr__(self, "backoff", Backoff())
        elif not isinstance(self.backoff, Backoff):
            raise ConfigError("backoff must be a redcurrent.Backoff")
        if self.topic_retry is not None and not isinstance(self.topic_retry, Mapping):
            raise ConfigError("topic_retry must map topic names to RetryPolicy")
        for t, rp in (self.topic_retry or {}).items():
            if t not in self.topics or not isinstance(rp, RetryPolicy):
                raise ConfigError(f"topic_retry maps subscribed topics to RetryPolicy; bad entry {t!r}")
        object.__setattr__(self, "topic_retry", dict(self.topic_retry or {}))

    @property
    def backoff_or_default(self) -> Backoff:
        """``backoff`` (validation replaced a None by the default ``Backoff()``)."""
        assert self.backoff is not None
        return self.backoff

    @property
    def session_ms(self) -> int:
        return seconds_to_ms(self.session_timeout)

    @property
    def heartbeat_ms(self) -> int:
        return seconds_to_ms(self.heartbeat_interval)


def handler_timeout_of(handler_timeout: float | None, processing_timeout: float | None) -> float | None:
    """``processing_timeout`` is an old name of ``handler_timeout``: still accepted (when
    valid), with a DeprecationWarning; ``handler_timeout`` wins if both are given."""
    if processing_timeout is None:
        return handler_timeout
    positive(processing_timeout, "processing_timeout")
    warnings.warn("processing_timeout is deprecated; use handler_timeout, the same option",
                  DeprecationWarning, stacklevel=3)
    return handler_timeout if handler_timeout is not None else processing_timeout
