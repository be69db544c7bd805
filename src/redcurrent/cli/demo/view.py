"""What a person watching the demo sees: timestamped narration and the live table.

On a pipe (``out`` is a non-terminal console) Rich's Live prints the table once, at the
end; with ``--json`` there is no console at all and the view says nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from redcurrent import GroupInfo

from ..output import table
from .fleet import Fleet
from .options import GROUP
from .state import Tally

__all__ = ["View", "render"]


class View:
    """Narration lines stamped with the seconds since the demo began, and the live table."""

    def __init__(self, out: Console | None) -> None:
        self.out = out
        self.t0 = time.monotonic()
        self.live: Live | None = None

    def say(self, message: str) -> None:
        if self.out is not None:
            self.out.print(f"[dim]t={time.monotonic() - self.t0:5.1f}s[/] {message}")

    @contextlib.contextmanager
    def showing(self, first: RenderableType) -> Iterator[None]:
        """The live table, refreshed 4 times a second, for the duration of the block."""
        if self.out is None:
            yield
            return
        with Live(first, console=self.out, refresh_per_second=4) as live:
            self.live = live
            try:
                yield
            finally:
                self.live = None

    def update(self, renderable: RenderableType) -> None:
        if self.live is not None:
            self.live.update(renderable)


def render(
    topic: str,
    info: GroupInfo | None,
    tally: Tally,
    fleet: Fleet,
    cluster_status: str | None,
    t0: float,
) -> RenderableType:
    """The head line, the cluster's state (``--cluster``), partitions and consumers."""
    rate_p = Counter(h.partition for h in tally.recent)
    rate_c = Counter(h.consumer for h in tally.recent)
    head = Text(
        f"topic {topic} · group {GROUP} · epoch {info.epoch if info else '-'} · "
        f"produced {len(tally.sent)} · handled {len(tally.handled)} · "
        f"t={(time.monotonic_ns() / 1e9) - t0:.1f}s",
        style="bold",
    )
    partitions = info.partitions if info else ()
    parts = [
        (
            p.partition,
            p.owner,
            p.lag,
            p.pending,
            rate_p[p.partition],
            tally.by_partition[p.partition],
        )
        for p in partitions
    ]
    owned = Counter(p.owner for p in partitions)
    members = [
        (
            w.member,
            w.proc.pid,
            "KILLED" if w.killed else "alive" if w.alive() else "exited",
            owned[w.member],
            rate_c[w.member],
            tally.by_consumer[w.member],
        )
        for w in fleet.workers
    ]
    nodes = [Text(f"redis cluster: {cluster_status}")] if cluster_status is not None else []
    return Group(
        head,
        *nodes,
        table(None, ["partition", "owner", "lag", "pending", "msg/s", "handled"], parts),
        table(None, ["consumer", "pid", "status", "partitions", "msg/s", "handled"], members),
    )
