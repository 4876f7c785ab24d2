"""The REST `batch` wire format: `cmd` sub-requests in, PHP-shaped per-key result maps out (§8).

No portal state here: Portal runs the sub-calls; this module parses and assembles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consumer.simulator.calllog import redact_query
from consumer.simulator.errors import RestError
from consumer.simulator.params import parse_form, php_empty, upper_keys

BATCH_METHOD = "batch"
BATCH_MAX_LENGTH = 50
"""Sub-requests one batch may carry; more fail the whole request (reference §8)."""


@dataclass(frozen=True)
class SubRequest:
    """One `cmd` entry: its key, the lower-cased method and its upper-cased parameters."""

    key: str
    method: str
    params: dict[str, Any]


@dataclass(frozen=True)
class SubOutcome:
    """What one executed sub-call produced: a result with its timing, or an error."""

    request: SubRequest
    result: Any = None
    error: RestError | None = None
    timing: dict[str, Any] | None = None
    applied: bool = False


def parse_commands(cmd: Any) -> list[SubRequest]:
    """`cmd` as a list (numeric keys) or a mapping of `"method?query"` strings, in order.

    A query string is decoded like a form, PHP bracket syntax included; an entry that is
    not a string has no method (and so fails as an unknown method).
    """
    if isinstance(cmd, list):
        entries = [(str(index), value) for index, value in enumerate(cmd)]
    elif isinstance(cmd, dict):
        entries = [(str(key), value) for key, value in cmd.items()]
    else:
        entries = []
    return [_sub_request(key, value) for key, value in entries]


def _sub_request(key: str, command: Any) -> SubRequest:
    method, _, query = (command if isinstance(command, str) else "").partition("?")
    return SubRequest(key=key, method=method.strip().lower(), params=upper_keys(parse_form(query)))


def halts_on_error(params: dict[str, Any]) -> bool:
    """`halt` as PHP's `(bool)` reads it: "0", 0, "" and false keep going."""
    return not php_empty(params.get("HALT"))


def batch_result(outcomes: list[SubOutcome]) -> dict[str, Any]:
    """The `result` of a batch reply: per-key results, errors and timings in PHP's JSON shape."""
    results: dict[str, Any] = {}
    errors: dict[str, Any] = {}
    times: dict[str, Any] = {}
    for outcome in outcomes:
        key = outcome.request.key
        if outcome.error is not None:
            errors[key] = {
                "error": outcome.error.code,
                "error_description": outcome.error.description,
            }
        else:
            results[key] = outcome.result
            times[key] = outcome.timing
    return {
        "result": php_array(results),
        "result_error": php_array(errors),
        "result_total": [],
        "result_next": [],
        "result_time": php_array(times),
    }


def php_array(entries: dict[str, Any]) -> list[Any] | dict[str, Any]:
    """How PHP's `json_encode` writes an array: a list when its keys are 0..n-1 in order
    (so an empty one is `[]`), an object otherwise."""
    if list(entries) == [str(index) for index in range(len(entries))]:
        return list(entries.values())
    return dict(entries)


def logged_params(params: dict[str, Any]) -> dict[str, Any]:
    """The batch's parameters for the call log: tokens inside `cmd` strings redacted too."""
    cmd = params.get("CMD")
    if isinstance(cmd, list):
        return {**params, "CMD": [_redacted(command) for command in cmd]}
    if isinstance(cmd, dict):
        return {**params, "CMD": {key: _redacted(command) for key, command in cmd.items()}}
    return params


def _redacted(command: Any) -> Any:
    return redact_query(command) if isinstance(command, str) else command
