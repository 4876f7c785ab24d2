"""Tracing: each record's W3C traceparent is continued; one span per Bitrix24 request linked
to the events it carries; the trace id in outcome records, dead-letter headers and logs.
Spans are read from an in-memory exporter."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator

import pytest
from confluent_kafka import Producer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from consumer.codec import ChatEventEncoder
from consumer.core.events import ChatEvent, MessageSent
from consumer.logs import JsonFormatter
from consumer.observability import tracing
from tests.integration.harness import (
    CONNECTOR,
    PORTAL,
    EngineThread,
    chat_event,
    line_simulator,
    make_settings,
    read_all,
    wait_until,
)

pytestmark = pytest.mark.kafka


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_provider(None)
        provider.shutdown()


def traceparent() -> tuple[str, bytes]:
    trace_id, span_id = random.getrandbits(128), random.getrandbits(64)
    return f"{trace_id:032x}", f"00-{trace_id:032x}-{span_id:016x}-01".encode()


def test_requests_are_spans_linked_to_their_events_and_outcomes_carry_the_trace(
    kafka_bootstrap, topic_factory, unique, spans
):
    topic = topic_factory(1)
    encoder = ChatEventEncoder("single-object")
    with line_simulator() as sim:
        settings = make_settings(kafka_bootstrap, topic, unique("g"), sim)
        events = [chat_event("c1", seq, MessageSent(f"m{seq}", f"text {seq}")) for seq in (1, 2)]
        # A line that is not active: a permanent error, dead-lettered with its trace id.
        events.append(
            ChatEvent(
                event_id="dead-1",
                portal=PORTAL,
                connector=CONNECTOR,
                line=77,
                chat_id="c2",
                occurred_at=1_764_000_000_000,
                payload=MessageSent("m-dead", "to a closed line"),
                sequence=1,
            )
        )
        traces = {}
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        for event in events:
            trace_hex, header = traceparent()
            traces[event.event_id] = trace_hex
            producer.produce(
                topic,
                key=event.key.encode(),
                value=encoder.encode(event),
                headers=[("traceparent", header)],
            )
        assert producer.flush(30) == 0
        with EngineThread(settings) as running:
            wait_until(lambda: running.outcomes_total() >= 3, 60, "three outcomes")

    outcomes = {
        doc["event_id"]: doc
        for doc in (
            json.loads(m.value()) for m in read_all(kafka_bootstrap, settings.outcomes_topic)
        )
    }
    for event in events:
        assert outcomes[event.event_id]["trace_id"] == traces[event.event_id]
    (dead,) = read_all(kafka_bootstrap, settings.dlq_topic(topic), expect=1)
    assert dict(dead.headers())["imconnector.trace_id"] == traces["dead-1"].encode()

    requests = [s for s in spans.get_finished_spans() if s.name.startswith("bitrix24 ")]
    assert requests, "no request span"
    linked = {f"{link.context.trace_id:032x}" for s in requests for link in s.links}
    assert set(traces.values()) <= linked  # every event is linked from its request
    for span in requests:
        assert span.kind.name == "CLIENT"
        carried = span.attributes["imconnector.event_ids"]
        assert span.attributes["messaging.batch.message_count"] == len(carried)
        # the request continues the trace of the first event it carries
        assert f"{span.context.trace_id:032x}" == traces[carried[0]]
        assert {f"{link.context.trace_id:032x}" for link in span.links} == {
            traces[event_id] for event_id in carried
        }


def test_log_lines_carry_the_trace_id_while_tracing(spans):
    formatter = JsonFormatter()
    record_filter = tracing.TraceContextFilter()
    with tracing.request_span("p1", "imconnector.send.messages", []) as span:
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "inside", (), None)
        record_filter.filter(record)
        doc = json.loads(formatter.format(record))
    assert doc["trace_id"] == f"{span.get_span_context().trace_id:032x}"
    assert doc["span_id"] == f"{span.get_span_context().span_id:016x}"


def test_tracing_is_off_by_default_and_costs_nothing():
    assert not tracing.setup_tracing({})  # no OTEL_TRACES_EXPORTER
    assert not tracing.setup_tracing({"OTEL_TRACES_EXPORTER": "none"})
    assert not tracing.enabled()
    assert tracing.request_span("p1", "m", []) is tracing.request_span("p2", "n", [])
    assert (
        tracing.trace_id([("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")]) is None
    )


def test_the_standard_variables_turn_it_on():
    try:
        assert tracing.setup_tracing(
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}
        )
        assert tracing.enabled()
    finally:
        tracing.use_provider(None)
