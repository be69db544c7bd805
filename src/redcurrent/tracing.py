"""OpenTelemetry spans for sends and handler calls (the messaging semantic conventions).

With ``opentelemetry-api`` installed and a tracer provider configured (an SDK), every
``Producer.send`` (and each record of ``send_batch``) makes a PRODUCER span
``publish <topic>`` and carries its context to the consumer in the message's W3C
``traceparent``/``tracestate`` headers; every handler call makes a CONSUMER span
``process <topic>``: a child of the producer's span for ``process`` (one trace from
send to handling), and for ``process_batch`` a span linked to each message's producer
span. Attributes: ``messaging.system`` ("redis"), ``messaging.destination.name``
(the topic), ``messaging.operation`` (publish / process) and ``messaging.operation.type``
(send / process), ``messaging.destination.partition.id``, ``messaging.message.id``
(the entry id), ``messaging.batch.message_count`` for batches.

Without an SDK configured (the API's default no-op provider) nothing is made and the
hot path pays one check per call. docs/architecture.md §12 lists what tracing costs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .structs import Message, RecordMetadata

_trace: Any
try:
    from opentelemetry import trace as _trace  # type: ignore[import-not-found,unused-ignore,no-redef]
    from opentelemetry.trace.propagation.tracecontext import (  # type: ignore[import-not-found,unused-ignore]
        TraceContextTextMapPropagator,
    )
except ImportError:  # tracing is optional
    _trace = None
    _PROPAGATOR: Any = None
    _NO_PROVIDERS: tuple[type, ...] = ()
else:
    _PROPAGATOR = TraceContextTextMapPropagator()
    _NO_PROVIDERS = (_trace.ProxyTracerProvider, _trace.NoOpTracerProvider)

__all__ = ["OTEL_AVAILABLE", "active", "consume_span", "extract_trace_context", "inject_trace_headers", "publish_span"]

OTEL_AVAILABLE = _trace is not None

SYSTEM = "redis"
_SCOPE = "redcurrent"


_active = False
_recheck = 0.0


def active() -> bool:
    """A tracer provider is configured, so spans are recorded somewhere.

    OpenTelemetry's global provider is set once per process: once seen, it stays. Until
    then the answer is looked up again at most once a second (the lookup costs 0.7 µs,
    too much for every message), so a provider set after start-up is picked up within
    a second."""
    global _active, _recheck
    if _active:
        return True
    now = time.monotonic()
    if now < _recheck or _trace is None:
        return False
    _recheck = now + 1.0
    _active = not isinstance(_trace.get_tracer_provider(), _NO_PROVIDERS)
    return _active


def _tracer() -> Any:
    from . import __version__

    return _trace.get_tracer(_SCOPE, __version__)


class PublishSpan:
    """A PRODUCER span around one record's send; ``headers`` carry its context."""

    __slots__ = ("headers", "span")

    def __init__(self, topic: str, headers: Mapping[str, str] | None, partition: int | None) -> None:
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.destination.name": topic,
            "messaging.operation": "publish",
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
        }
        if partition is not None:
            attributes["messaging.destination.partition.id"] = str(partition)
        self.span = _tracer().start_span(f"publish {topic}", kind=_trace.SpanKind.PRODUCER, attributes=attributes)
        carrier = dict(headers or {})
        _PROPAGATOR.inject(carrier, context=_trace.set_span_in_context(self.span))
        self.headers = carrier

    def sent(self, meta: RecordMetadata) -> None:
        self.span.set_attribute("messaging.destination.partition.id", str(meta.partition))
        self.span.set_attribute("messaging.message.id", meta.id)
        self.span.end()

    def failed(self, exc: BaseException) -> None:
        self.span.record_exception(exc)
        self.span.set_status(_trace.Status(_trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        self.span.end()


def publish_span(topic: str, headers: Mapping[str, str] | None, partition: int | None = None) -> PublishSpan:
    """Start the span of one send (call only when :func:`active`)."""
    return PublishSpan(topic, headers, partition)


@contextmanager
def consume_span(arg: Message | list[Message]) -> Iterator[None]:
    """The CONSUMER span of one handler call, current while the handler runs.

    A single message: a child of the span that sent it (its ``traceparent`` header).
    A batch: linked to each message's sender span."""
    if isinstance(arg, Message):
        first, parent, links = arg, _PROPAGATOR.extract(carrier=dict(arg.headers)), None
        attributes: dict[str, Any] = {"messaging.message.id": arg.id}
    else:
        first, parent = arg[0], None
        links = []
        for msg in arg:
            sender = _trace.get_current_span(_PROPAGATOR.extract(carrier=dict(msg.headers))).get_span_context()
            if sender.is_valid:
                links.append(_trace.Link(sender))
        attributes = {"messaging.batch.message_count": len(arg)}
    attributes.update({
        "messaging.system": SYSTEM,
        "messaging.destination.name": first.topic,
        "messaging.destination.partition.id": str(first.partition),
        "messaging.operation": "process",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
    })
    with _tracer().start_as_current_span(
        f"process {first.topic}", context=parent, kind=_trace.SpanKind.CONSUMER, links=links, attributes=attributes
    ):
        yield


def inject_trace_headers(headers: Mapping[str, str] | None = None, *, context: Any = None) -> dict[str, str]:
    """A copy of ``headers`` plus the W3C trace context of the current (or given) span.

    The producer does this itself when a tracer provider is configured; this is for a
    message sent some other way. Without opentelemetry-api, or outside a span, the copy
    is unchanged.
    """
    out = dict(headers or {})
    if _PROPAGATOR is not None:
        _PROPAGATOR.inject(out, context=context)
    return out


def extract_trace_context(message: Message | Mapping[str, str]) -> Any:
    """The OpenTelemetry context carried by a message's headers (None without opentelemetry-api).

    ``with tracer.start_as_current_span("handle", context=extract_trace_context(msg)): ...``
    """
    if _PROPAGATOR is None:
        return None
    headers = message.headers if isinstance(message, Message) else message
    return _PROPAGATOR.extract(carrier=dict(headers))
