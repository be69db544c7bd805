"""Prometheus metrics for producers and consumers.

Needs the ``metrics`` extra (``pip install 'redcurrent[metrics]'``, prometheus-client).
One call exports a process's clients over HTTP::

    from redcurrent.metrics import start_lag_updater, start_metrics_server

    server = start_metrics_server(9100, consumers=[consumer], producers=[producer])
    lag_task = start_lag_updater(admin, "orders", "billing", interval=5.0)
    ...
    lag_task.cancel()
    await server.aclose()   # server.close() outside an event loop

What is exported (``client`` is the name you gave, else ``producer-N`` / ``consumer-N``):

* ``redcurrent_producer_{sent,bytes,errors,batches,retries}_total{client}`` — from
  :meth:`Producer.stats`; the mean batch size is ``rate(sent) / rate(batches)``.
* ``redcurrent_consumer_<counter>_total{client,group,topics}`` for every counter of
  :meth:`Consumer.stats` (processed, failed, retried, dead_lettered, expired,
  decode_failures, trimmed, rebalances, partitions_lost, …; absent ones read 0).
* ``redcurrent_consumer_handler_latency_seconds{client,group,topics}`` — histogram of
  :meth:`Consumer.handler_latency`.
* ``redcurrent_partition_lag{topic,group,partition}``, ``redcurrent_partition_pending``,
  ``redcurrent_group_members{topic,group}``, ``redcurrent_group_epoch`` — gauges from the
  last :func:`update_lag` (lag needs Redis round trips, so it is refreshed by an asyncio
  task, never computed inside a scrape, which runs on the HTTP server's thread).

Counters are read from the clients at scrape time: nothing is counted twice and a
client that is never scraped costs nothing.

Trace context in headers (``inject_trace_headers``, ``extract_trace_context``,
``OTEL_AVAILABLE``) lives in :mod:`redcurrent.tracing`, with the spans; the names are
importable from here too.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Self

try:
    from prometheus_client import (
        CollectorRegistry,
        GCCollector,
        PlatformCollector,
        ProcessCollector,
    )
    from prometheus_client import start_http_server as _start_http_server
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as _exc:  # pragma: no cover - the extra is not installed
    raise ImportError(
        "redcurrent.metrics needs prometheus-client: pip install 'redcurrent[metrics]'"
    ) from _exc

from .admin import Admin
from .consumer import Consumer
from .errors import UnknownGroupError, UnknownTopicError
from .producer import Producer
from .stats import CONSUMER_COUNTERS
from .structs import GroupInfo

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

# Trace context in headers lives in redcurrent.tracing; these names stay importable here.
from .tracing import OTEL_AVAILABLE, extract_trace_context, inject_trace_headers

__all__ = [
    "CONSUMER_COUNTERS",
    "LAG",
    "OTEL_AVAILABLE",
    "PRODUCER_COUNTERS",
    "LagGauges",
    "MetricsServer",
    "RedcurrentCollector",
    "extract_trace_context",
    "inject_trace_headers",
    "start_lag_updater",
    "start_metrics_server",
    "update_lag",
]

log = logging.getLogger(__name__)

PRODUCER_COUNTERS: Mapping[str, str] = {
    "sent": "Records stored by the producer.",
    "bytes": "Bytes of keys, values and headers stored.",
    "errors": "Records whose send failed.",
    "batches": "Partition batches written (one script call each).",
    "retries": "Batches resent after a retriable error.",
    "rerouted": "Batches refused as routed before a growth with preserve_key_order, routed again.",
}
_NAME_SAFE = re.compile(r"[^a-zA-Z0-9_]")


class LagGauges:
    """The last :class:`GroupInfo` seen per (topic, group); read by collectors on scrape.

    Written from the event loop, read from the HTTP server's thread: guarded by a lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[tuple[str, str], GroupInfo] = {}

    def update(self, info: GroupInfo) -> None:
        with self._lock:
            self._groups[(info.topic, info.group)] = info

    def forget(self, topic: str, group: str) -> None:
        with self._lock:
            self._groups.pop((topic, group), None)

    def snapshot(self) -> list[GroupInfo]:
        with self._lock:
            return list(self._groups.values())

    def collect(self) -> Iterator[Metric]:
        groups = self.snapshot()
        lag = GaugeMetricFamily(
            "redcurrent_partition_lag",
            "Entries not yet delivered to the group.",
            labels=["topic", "group", "partition"],
        )
        pending = GaugeMetricFamily(
            "redcurrent_partition_pending",
            "Entries delivered, not yet acked.",
            labels=["topic", "group", "partition"],
        )
        members = GaugeMetricFamily(
            "redcurrent_group_members", "Live members of the group.", labels=["topic", "group"]
        )
        epoch = GaugeMetricFamily(
            "redcurrent_group_epoch",
            "Rebalance epoch (generation) of the group.",
            labels=["topic", "group"],
        )
        for info in groups:
            for p in info.partitions:
                labels = [info.topic, info.group, str(p.partition)]
                if p.lag is not None:  # unknown is left out, never reported as 0
                    lag.add_metric(labels, p.lag)
                pending.add_metric(labels, p.pending)
            members.add_metric([info.topic, info.group], len(info.members))
            epoch.add_metric([info.topic, info.group], info.epoch)
        yield from (lag, pending, members, epoch)


