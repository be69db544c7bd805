"""What a demo run is asked to do, and the fixed timings around it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DRAIN_TIMEOUT_S",
    "GROUP",
    "JOIN_TIMEOUT_S",
    "MAX_BATCH",
    "STOP_TIMEOUT_S",
    "TICK_S",
    "DemoOptions",
]

GROUP = "demo"
TICK_S = 0.25  # the live view's refresh (4 a second)
JOIN_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 8.0  # SIGTERM, then SIGKILL for a consumer still running
MAX_BATCH = 500


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """The command's options: seconds of producing, partitions, consumer processes,
    messages a second, distinct keys, whether to keep the topic and logs, and whether
    to run on a Redis Cluster (killing a primary too)."""

    duration: float = 30.0
    partitions: int = 8
    consumers: int = 3
    rate: int = 200
    keys: int = 64
    keep: bool = False
    cluster: bool = False
