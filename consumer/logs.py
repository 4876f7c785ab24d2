"""Logging: JSON lines for machines (one object per line), plain text on a terminal.

Every client of librdkafka logs through here too (`consumer.kafka.clients`), so the
stream stays one JSON object per line; fields given with `extra=` are kept.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from consumer.observability.tracing import TraceContextFilter
from consumer.redact import redact, secret_name

# The attributes every LogRecord has; anything else came from `extra=` (or a filter).
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_OWN = ("ts", "level", "logger", "msg", "exc")


def _field(name: str, value: Any) -> Any:
    """An `extra` value as JSON: scalars as they are, text redacted, the rest as text; a
    field named like a secret (`access_token=...`) shows none of its value."""
    if secret_name(name):
        return "***"
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per record with the `extra` fields (event context...) when present."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name not in _OWN and value is not None:
                doc[name] = _field(name, value)
        if record.exc_info:
            doc["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(doc, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Readable lines for a terminal, secrets redacted too."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


_installed: tuple[str, str] = ("text", "WARNING")  # what the last setup_logging put in place


def setup_logging(fmt: str = "auto", level: str = "INFO") -> None:
    """Install the formatter on the root logger (`auto` = text on a TTY, else JSON)."""
    global _installed
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    _installed = ("json" if use_json else "text", level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler.addFilter(TraceContextFilter())  # trace_id/span_id while tracing is on
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def logging_setup() -> tuple[str, str]:
    """The format and level `setup_logging` installed, for a child process to use too."""
    return _installed
