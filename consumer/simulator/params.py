"""Request parameters as the PHP portal sees them: query/form/JSON merged, key case, truthiness."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

import orjson

_BRACKETS = re.compile(r"\[([^\]]*)\]")


def parse_form(text: str) -> dict[str, Any]:
    """Decode `a=1&MESSAGES[0][user][id]=7` into nested dicts/lists, like PHP's `$_REQUEST`."""
    root: dict[str, Any] = {}
    for raw_key, value in parse_qsl(text, keep_blank_values=True):
        head, _, rest = raw_key.partition("[")
        path = [head, *_BRACKETS.findall("[" + rest)] if rest else [head]
        node: dict[str, Any] = root
        for index, part in enumerate(path):
            last = index == len(path) - 1
            if part == "":
                # `a[]=x` appends: PHP numbers the element after the highest index so far.
                part = str(sum(1 for key in node if key.isdigit()))
            if last:
                node[part] = value
            else:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = {}
                    node[part] = child
                node = child
    # The top level stays a mapping of parameter names even if they look numeric.
    return {key: _lists_from_numeric_dicts(item) for key, item in root.items()}


def _lists_from_numeric_dicts(value: Any) -> Any:
    """Turn {"0": a, "1": b} into [a, b] so form data and JSON arrays look the same."""
    if not isinstance(value, dict):
        return value
    converted = {key: _lists_from_numeric_dicts(item) for key, item in value.items()}
    keys = list(converted)
    if keys and keys == [str(i) for i in range(len(keys))]:
        return [converted[key] for key in keys]
    return converted


def parse_body(content_type: str, body: bytes) -> dict[str, Any]:
    """Parameters from a request body; an undecodable body counts as no parameters."""
    if not body:
        return {}
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or (not media and body.lstrip().startswith(b"{")):
        try:
            decoded = orjson.loads(body)
        except orjson.JSONDecodeError:
            # Not strict JSON for orjson (invalid UTF-8, an integer past 64 bits, NaN):
            # PHP's json_decode is more lenient, and so is `json`.
            try:
                decoded = json.loads(body.decode("utf-8", errors="replace"))
            except ValueError:
                return {}
        return {str(k): v for k, v in decoded.items()} if isinstance(decoded, dict) else {}
    if media in ("application/x-www-form-urlencoded", ""):
        return parse_form(body.decode("utf-8", errors="replace"))
    return {}


def upper_keys(params: dict[str, Any]) -> dict[str, Any]:
    """Top-level parameter names are case-insensitive: the portal upper-cases them (§2)."""
    return {str(key).upper(): value for key, value in params.items()}


# In JSON with no backslash every quote delimits a string, so this finds every key with an
# upper-case ASCII letter (and, harmlessly, a few things that are not keys).
_UPPER_KEY = re.compile(rb'"[^"]*[A-Z][^"]*":')


def lower_keys_deep(value: Any) -> Any:
    """Keys inside MESSAGES are lower-cased recursively (§2 "Key case").

    Clients mostly send lower-case keys already: a scan of the value's JSON tells that
    several times faster than rebuilding it, and the value is then returned as it is (the
    simulator never changes a request's parameters). JSON with a backslash or non-ASCII
    text is rebuilt: a key there may hide an upper-case letter from the scan."""
    if not isinstance(value, (dict, list)):
        return value
    text = scan_text(value)
    if text is not None and b"\\" not in text and _UPPER_KEY.search(text) is None:
        return value
    return _lower_keys(value)


def scan_text(value: Any) -> bytes | None:
    """A request part's compact JSON, for a scan that tells whether it needs a walk; None
    where a scan cannot tell: not JSON (cannot come from a request), or non-ASCII text,
    where a key may lower-case to ASCII (the Kelvin sign to "k")."""
    try:
        text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return None
    return text if text.isascii() else None


def _lower_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key).lower(): _lower_keys(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_lower_keys(item) for item in value]
    return value


def php_empty(value: Any) -> bool:
    """PHP `empty()`: null, "", "0", 0, 0.0, false and empty arrays are empty."""
    if value is None or value is False:
        return True
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value == 0
    if isinstance(value, str):
        return value in ("", "0")
    if isinstance(value, list | dict):
        return len(value) == 0
    return False


def library_is_empty(value: Any) -> bool:
    """imconnector's `Library::isEmpty`: `empty()` except that "0" and 0 are values (the real
    `addMessage` takes the text "0"; reference §1 finding 12)."""
    if isinstance(value, str):
        return value == ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return False
    return php_empty(value)


def php_intval(value: Any) -> int:
    """PHP `intval()`: leading digits of a string, 0 when there are none."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str):
        match = re.match(r"\s*([+-]?\d+)", value)
        return int(match.group(1)) if match else 0
    return 0


def as_array(value: Any) -> list[Any] | None:
    """A PHP array's values: JSON lists and objects both count; anything else is not an array."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return list(value.values())
    return None


def as_text(value: Any) -> str:
    """A scalar parameter as the string PHP would see ("" for null/arrays)."""
    if value is None or isinstance(value, list | dict):
        return ""
    if value is True:
        return "1"
    if value is False:
        return ""
    return str(value)
