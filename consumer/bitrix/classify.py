"""Every Bitrix24 response and transport error mapped to one error class, in one place.

Handles both whole-call failure shapes of the reference (§3.7 caveat): HTTP 4xx/5xx with
`error`, and HTTP 200 with `result.SUCCESS == false`; and per-element `SUCCESS: false`
inside `DATA.RESULT`. Unknown 4xx codes are permanent, unknown 5xx transient, except for
`imconnector.send.messages`: the portal runs its elements one by one and keeps each
(`imopenlines/lib/connector.php::addMessage`, not idempotent) under a 60 s cut-off, so a
5xx, an unreadable body or an answer of a shape not known here may come after some were
applied: ambiguous (`for_method`, `check_answer`). Per-element `ERRORS` are texts; their
codes come from `consumer.bitrix.element_errors`.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from consumer.bitrix.element_errors import element_error_code
from consumer.errors import (
    AmbiguousError,
    AuthError,
    BitrixError,
    CausalWait,
    PermanentError,
    Throttled,
    TransientError,
)

THROTTLED_CODES = frozenset({"QUERY_LIMIT_EXCEEDED", "OPERATION_TIME_LIMIT"})
AUTH_CODES = frozenset({"expired_token", "invalid_token", "NO_AUTH_FOUND"})
CAUSAL_CODES = frozenset({"CHAT_RENAMING_FAILED"})
# Server-side trouble that is worth retrying; OVERLOAD_LIMIT is a manual block, so it is
# retried slowly (the breaker opens) rather than dead-lettered.
TRANSIENT_CODES = frozenset(
    {"INTERNAL_SERVER_ERROR", "ERROR_UNEXPECTED_ANSWER", "OVERLOAD_LIMIT", "CONNECTION_ERROR"}
)
SEND = "imconnector.send.messages"
MESSAGE_METHODS = frozenset({SEND, "imconnector.update.messages", "imconnector.delete.messages"})
# The calls events make; the connector admin methods answer in shapes of their own.
EVENT_METHODS = MESSAGE_METHODS | {
    "imconnector.send.status.delivery",
    "imconnector.send.status.reading",
    "imconnector.chat.name.set",
}
# Refusals the portal makes before running anything (`OVERLOAD_LIMIT` blocks the portal,
# `QUERY_LIMIT_EXCEEDED` is the leaky bucket): not ambiguous even on a send.
_REFUSED_BEFORE_RUNNING = frozenset({"OVERLOAD_LIMIT", "QUERY_LIMIT_EXCEEDED"})
UNEXPECTED_ANSWER = "UNEXPECTED_ANSWER"


def classify_error(
    http_status: int, code: str | None, description: str | None, retry_after: float | None = None
) -> BitrixError:
    """The exception for a failed call with this HTTP status and Bitrix24 error code."""
    text = f"{code or 'HTTP ' + str(http_status)}: {description or ''}".strip().rstrip(":")
    kwargs: dict[str, Any] = {"code": code, "http_status": http_status, "retry_after": retry_after}
    if code in THROTTLED_CODES:
        return Throttled(text, **kwargs)
    if code in AUTH_CODES:
        return AuthError(text, **kwargs)
    if code in CAUSAL_CODES:
        return CausalWait(text, **kwargs)
    if code in TRANSIENT_CODES:
        return TransientError(text, **kwargs)
    if http_status == 429:
        return Throttled(text, **kwargs)
    if http_status >= 500 or http_status in (408, 425):
        return TransientError(text, **kwargs)
    if http_status == 401 and code is None:
        return AuthError(text, **kwargs)
    return PermanentError(text, **kwargs)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def check_response(response: httpx.Response) -> dict[str, Any]:
    """Return the decoded envelope of a successful call, or raise the classified error."""
    try:
        body = orjson.loads(response.content)
    except ValueError:  # orjson.JSONDecodeError included
        body = None
    if not isinstance(body, dict):
        raise classify_error(
            response.status_code if response.status_code != 200 else 502,
            None,
            "response is not a JSON object",
            _retry_after(response),
        )
    if response.status_code != 200 or "error" in body:
        raise classify_error(
            response.status_code,
            body.get("error"),
            body.get("error_description"),
            _retry_after(response),
        )
    result = body.get("result")
    # Older servers: whole-call failure as HTTP 200 with result.SUCCESS == false.
    if isinstance(result, dict) and result.get("SUCCESS") is False:
        code = result.get("error") or result.get("ERROR_CODE") or "SUCCESS_FALSE"
        raise classify_error(
            400,
            str(code),
            result.get("error_description")
            or str(result.get("ERRORS") or result.get("error_description") or ""),
        )
    return body


def for_method(method: str, exc: BitrixError) -> BitrixError:
    """`exc` as it counts for `method`: on a send, a server-side failure after the request
    reached the portal (5xx, a body that is not JSON) may follow applied elements, so it is
    an `AmbiguousError`; everything else stays as it is."""
    if (
        method == SEND
        and type(exc) is TransientError
        and exc.http_status is not None
        and exc.http_status >= 500
        and exc.code not in _REFUSED_BEFORE_RUNNING
    ):
        return AmbiguousError(
            f"{exc} (the portal may have applied some of the messages)",
            code=exc.code or f"HTTP_{exc.http_status}",
            http_status=exc.http_status,
            retry_after=exc.retry_after,
        )
    return exc


def check_answer(method: str, body: dict[str, Any], count: int) -> None:
    """Raise unless `body` has the shape `method` answers with (docs, method pages): a
    message method `{"SUCCESS", "DATA": {"RESULT": [{"SUCCESS": bool, ...}, ...]}}` with
    one entry per element sent, the other calls events make `{"SUCCESS": true, ...}`.
    An unknown shape is never success: ambiguous on a send, permanent otherwise."""
    if method not in EVENT_METHODS:
        return
    problem = _shape_problem(method, body.get("result"), count)
    if problem is None:
        return
    text = f"{UNEXPECTED_ANSWER}: {method} answered {problem}"
    if method == SEND:
        raise AmbiguousError(
            text + " (the portal may have applied some of the messages)",
            code=UNEXPECTED_ANSWER,
            http_status=200,
        )
    raise PermanentError(text, code=UNEXPECTED_ANSWER, http_status=200)


def _shape_problem(method: str, result: object, count: int) -> str | None:
    if not isinstance(result, dict) or result.get("SUCCESS") is not True:
        return "without result.SUCCESS = true"
    if method not in MESSAGE_METHODS:
        return None
    data = result.get("DATA")
    items = data.get("RESULT") if isinstance(data, dict) else None
    if not isinstance(items, list) or len(items) != count:
        return f"without a DATA.RESULT list of {count} entries"
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("SUCCESS"), bool):
            return "a DATA.RESULT entry without a boolean SUCCESS"
    return None


def element_results(body: dict[str, Any], count: int) -> list[tuple[bool, str | None, str]]:
    """Per-element `(ok, code, error text)` from `result.DATA.RESULT`, index-aligned with
    MESSAGES (the shape was checked by `check_answer`).

    `ERRORS` holds the portal's texts: the code is the one they stand for
    (`element_errors.element_error_code`), the text is kept whole for the dead letter.
    Methods whose `DATA` carries no per-element list (the status methods) succeed whole.
    """
    result = body.get("result")
    data = result.get("DATA") if isinstance(result, dict) else None
    items = data.get("RESULT") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return [(True, None, "")] * count
    out: list[tuple[bool, str | None, str]] = []
    for index in range(count):
        item = items[index] if index < len(items) else None
        if not isinstance(item, dict):
            missing = "MISSING_ELEMENT_RESULT"
            out.append((False, missing, f"{missing}: the response had no result for it"))
        elif item.get("SUCCESS") is False:
            raw = item.get("ERRORS")
            errors = [str(e) for e in raw] if isinstance(raw, list) else []
            if isinstance(raw, str):
                errors = [raw]
            text = "; ".join(errors) or "SUCCESS false without ERRORS"
            out.append((False, element_error_code(errors), text))
        else:
            out.append((True, None, ""))
    return out


def batch_results(body: dict[str, Any], count: int) -> list[tuple[bool, str | None, str]]:
    """Per-sub-call `(ok, error code, error text)` of a `batch` answer, keys `c0`..`c<n-1>`.

    A sub-call with neither a result nor an error (a halted batch, an answer of another
    shape) counts as failed with code `MISSING_ELEMENT_RESULT`.
    """
    result = body.get("result")
    results = result.get("result") if isinstance(result, dict) else None
    errors = result.get("result_error") if isinstance(result, dict) else None
    out: list[tuple[bool, str | None, str]] = []
    for index in range(count):
        error = _batch_entry(errors, index)
        if isinstance(error, dict):
            code = str(error.get("error") or "BATCH_SUBCALL_FAILED")
            out.append((False, code, f"{code}: {error.get('error_description') or ''}".strip()))
        elif _batch_entry(results, index) is None:
            missing = "MISSING_ELEMENT_RESULT"
            out.append((False, missing, f"{missing}: the batch answer had no result for it"))
        else:
            out.append((True, None, ""))
    return out


def _batch_entry(entries: object, index: int) -> Any:
    """Entry `c<index>` of a batch answer's `result`/`result_error` map (PHP may send a list)."""
    if isinstance(entries, dict):
        return entries.get(f"c{index}")
    return None


def element_result_data(body: dict[str, Any], index: int) -> dict[str, Any] | None:
    """The useful part of element `index`'s result: Bitrix user id and session ids."""
    result = body.get("result")
    data = result.get("DATA") if isinstance(result, dict) else None
    items = data.get("RESULT") if isinstance(data, dict) else None
    if not isinstance(items, list) or index >= len(items) or not isinstance(items[index], dict):
        return None
    item = items[index]
    out: dict[str, Any] = {}
    if "user" in item:
        out["user"] = item["user"]
    session = item.get("session")
    if isinstance(session, dict):
        out["session_id"] = session.get("ID")
        out["chat_id"] = session.get("CHAT_ID")
    return out or None


def classify_transport(exc: httpx.HTTPError) -> BitrixError:
    """Transport failures: before the request left (safe) or after (ambiguous)."""
    name = type(exc).__name__
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return TransientError(f"{name}: request never reached the portal ({exc})"[:300], code=name)
    return AmbiguousError(f"{name}: the request may have been applied ({exc})"[:300], code=name)
