"""OpenTelemetry spans: one trace from the producer's span to the consumer's (messaging
semantic conventions), run in a process of its own (the tracer provider is global)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from redcurrent import tracing

SCRIPT = Path(__file__).resolve().parents[1] / "support" / "traced_run.py"


def traced(redis_url: str, namespace: str, mode: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(SCRIPT), redis_url, namespace, mode],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_one_trace_runs_from_the_send_to_the_handler(redis_url: str, namespace: str) -> None:
    out = traced(redis_url, namespace, "each")
    spans = out["spans"]
    publish = [s for s in spans if s["name"] == "publish orders"]
    process = [s for s in spans if s["name"] == "process orders"]
    [checkout] = [s for s in spans if s["name"] == "checkout"]
    assert len(publish) == 3 and len(process) == 3
    first_send = next(s for s in publish if s["parent"] == checkout["span_id"])  # the send inside "checkout"
    assert first_send["kind"] == "PRODUCER" and first_send["trace_id"] == checkout["trace_id"]
    attrs = first_send["attributes"]
    assert attrs["messaging.system"] == "redis" and attrs["messaging.destination.name"] == "orders"
    assert attrs["messaging.operation"] == "publish" and attrs["messaging.operation.type"] == "send"
    assert attrs["messaging.destination.partition.id"] in ("0", "1") and "-" in attrs["messaging.message.id"]
    # the handler's span is a child of the span that sent its message: one trace
    child = next(s for s in process if s["parent"] == first_send["span_id"])
    assert child["kind"] == "CONSUMER" and child["trace_id"] == checkout["trace_id"]
    assert child["attributes"]["messaging.message.id"] == attrs["messaging.message.id"]
    assert child["attributes"]["messaging.operation"] == "process"
    # the handler ran inside it, and the user's own header came through beside the context
    handled = next(m for m in out["seen"] if m["n"] == 0)
    assert handled["trace_id"] == checkout["trace_id"]
    assert handled["headers"]["source"] == "web" and "traceparent" in handled["headers"]
    # every record of send_batch has its own publish span, parent of its process span
    for span in process:
        assert span["parent"] in {s["span_id"] for s in publish}


def test_a_batch_handler_span_links_every_message_sender(redis_url: str, namespace: str) -> None:
    out = traced(redis_url, namespace, "batch")
    spans = out["spans"]
    publish_ids = {s["span_id"] for s in spans if s["name"] == "publish orders"}
    process = [s for s in spans if s["name"] == "process orders"]
    assert process and all(s["kind"] == "CONSUMER" for s in process)
    linked = [link for s in process for link in s["links"]]
    assert sorted(linked) == sorted(publish_ids)  # each message's sender, once
    assert sum(s["attributes"]["messaging.batch.message_count"] for s in process) == 3


def test_without_a_tracer_provider_nothing_is_traced() -> None:
    if tracing._trace is None:
        pytest.skip("opentelemetry-api is not installed")
    assert not tracing.active()  # the API's default provider: sends and handlers pay one check
