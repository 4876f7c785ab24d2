"""The REST `batch` wire format: `cmd` sub-requests in, PHP-shaped per-key result maps out (§8).

No portal state here: Portal runs the sub-calls; this module parses, substitutes the
placeholders that refer to earlier sub-calls (`substitute`), and assembles.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from consumer.simulator.calllog import redact_query
from consumer.simulator.errors import RestError
from consumer.simulator.params import parse_form, php_empty, upper_keys

BATCH_METHOD = "batch"
BATCH_MAX_LENGTH = 50
"""Sub-requests one batch runs; each one after them gets `ERROR_BATCH_LENGTH_EXCEEDED` in
`result_error` and the request still answers HTTP 200 (rest `rest_provider.php::
methodsBatch`; server-behaviour reference §1 finding 11)."""

# rest `rest_util.php::processBatchElement`: `/\$(result|next|total|time|error)([^\s]*)/i`,
# then every `[key]` in the rest walks into the answers of the earlier sub-calls.
_PLACEHOLDER = re.compile(r"\$(result|next|total|time|error)(\S*)", re.IGNORECASE)
_PATH_KEY = re.compile(r"\[([^\]]+)\]")
_MISSING = object()


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


def substitute(request: SubRequest, outcomes: list[SubOutcome]) -> SubRequest:
    """`request` with its placeholders replaced from the earlier `outcomes`, as
    `processBatchElement` does inside every (decoded) value:

    * `$result[c0][x]`, `$error[..]`, `$time[..]` (also `$next`, `$total`, empty here) walk
      into the answers so far; the walk stops at the first key that is not there;
    * a value that is nothing but the placeholder becomes what was found, whatever it is;
    * inside a longer value, a string or a number replaces the placeholder, anything else
      leaves the value as it is;
    * the name matches in any case, but the answers are keyed in lower case (PHP array
      keys are case-sensitive), so `$RESULT[c0]` finds nothing.
    """
    answers: dict[str, dict[str, Any]] = {
        "result": {},
        "next": {},
        "total": {},
        "time": {},
        "error": {},
    }
    for outcome in outcomes:
        key = outcome.request.key
        if outcome.error is not None:
            answers["error"][key] = {
                "error": outcome.error.code,
                "error_description": outcome.error.description,
            }
        else:
            answers["result"][key] = outcome.result
            answers["time"][key] = outcome.timing
    params = {name: _substituted(value, answers) for name, value in request.params.items()}
    return replace(request, params=params)


def _substituted(value: Any, answers: dict[str, dict[str, Any]]) -> Any:
    if isinstance(value, dict):
        return {key: _substituted(item, answers) for key, item in value.items()}
    if isinstance(value, list):
        return [_substituted(item, answers) for item in value]
    if not isinstance(value, str):
        return value
    query: Any = value
    for match in _PLACEHOLDER.finditer(value):
        keys = _PATH_KEY.findall(match.group(2))
        if not keys:
            continue
        found: Any = answers.get(match.group(1))  # case-sensitive: `$RESULT` finds nothing
        for key in keys:
            step = _index(found, key)
            if step is _MISSING:
                break
            found = step
        if match.group(0) == query:
            query = found
            continue
        if isinstance(found, int | float) and not isinstance(found, bool):
            found = f"{found:.14G}" if isinstance(found, float) else str(found)
        if isinstance(found, str) and isinstance(query, str):
            query = query.replace(match.group(0), found)
    return query


def _index(node: Any, key: str) -> Any:
    """PHP `isset($node[$key]) ? $node[$key] : missing` for arrays (maps and lists)."""
    if isinstance(node, dict):
        item = node.get(key)
    elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
        item = node[int(key)]
    else:
        return _MISSING
    return _MISSING if item is None else item
