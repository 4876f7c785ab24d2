"""What the admin commands print, and the checks their options share."""

from __future__ import annotations

import json
import sys
from typing import Any
from urllib.parse import urlsplit

from consumer.errors import ConfigError

PROG = "imconnector-consumer"


def out(text: str) -> None:
    """A line of the command's output."""
    sys.stdout.write(text + "\n")


def err(text: str) -> None:
    """A line on standard error."""
    sys.stderr.write(text + "\n")


def print_json(value: Any) -> None:
    """`value` as indented JSON."""
    out(json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True))


def absolute_url(value: str, option: str) -> str:
    """`value` if it is an absolute http(s) URL; else a `ConfigError` naming `option`."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{option} {value!r} is not an absolute http(s) URL")
    return value
