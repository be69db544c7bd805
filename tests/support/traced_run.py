"""Run a producer and a consumer with an OpenTelemetry SDK and print the spans as JSON.

Its own process: the tracer provider is process-global and can be set only once, so the
test suite's other tests stay untraced. Usage: traced_run.py URL NAMESPACE MODE
(MODE: "each" for process(), "batch" for process_batch())."""

from __future__ import annotations

import asyncio
import json
import sys

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from redcurrent import Admin, Consumer, Message, Producer, Record

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("app")


async def main(url: str, namespace: str, mode: str) -> None:
    async with Admin(url, namespace=namespace) as admin:
        await admin.create_topic("orders", partitions=2)
    async with Producer(url, namespace=namespace) as producer:
        with tracer.start_as_current_span("checkout"):
            await producer.send("orders", {"n": 0}, key="a", headers={"source": "web"})
        await producer.send_batch("orders", [Record({"n": 1}, key="b"), Record({"n": 2}, key="a")])
    seen: list[dict[str, object]] = []

    async def each(msg: Message) -> None:
        ctx = trace.get_current_span().get_span_context()
        seen.append({"n": msg.value["n"], "trace_id": ctx.trace_id, "headers": dict(msg.headers)})

    async def batch(msgs: list[Message]) -> None:
        for msg in msgs:
            await each(msg)

    async with Consumer("orders", group="g", url=url, namespace=namespace, start="earliest") as consumer:
        worker = asyncio.create_task(consumer.process(each) if mode == "each" else consumer.process_batch(batch))
        while len(seen) < 3:
            await asyncio.sleep(0.02)
        await consumer.stop()
        await worker
    spans = [
        {
            "name": s.name,
            "kind": s.kind.name,
            "trace_id": s.context.trace_id,
            "span_id": s.context.span_id,
            "parent": s.parent.span_id if s.parent else None,
            "links": [link.context.span_id for link in s.links],
            "attributes": dict(s.attributes or {}),
        }
        for s in exporter.get_finished_spans()
    ]
    print(json.dumps({"spans": spans, "seen": seen}))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
