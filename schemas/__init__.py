"""The Avro event contract: every released `ChatEvent` schema version, newest last."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).resolve().parent

__all__ = ["SCHEMA_DIR", "released_versions"]


@cache
def released_versions() -> tuple[tuple[int, dict[str, Any]], ...]:
    """Every bundled `chat_event.vN.avsc` as `(N, schema)`, oldest first; the last is the reader."""
    found = []
    for path in SCHEMA_DIR.glob("chat_event.v*.avsc"):
        version = int(path.stem.rsplit(".v", 1)[1])
        found.append((version, json.loads(path.read_text(encoding="utf-8"))))
    return tuple(sorted(found, key=lambda item: item[0]))
