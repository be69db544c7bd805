"""redcurrent.metrics: the Prometheus exporter serves producer and consumer counters, the
handler latency histogram and per-partition lag over HTTP; trace context rides in headers."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support.eventually import eventually

from redcurrent import Admin, Consumer, Message, Producer
from redcurrent.metrics import (
    LagGauges,
    RedcurrentCollector,
    extract_trace_context,
    inject_trace_headers,
    start_lag_updater,
    start_metrics_server,
    update_lag,
)

pytestmark = pytest.mark.single_node  # conftest's admin, on one node


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics from 127.0.0.1 (in a thread: the consumer keeps heartbeating) -> {(name, labels): value}."""

    def get() -> str:
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            return str(response.read().decode())

    text = await asyncio.to_thread(get)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    matching = [
        v
        for (n, ls), v in samples.items()
        if n == name and all((k, labels[k]) in ls for k in labels)
    ]
    assert len(matching) == 1, (name, labels, matching)
    return matching[0]


async def test_exporter_serves_counters_latency_and_lag(
    redis_url: str, namespace: str, admin: Admin
) -> None:
    await admin.create_topic("orders", 3)
    gauges = LagGauges()
    handled: list[Message] = []

    async def handle(msg: Message) -> None:
        handled.append(msg)

    async with (
        Producer(redis_url, namespace=namespace) as producer,
        Consumer(
            "orders",
            group="billing",
            url=redis_url,
            namespace=namespace,
            start="earliest",
            heartbeat_interval=0.2,
            session_timeout=2.0,
        ) as consumer,
    ):
        server = start_metrics_server(0, consumers=[consumer], producers=[producer], lag=gauges)
        try:
            assert server.url.startswith("http://127.0.0.1:")
            task = asyncio.create_task(consumer.process(handle))
            for i in range(20):
                await producer.send("orders", {"i": i}, key=f"k{i % 5}")
            await eventually(lambda: len(handled) == 20, 10)
            await eventually(lambda: consumer.stats().get("processed") == 20)
            await update_lag(admin, "orders", "billing", gauges=gauges)
            samples = await scrape(server.url)
        finally:
            await server.aclose()
            await consumer.stop()
            await task

    assert value(samples, "redcurrent_producer_sent_total", client="producer-0") == 20
    assert value(samples, "redcurrent_producer_batches_total") >= 1
    assert value(samples, "redcurrent_producer_bytes_total") > 0
    assert value(samples, "redcurrent_producer_errors_total") == 0
    labels = {"client": "consumer-0", "group": "billing", "topics": "orders"}
    assert value(samples, "redcurrent_consumer_processed_total", **labels) == 20
    assert value(samples, "redcurrent_consumer_dead_lettered_total", **labels) == 0
    assert value(samples, "redcurrent_consumer_rebalances_total", **labels) >= 1
    assert value(samples, "redcurrent_consumer_handler_latency_seconds_count", **labels) == 20
    assert (
        value(samples, "redcurrent_consumer_handler_latency_seconds_bucket", le="+Inf", **labels)
        == 20
    )
    assert value(samples, "redcurrent_consumer_handler_latency_seconds_sum", **labels) >= 0
    for p in range(3):
        assert (
            value(
                samples,
                "redcurrent_partition_lag",
                topic="orders",
                group="billing",
                partition=str(p),
            )
            == 0
        )
        assert value(samples, "redcurrent_partition_pending", partition=str(p)) == 0
    assert value(samples, "redcurrent_group_members", topic="orders", group="billing") == 1
    assert value(samples, "redcurrent_group_epoch", topic="orders", group="billing") >= 1
    assert any(name.startswith("process_") for name, _ in samples)  # the standard collectors too


async def test_lag_gauges_count_what_the_group_has_not_received(
    redis_url: str, namespace: str, admin: Admin
) -> None:
    await admin.create_topic("t", 2)
    async with Consumer(
        "t",
        group="slow",
        url=redis_url,
        namespace=namespace,
        start="latest",
        heartbeat_interval=0.2,
        session_timeout=2.0,
    ):
        pass  # the group now exists, positioned at the end
    async with Producer(redis_url, namespace=namespace) as producer:
        for i in range(7):
            await producer.send("t", {"i": i}, key=f"k{i}")
    gauges = LagGauges()
    task = start_lag_updater(admin, "t", "slow", interval=0.1, gauges=gauges)
    try:
        await eventually(lambda: gauges.snapshot(), 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert task.get_name() == "redcurrent-lag-t-slow"
    server = start_metrics_server(0, lag=gauges, process_metrics=False)
    try:
        samples = await scrape(server.url)
    finally:
        await server.aclose()
    lags = [v for (n, _), v in samples.items() if n == "redcurrent_partition_lag"]
    assert sorted(lags) != [] and sum(lags) == 7
    assert value(samples, "redcurrent_group_members", group="slow") == 0


async def test_a_collector_on_your_own_registry(
    redis_url: str, namespace: str, admin: Admin
) -> None:
    await admin.create_topic("t", 1)
    async with Producer(redis_url, namespace=namespace) as producer:
        registry = CollectorRegistry()
        collector = RedcurrentCollector(producers=[], lag=LagGauges())
        collector.add_producer(producer, name="orders-api")
        registry.register(collector)
        await producer.send("t", b"raw")
        text = generate_latest(registry).decode()
        assert 'redcurrent_producer_sent_total{client="orders-api"} 1.0' in text
        collector.remove(producer)
        assert "orders-api" not in generate_latest(registry).decode()


def test_the_server_is_a_context_manager() -> None:
    with start_metrics_server(0, lag=LagGauges(), process_metrics=False) as server:
        with urllib.request.urlopen(server.url, timeout=10) as response:
            assert response.status == 200
    assert repr(server).startswith("<MetricsServer http://127.0.0.1:")


def test_lag_updater_needs_a_positive_interval() -> None:
    with pytest.raises(ValueError, match="interval"):
        start_lag_updater(None, "t", "g", interval=0)  # type: ignore[arg-type]


def test_trace_headers_without_a_span_are_an_unchanged_copy() -> None:
    headers = {"source": "web"}
    out = inject_trace_headers(headers)
    assert out == {"source": "web"} and out is not headers
    assert inject_trace_headers() == {}


async def test_trace_context_travels_through_message_headers(
    redis_url: str, namespace: str, admin: Admin
) -> None:
    trace = pytest.importorskip("opentelemetry.trace")
    span_context = trace.SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=False,
        trace_flags=trace.TraceFlags(1),
    )
    ctx = trace.set_span_in_context(trace.NonRecordingSpan(span_context))
    headers = inject_trace_headers({"source": "web"}, context=ctx)
    assert headers == {
        "source": "web",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    await admin.create_topic("t", 1)
    async with Producer(redis_url, namespace=namespace) as producer:
        await producer.send("t", {"x": 1}, headers=headers)
    async with Consumer(
        "t",
        group="g",
        url=redis_url,
        namespace=namespace,
        start="earliest",
        heartbeat_interval=0.2,
        session_timeout=2.0,
    ) as consumer:
        msg = await asyncio.wait_for(consumer.getone(), 10)
    extracted = trace.get_current_span(extract_trace_context(msg)).get_span_context()
    assert (extracted.trace_id, extracted.span_id) == (span_context.trace_id, span_context.span_id)
    assert extracted.is_remote
    assert extract_trace_context({}) is not None  # an empty context, not an error
