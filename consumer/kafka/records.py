"""Record plumbing: a consumed record's position and headers, the dead-letter headers
(Kafka Connect's `__connect.errors.*` names) and the outcome line of the audit trail."""

from __future__ import annotations

import time
from typing import Any

import orjson
from confluent_kafka import Message

from consumer import __version__
from consumer.core.state import PendingCall
from consumer.observability.tracing import trace_id
from consumer.redact import redact

Headers = list[tuple[str, bytes]]


def record_headers(msg: Message) -> tuple[tuple[str, bytes], ...]:
    """A record's headers as `(name, bytes)` pairs (None and str values normalised)."""
    raw: Any = msg.headers() or ()
    out = []
    for key, value in raw.items() if isinstance(raw, dict) else raw:
        if value is None:
            value = b""
        elif isinstance(value, str):
            value = value.encode()
        out.append((key, value))
    return tuple(out)


def record_position(msg: Message) -> tuple[str, int, int]:
    """`(topic, partition, offset)` of a consumed record."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None and partition is not None and offset is not None
    return topic, partition, offset


def dead_letter_headers(
    call: PendingCall,
    *,
    group: str,
    error_class: str,
    code: str | None,
    message: str | None,
    http_status: int | None,
    attempts: int,
    now_ms: int,
) -> Headers:
    """Original headers plus the reason, in Kafka Connect's `__connect.errors.*` names."""
    topic, partition, offset = call.origin
    first = call.first_failure_ms or now_ms
    text = redact(message or "")[:1000]
    out: Headers = [
        (k, v)
        for k, v in call.headers
        if not k.startswith(("__connect.errors.", "imconnector.error."))
    ]
    out += [
        ("__connect.errors.topic", topic.encode()),
        ("__connect.errors.partition", str(partition).encode()),
        ("__connect.errors.offset", str(offset).encode()),
        ("__connect.errors.connector.name", group.encode()),
        ("__connect.errors.stage", b"VALUE_CONVERTER" if error_class == "poison" else b"TASK_PUT"),
        ("__connect.errors.exception.class.name", (code or error_class).encode()),
        ("__connect.errors.exception.message", text.encode()),
        ("imconnector.error.class", error_class.encode()),
        ("imconnector.error.code", (code or "").encode()),
        ("imconnector.error.http_status", str(http_status or "").encode()),
        ("imconnector.error.attempts", str(attempts).encode()),
        ("imconnector.error.first_failure_ms", str(first).encode()),
        ("imconnector.error.last_failure_ms", str(now_ms).encode()),
        ("imconnector.consumer.group", group.encode()),
        ("imconnector.event_id", call.event_id.encode()),
        ("imconnector.version", __version__.encode()),
    ]
    trace = trace_id(call.headers)  # None unless tracing is on
    if trace is not None:
        out.append(("imconnector.trace_id", trace.encode()))
    return out


def outcome_record(chat: str, call: PendingCall, outcome: str, **fields: Any) -> bytes:
    """One line of the audit trail (JSON)."""
    topic, partition, offset = call.origin
    doc = {
        "event_id": call.event_id,
        "chat": chat,
        "seq": call.seq,
        "kind": call.kind,
        "method": call.method,
        "outcome": outcome,
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "at": int(time.time() * 1000),
    }
    for name, value in fields.items():
        if value is not None:
            doc[name] = redact(value) if isinstance(value, str) else value
    trace = trace_id(call.headers)  # None unless tracing is on
    if trace is not None:
        doc["trace_id"] = trace
    return orjson.dumps(doc)
