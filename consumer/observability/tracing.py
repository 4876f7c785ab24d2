"""OpenTelemetry tracing, off by default and configured by the standard `OTEL_*` variables.

`OTEL_TRACES_EXPORTER=otlp` (or `console`) turns it on; `OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`... are read by the SDK itself. The
packages are the `otel` extra (in the image).

Each Bitrix24 request is one CLIENT span, linked to every event it carries (their W3C
`traceparent` record headers) and continuing the first one's trace. Outcome records,
dead-letter headers and log lines carry the trace id. Off, every entry point returns at
once: no per-event work, no import of the SDK.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from consumer.errors import ConfigError

TRACEPARENT = "traceparent"
_INSTRUMENTATION = "imconnector-consumer"
_OFF = contextlib.nullcontext()  # sync and async: what request_span gives when off

_tracer: Any = None  # an opentelemetry Tracer while tracing is on


def enabled() -> bool:
    """True while spans are recorded."""
    return _tracer is not None


def setup_tracing(environ: Mapping[str, str] = os.environ) -> bool:
    """Turn tracing on when `OTEL_TRACES_EXPORTER` names an exporter; True if it did."""
    names = [
        name.strip().lower()
        for name in environ.get("OTEL_TRACES_EXPORTER", "none").split(",")
        if name.strip().lower() not in ("", "none")
    ]
    if not names or environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        raise ConfigError(
            "OTEL_TRACES_EXPORTER is set but OpenTelemetry is not installed: "
            "pip install 'imconnector-consumer[otel]' (the image has it)"
        ) from None
    from consumer import __version__

    attributes = {"service.version": __version__}
    if not environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = "imconnector-consumer"
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in names:
        if name == "otlp":
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(environ)))
        elif name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        else:
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER={name!r} is not supported: use otlp, console or none"
            )
    use_provider(provider)
    return True


def _otlp_exporter(environ: Mapping[str, str]) -> Any:
    protocol = environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    )
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ConfigError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs opentelemetry-exporter-otlp-proto-grpc; "
                "the image has http/protobuf (the default)"
            ) from None
        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    return Http()  # endpoint, headers, timeout: from the OTEL_EXPORTER_OTLP_* variables


def use_provider(provider: Any) -> None:
    """Record spans with `provider` (a TracerProvider; tests give one with an in-memory
    exporter); None turns tracing off again."""
    global _tracer
    _tracer = None if provider is None else provider.get_tracer(_INSTRUMENTATION)


def _context_of(headers: Iterable[tuple[str, bytes]]) -> Any:
    """The span context of a record's `traceparent` header, or None."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    for key, value in headers:
        if key == TRACEPARENT:
            context = TraceContextTextMapPropagator().extract(
                {TRACEPARENT: value.decode(errors="replace")}
            )
            from opentelemetry import trace

            span_context = trace.get_current_span(context).get_span_context()
            return span_context if span_context.is_valid else None
    return None


def request_span(portal: str, method: str, calls: Iterable[Any]) -> Any:
    """A context manager (sync or async) around one Bitrix24 request carrying `calls`
    (`PendingCall`s): a CLIENT span linked to each call's event, continuing the first."""
    if _tracer is None:
        return _OFF
    from opentelemetry import trace

    calls = list(calls)
    contexts = [c for c in (_context_of(call.headers) for call in calls) if c is not None]
    parent = trace.set_span_in_context(trace.NonRecordingSpan(contexts[0])) if contexts else None
    return _Either(
        _tracer.start_as_current_span(
            f"bitrix24 {method}",
            context=parent,
            kind=trace.SpanKind.CLIENT,
            links=[trace.Link(context) for context in contexts],
            attributes={
                "rpc.system": "bitrix24",
                "rpc.method": method,
                "imconnector.portal": portal,
                "imconnector.event_ids": [call.event_id for call in calls],
                "messaging.batch.message_count": len(calls),
            },
        )
    )


class _Either:
    """A sync context manager usable with `async with` too (the dispatcher's requests)."""

    __slots__ = ("_inner",)

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __enter__(self) -> Any:
        return self._inner.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self._inner.__exit__(*exc)

    async def __aenter__(self) -> Any:
        return self._inner.__enter__()

    async def __aexit__(self, *exc: Any) -> Any:
        return self._inner.__exit__(*exc)


def trace_id(headers: Iterable[tuple[str, bytes]]) -> str | None:
    """The trace id (32 hex digits) an event's outcome is filed under: its own
    `traceparent`'s, else the current span's. None when tracing is off."""
    if _tracer is None:
        return None
    context = _context_of(headers)
    if context is None:
        from opentelemetry import trace

        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return None
    return f"{context.trace_id:032x}"


class TraceContextFilter(logging.Filter):
    """Adds `trace_id` and `span_id` of the current span to log records (tracing on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _tracer is None:
            return True
        from opentelemetry import trace

        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = f"{context.trace_id:032x}"
            record.span_id = f"{context.span_id:016x}"
        return True
