"""The Avro contracts: every released schema version of each record family, newest last.

`chat_event` (`ChatEvent`, consumed) and `operator_event` (`OperatorEvent`, produced by
`consumer.inbound`); a file `<family>.v<N>.avsc` is version N of its family.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).resolve().parent

__all__ = ["SCHEMA_DIR", "released_versions"]


@cache
def released_versions(family: str = "chat_event") -> tuple[tuple[int, dict[str, Any]], ...]:
    """Every bundled `<family>.vN.avsc` as `(N, schema)`, oldest first; the last is the reader."""
    found = []
    for path in SCHEMA_DIR.glob(f"{family}.v*.avsc"):
        version = int(path.stem.rsplit(".v", 1)[1])
        found.append((version, json.loads(path.read_text(encoding="utf-8"))))
    return tuple(sorted(found, key=lambda item: item[0]))
