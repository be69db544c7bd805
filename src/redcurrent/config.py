"""Option defaults, units and validation, in one place.

Public durations are float seconds; whatever reaches Redis is converted here to ms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from .errors import ConfigError
from .keys import Keys

__all__ = ["ConsumerOptions", "ProducerOptions", "check_bool", "check_ttl_ms", "positive", "seconds_to_ms"]

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
    request_timeout: float = 30.0
    delivery_timeout: float = 120.0
    retry_backoff: float = 0.05
    metadata_max_age: float = 0.5
    idempotence_window: float = 86_400.0
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
        positive(self.idempotence_window, "idempotence_window")
        check_bool(self.idempotent, "idempotent")
        check_bool(self.auto_create_topics, "auto_create_topics")
        if self.acks not in ("leader", "replica"):
            raise ConfigError(f"acks must be 'leader' or 'replica', got {self.acks!r}")


@dataclass(frozen=True, slots=True)
class ConsumerOptions:
    """Validated consumer settings (see :class:`redcurrent.Consumer`)."""

    keys: Keys
    group: str
    member_id: str | None = None
    start: Literal["latest", "earliest"] = "latest"
    batch_size: int = 100
    heartbeat_interval: float = 1.0
    session_timeout: float = 10.0
    rebalance_timeout: float = 30.0
    max_in_flight: int = 10_000
    assignor: Literal["round_robin", "sticky"] = "round_robin"
    auto_ack: bool = True
    processing_timeout: float | None = None
    block: float = 2.0
    request_timeout: float = 30.0

    def __post_init__(self) -> None:
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
        if self.processing_timeout is not None:
            positive(self.processing_timeout, "processing_timeout")
        if session < 2 * hb:
            raise ConfigError(
                f"session_timeout ({session}) must be at least 2x heartbeat_interval ({hb}); "
                "Kafka's advice is 3x"
            )

    @property
    def session_ms(self) -> int:
        return seconds_to_ms(self.session_timeout)

    @property
    def heartbeat_ms(self) -> int:
        return seconds_to_ms(self.heartbeat_interval)
