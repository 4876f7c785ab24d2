"""Avro schema resolution as a yes/no question: can a reader schema read what a writer schema wrote?

Follows the Avro spec's resolution rules (promotions, field defaults, enum
defaults, unions, named types, recursion); schemas are parsed by fastavro.
"""

from __future__ import annotations

import json
from typing import Any

import fastavro

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
PROMOTIONS = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}
NAMED = frozenset({"record", "error", "enum", "fixed"})


class InvalidSchema(ValueError):
    """The text is not an Avro schema."""


def parse_avro(schema: str | dict[str, Any] | list[Any]) -> Any:
    """Parse and validate an Avro schema (JSON text or decoded); names come back fully qualified."""
    try:
        decoded = json.loads(schema) if isinstance(schema, str) else schema
        return fastavro.parse_schema(decoded, _write_hint=False)
    except Exception as exc:  # fastavro raises many exception types for bad schemas
        raise InvalidSchema(str(exc)) from exc


def can_read(writer: Any, reader: Any) -> bool:
    """True when data written with `writer` resolves against `reader` (both parsed schemas)."""
    return _Resolution(writer, reader).compatible(writer, reader)


def is_backward_compatible(new: str, old: str) -> bool:
    """BACKWARD: the new schema (reader) can read data written with the old one (writer)."""
    return can_read(parse_avro(old), parse_avro(new))


def _collect_names(schema: Any, names: dict[str, Any]) -> dict[str, Any]:
    if isinstance(schema, list):
        for branch in schema:
            _collect_names(branch, names)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in NAMED:
            names[schema["name"]] = schema
        for f in schema.get("fields", []):
            _collect_names(f["type"], names)
        for key in ("items", "values"):
            if key in schema:
                _collect_names(schema[key], names)
        if isinstance(kind, dict | list):
            _collect_names(kind, names)
    return names


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


class _Resolution:
    def __init__(self, writer: Any, reader: Any) -> None:
        self._writer_names = _collect_names(writer, {})
        self._reader_names = _collect_names(reader, {})
        # Record pairs being compared: a recursive reference back to one is assumed fine.
        self._in_progress: set[tuple[str, str]] = set()

    @staticmethod
    def _deref(schema: Any, names: dict[str, Any]) -> Any:
        while True:
            if isinstance(schema, str):
                if schema in PRIMITIVES:
                    return schema
                schema = names[schema]
            elif isinstance(schema, dict) and isinstance(schema.get("type"), str | dict | list):
                kind = schema["type"]
                if isinstance(kind, str) and kind in NAMED | {"array", "map"}:
                    return schema
                schema = kind  # {"type": "string", "logicalType": ...} or a wrapped reference
            else:
                return schema

    @staticmethod
    def _kind(schema: Any) -> str:
        return schema if isinstance(schema, str) else str(schema["type"])

    @staticmethod
    def _names_match(writer: dict[str, Any], reader: dict[str, Any]) -> bool:
        aliases = {_short(alias) for alias in reader.get("aliases", [])}
        return _short(writer["name"]) in {_short(reader["name"]), *aliases}

    def compatible(self, writer: Any, reader: Any) -> bool:
        w = self._deref(writer, self._writer_names)
        r = self._deref(reader, self._reader_names)
        if isinstance(w, list):
            return all(self.compatible(branch, r) for branch in w)
        if isinstance(r, list):
            return any(self.compatible(w, branch) for branch in r)
        wk, rk = self._kind(w), self._kind(r)
        if wk in PRIMITIVES or rk in PRIMITIVES:
            return wk == rk or rk in PROMOTIONS.get(wk, frozenset())
        if {wk, rk} <= {"record", "error"}:
            return self._records(w, r)
        if wk != rk:
            return False
        if wk == "enum":
            if not self._names_match(w, r):
                return False
            return set(w["symbols"]) <= set(r["symbols"]) or "default" in r
        if wk == "fixed":
            return self._names_match(w, r) and w["size"] == r["size"]
        if wk == "array":
            return self.compatible(w["items"], r["items"])
        if wk == "map":
            return self.compatible(w["values"], r["values"])
        return False

    def _records(self, w: dict[str, Any], r: dict[str, Any]) -> bool:
        if not self._names_match(w, r):
            return False
        pair = (w["name"], r["name"])
        if pair in self._in_progress:
            return True
        self._in_progress.add(pair)
        try:
            written = {f["name"]: f for f in w["fields"]}
            for field in r["fields"]:
                candidates = [field["name"], *field.get("aliases", [])]
                match = next((written[name] for name in candidates if name in written), None)
                if match is None:
                    # A field the writer never wrote can only be filled from its default.
                    if "default" not in field:
                        return False
                elif not self.compatible(match["type"], field["type"]):
                    return False
            return True
        finally:
            self._in_progress.discard(pair)
