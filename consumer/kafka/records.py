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
# Set by `dlq redrive` on the records it replays (the count of redrives so far).
REDRIVE_HEADER = "imconnector.redrive.count"


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


# Bytes a record costs beyond its key, value and headers (record and batch framing).
RECORD_OVERHEAD = 512
HEADER_CUT = 1024  # a header value longer than this is cut when a record must shrink


def record_size(key: bytes, value: bytes | None, headers: Headers | None) -> int:
    """What a record weighs against a topic's `max.message.bytes` (uncompressed)."""
    size = RECORD_OVERHEAD + len(key) + len(value or b"")
    for name, data in headers or ():
        size += len(name) + len(data) + 8
    return size


def fit_record(
    key: bytes, value: bytes | None, headers: Headers, limit: int
) -> tuple[bytes | None, Headers, bool]:
    """Make a dead letter fit `limit` bytes: long header values are cut first (a header
    names them), then the value is left out (a header gives its size). Returns the value,
    the headers and whether the value had to go."""
    if record_size(key, value, headers) <= limit:
        return value, headers, False
    cut = [name for name, data in headers if len(data) > HEADER_CUT]
    if cut:
        headers = [(n, d[:HEADER_CUT] if len(d) > HEADER_CUT else d) for n, d in headers]
        headers.append(("imconnector.error.truncated_headers", ",".join(cut).encode()))
        if record_size(key, value, headers) <= limit:
            return value, headers, False
    headers = [*headers, ("imconnector.error.value_bytes", str(len(value or b"")).encode())]
    while record_size(key, None, headers) > limit and len(headers) > 1:
        headers = headers[1:]  # the original record's own headers go first, ours last
    return None, headers, True