LAG = LagGauges()
"""The default lag store: :func:`update_lag` writes it, every collector exports it."""


class RedcurrentCollector(Collector):
    """A Prometheus collector reading producers' and consumers' counters at scrape time.

    ``registry.register(RedcurrentCollector(consumers=[c], producers=[p]))``, or let
    :func:`start_metrics_server` do it.
    """

    def __init__(
        self,
        consumers: Iterable[Consumer] = (),
        producers: Iterable[Producer] = (),
        *,
        lag: LagGauges | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._consumers: list[tuple[str, Consumer]] = []
        self._producers: list[tuple[str, Producer]] = []
        self._lag = LAG if lag is None else lag
        for c in consumers:
            self.add_consumer(c)
        for p in producers:
            self.add_producer(p)

    def add_consumer(self, consumer: Consumer, name: str | None = None) -> None:
        with self._lock:
            self._consumers.append((name or f"consumer-{len(self._consumers)}", consumer))

    def add_producer(self, producer: Producer, name: str | None = None) -> None:
        with self._lock:
            self._producers.append((name or f"producer-{len(self._producers)}", producer))

    def remove(self, client: Consumer | Producer) -> None:
        with self._lock:
            self._consumers = [(n, c) for n, c in self._consumers if c is not client]
            self._producers = [(n, p) for n, p in self._producers if p is not client]

    def describe(self) -> Iterable[Metric]:
        return []  # names depend on the clients' counters: no up-front description

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            consumers, producers = list(self._consumers), list(self._producers)
        yield from _counter_families(
            "producer",
            PRODUCER_COUNTERS,
            ["client"],
            [([name], p.stats()) for name, p in producers],
        )
        labelled = [(name, [name, c.group, ",".join(c.topics)], c) for name, c in consumers]
        yield from _counter_families(
            "consumer",
            CONSUMER_COUNTERS,
            ["client", "group", "topics"],
            [(labels, c.stats()) for _, labels, c in labelled],
        )
        latency = HistogramMetricFamily(
            "redcurrent_consumer_handler_latency_seconds",
            "Time handlers took, in seconds.",
            labels=["client", "group", "topics"],
        )
        for _, labels, c in labelled:
            hist = c.handler_latency()
            latency.add_metric(labels, _buckets(hist.cumulative(), hist.count), sum_value=hist.sum)
        yield latency
        yield from self._lag.collect()


def _counter_families(
    kind: str,
    known: Mapping[str, str],
    label_names: list[str],
    clients: list[tuple[list[str], dict[str, int]]],
) -> Iterator[Metric]:
    """One counter family per stat name: the known ones always, any others the clients report."""
    names = list(known) + sorted({n for _, stats in clients for n in stats} - set(known))
    for name in names:
        family = CounterMetricFamily(
            f"redcurrent_{kind}_{_NAME_SAFE.sub('_', name)}",
            known.get(name, f"{kind} counter {name}."),
            labels=label_names,
        )
        for labels, stats in clients:
            family.add_metric(labels, stats.get(name, 0))
        yield family


def _buckets(cumulative: list[tuple[float, int]], count: int) -> list[tuple[str, float]]:
    """Prometheus buckets from (upper bound, cumulative count), closed by +Inf = total count."""
    out = [(_bound(b), float(n)) for b, n in cumulative if not math.isinf(b)]
    out.append(("+Inf", float(count)))
    return out


def _bound(value: float) -> str:
    return repr(float(value))


# -- lag ---------------------------------------------------------------------------


async def update_lag(
    admin: Admin, topic: str, group: str, *, gauges: LagGauges | None = None
) -> GroupInfo:
    """Read ``group``'s state on ``topic`` once and store it for the lag gauges.

    ``info = await update_lag(admin, "orders", "billing")``. Raises what
    :meth:`Admin.describe_group` raises (UnknownTopicError, UnknownGroupError, …).
    """
    info = await admin.describe_group(topic, group)
    (LAG if gauges is None else gauges).update(info)
    return info


async def _lag_loop(
    admin: Admin, topic: str, group: str, interval: float, gauges: LagGauges | None
) -> None:
    store = LAG if gauges is None else gauges
    while True:
        try:
            await update_lag(admin, topic, group, gauges=store)
        except (UnknownTopicError, UnknownGroupError):
            store.forget(topic, group)  # gone (or not yet there): export nothing stale
        except Exception as exc:  # the next round retries; a scrape shows the last good values
            log.warning("lag update for %s/%s failed: %s", topic, group, exc)
        await asyncio.sleep(interval)


def start_lag_updater(
    admin: Admin, topic: str, group: str, *, interval: float = 5.0, gauges: LagGauges | None = None
) -> asyncio.Task[None]:
    """Refresh ``group``'s lag gauges every ``interval`` seconds in a named asyncio task.

    The caller owns the task: ``task.cancel()`` (and await it) when done. Errors are
    logged and retried, never raised into the loop.
    """
    if not interval > 0:
        raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
    return asyncio.get_running_loop().create_task(
        _lag_loop(admin, topic, group, interval, gauges), name=f"redcurrent-lag-{topic}-{group}"
    )


# -- the exporter ------------------------------------------------------------------


class MetricsServer:
    """A running exporter (``/metrics`` on ``addr:port``); :meth:`close` stops it."""

    def __init__(
        self,
        server: WSGIServer,
        thread: threading.Thread,
        collector: RedcurrentCollector,
        registry: CollectorRegistry,
        addr: str,
    ) -> None:
        self._server, self._thread, self._addr = server, thread, addr
        self.collector, self.registry = collector, registry

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        host = f"[{self._addr}]" if ":" in self._addr else self._addr
        return f"http://{host}:{self.port}/metrics"

    def add_consumer(self, consumer: Consumer, name: str | None = None) -> None:
        self.collector.add_consumer(consumer, name)

    def add_producer(self, producer: Producer, name: str | None = None) -> None:
        self.collector.add_producer(producer, name)

    def close(self) -> None:
        """Stop serving. Blocks up to about 0.5 s (the server's poll interval): from a
        running event loop use :meth:`aclose`, so heartbeats are not held up."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    async def aclose(self) -> None:
        """:meth:`close` in a thread, for asyncio code."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url}>"


def start_metrics_server(
    port: int,
    *,
    consumers: Iterable[Consumer] = (),
    producers: Iterable[Producer] = (),
    addr: str = "127.0.0.1",
    lag: LagGauges | None = None,
    process_metrics: bool = True,
) -> MetricsServer:
    """Serve the clients' metrics on ``http://addr:port/metrics`` from a daemon thread.

    ``server = start_metrics_server(9100, consumers=[consumer])``; ``port=0`` picks a
    free port (``server.port``). Uses its own registry, with the standard process, GC
    and platform collectors unless ``process_metrics=False``. Loopback by default:
    pass ``addr="0.0.0.0"`` to be scraped from other hosts.
    """
    registry = CollectorRegistry()
    collector = RedcurrentCollector(consumers, producers, lag=lag)
    registry.register(collector)
    if process_metrics:
        ProcessCollector(registry=registry)
        GCCollector(registry=registry)
        PlatformCollector(registry=registry)
    server, thread = _start_http_server(port, addr=addr, registry=registry)
    return MetricsServer(server, thread, collector, registry, addr)
