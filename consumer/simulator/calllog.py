"""The record of every call the simulator received, secrets redacted, for tests and demos."""

from __future__ import annotations

import re
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import unquote_plus

from consumer.simulator.params import scan_text

REDACTED = "[REDACTED]"
SECRET_KEYS = frozenset({"auth", "access_token", "refresh_token", "client_secret", "password"})


# A secret-named key as orjson writes it (compact, so no blank before the colon).
_SECRET_KEY = re.compile(
    rb'"(?:' + b"|".join(re.escape(k.encode()) for k in sorted(SECRET_KEYS)) + rb')":',
    re.IGNORECASE,
)


def redact(value: Any) -> Any:
    """`value` with every secret-named key's value replaced, at any depth.

    A nested part with no secret-named key in it is kept as it is, not copied: a scan of
    its JSON finds that several times faster than walking it (a batch of 50 messages), and
    the simulator never changes a request's parameters after it arrived. Non-ASCII JSON
    is walked: a key like "ACCESS_TO\u212aEN" lower-cases to a secret name."""
    if isinstance(value, dict):
        return {
            key: REDACTED if str(key).lower() in SECRET_KEYS else _redact_part(item)
            for key, item in value.items()
        }
    return _redact_part(value)


def _redact_part(value: Any) -> Any:
    if not isinstance(value, (dict, list)):
        return value
    text = scan_text(value)
    if text is not None and _SECRET_KEY.search(text) is None:
        return value
    return _walk(value)


def _walk(value: Any) -> Any:
    """A copy of `value` with every secret-named key's value replaced, at any depth."""
    if isinstance(value, dict):
        return {
            key: REDACTED if str(key).lower() in SECRET_KEYS else _walk(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_walk(item) for item in value]
    return value


def redact_query(command: str) -> str:
    """A `batch` sub-request `"method?a=1&auth=T"` with secret-named values replaced.

    Only the secret pairs are rewritten, so the rest reads exactly as the client sent it.
    """
    head, sep, query = command.partition("?")
    if not sep:
        return command
    pairs = []
    for pair in query.split("&"):
        name, eq, _ = pair.partition("=")
        secret = unquote_plus(name).partition("[")[0].lower() in SECRET_KEYS
        pairs.append(f"{name}={REDACTED}" if eq and secret else pair)
    return head + sep + "&".join(pairs)


@dataclass(frozen=True)
class CallRecord:
    """One received call and what became of it.

    `http_status` is what the client got (None when a hang or reset withheld the
    answer); `applied` says whether the call changed portal state. A sub-call of a REST
    `batch` has `batch` = the `index` of the batch's own record (and the batch's
    `http_status`); HTTP requests are the records whose `batch` is None.
    """

    index: int
    monotonic: float
    wall_time: float
    method: str
    params: dict[str, Any]
    http_status: int | None
    error: str | None
    fault: str | None
    applied: bool
    batch: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class CallLog:
    """Calls in arrival order; bounded so a long demo cannot exhaust memory."""

    def __init__(self, max_records: int = 200_000) -> None:
        self._records: deque[CallRecord] = deque(maxlen=max_records)
        self._next_index = 0

    def append(
        self,
        *,
        monotonic: float,
        wall_time: float,
        method: str,
        params: dict[str, Any],
        http_status: int | None,
        error: str | None,
        fault: str | None,
        applied: bool,
        batch: int | None = None,
    ) -> CallRecord:
        record = CallRecord(
            index=self._next_index,
            monotonic=monotonic,
            wall_time=wall_time,
            method=method,
            params=redact(params),
            http_status=http_status,
            error=error,
            fault=fault,
            applied=applied,
            batch=batch,
        )
        self._next_index += 1
        self._records.append(record)
        return record

    def records(self, since: int = 0, method: str | None = None) -> list[CallRecord]:
        return [
            record
            for record in self._records
            if record.index >= since and (method is None or record.method == method)
        ]

    def clear(self) -> None:
        self._records.clear()
        self._next_index = 0

    def __len__(self) -> int:
        return len(self._records)
