"""The bundled `ChatEvent` schema versions, parsed once, and the checks a writer schema from a
registry must pass before its records are read.

The newest bundled version is the reader schema; every released version is indexed by its
CRC-64-AVRO fingerprint for single-object records.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

import schemas
from consumer.codec.avro_fast import DatumReader, UnsupportedSchema, compile_reader
from consumer.core.events import (
    ChatEvent,
    ChatRenamed,
    DeliveryConfirmed,
    ExternalUser,
    File,
    MessageDeleted,
    MessageEdited,
    MessageSent,
    ReadConfirmed,
)

NAMESPACE = "io.imconnector.events"


def _plain(schema: Any) -> Any:
    """A copy of `schema` without logical types: same canonical form, much faster to read
    (no datetime/UUID objects built per record; the models keep epoch millis and strings)."""
    if isinstance(schema, dict):
        return {k: _plain(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_plain(item) for item in schema]
    return schema


def parse_plain(schema: Mapping[str, Any]) -> Any:
    """Parse `schema` for decoding, with logical types stripped."""
    return fastavro.parse_schema(_plain(schema))


def writer_risks(schema: Any) -> tuple[str | None, bool]:
    """`(problem, recursive)` for a writer schema from a registry.

    `problem`: why it cannot be read safely at all — not a record, or an array/map of
    zero-width items (a 100-byte record could declare 2^60 items that take forever to
    skip). `recursive`: it has a recursive type, which fastavro's reader follows without
    bound (a deeply nested record crashes the process), so the decoder refuses such writers.
    """
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return "the writer schema is not a record", False
    named: dict[str, Any] = {}
    recursive = False

    def qualify(name: str, namespace: str) -> str:
        return name if "." in name or not namespace else f"{namespace}.{name}"

    def zero_width(node: Any, namespace: str, seen: frozenset[str]) -> bool:
        if isinstance(node, str):
            if node == "null":
                return True
            ref = qualify(node, namespace)
            target = named.get(ref, named.get(node))
            return (
                target is not None
                and ref not in seen
                and zero_width(target, namespace, seen | {ref})
            )
        if isinstance(node, dict):
            kind = node.get("type")
            if kind == "record":
                return all(zero_width(f["type"], namespace, seen) for f in node["fields"])
            if kind == "fixed":
                return int(node.get("size", 1)) == 0
            if isinstance(kind, dict | str) and kind not in ("array", "map", "enum"):
                return zero_width(kind, namespace, seen)
        return False  # unions, arrays, maps, enums and primitives take at least a byte

    def walk(node: Any, namespace: str, stack: tuple[str, ...]) -> str | None:
        nonlocal recursive
        if isinstance(node, str):
            if qualify(node, namespace) in stack or node in stack:
                recursive = True
            return None
        if isinstance(node, list):
            for branch in node:
                found = walk(branch, namespace, stack)
                if found:
                    return found
            return None
        if not isinstance(node, dict):
            return None
        kind = node.get("type")
        if kind in ("record", "error", "enum", "fixed"):
            namespace = str(node.get("namespace", namespace))
            name = qualify(str(node.get("name", "")), namespace)
            named[name] = node
            for f in node.get("fields", []) if kind != "enum" else []:
                found = walk(f.get("type"), namespace, (*stack, name))
                if found:
                    return found
            return None
        if kind in ("array", "map"):
            items = node.get("items") if kind == "array" else node.get("values")
            if zero_width(items, namespace, frozenset()):
                return f"an {kind} of zero-width items"
            return walk(items, namespace, stack)
        return walk(kind, namespace, stack) if isinstance(kind, dict | list) else None

    return walk(schema, "", ()), recursive


def schema_fingerprint(schema: Mapping[str, Any]) -> bytes:
    canonical = to_parsing_canonical_form(dict(schema))
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


# Avro record full name -> the model it becomes; the generated reader calls these directly
# with the record's fields, which is what `event_from_record` does by hand.
_MODELS: dict[str, type] = {
    f"{NAMESPACE}.{model.__name__}": model
    for model in (
        ChatEvent,
        ExternalUser,
        File,
        ChatRenamed,
        MessageSent,
        MessageEdited,
        MessageDeleted,
        DeliveryConfirmed,
        ReadConfirmed,
    )
}


class Bundle:
    """The released schema versions, parsed once: reader (newest), fingerprint index, and
    the reader generated for the newest version (None if it uses a type the generator
    does not cover: such a reader falls back to fastavro)."""

    def __init__(self) -> None:
        versions = schemas.released_versions()
        self.reader_raw = versions[-1][1]
        self.reader = parse_plain(self.reader_raw)
        self.reader_fingerprint = schema_fingerprint(self.reader_raw)
        self.by_fingerprint: dict[bytes, Any] = {}
        self.fast_reader: DatumReader | None
        try:
            self.fast_reader = compile_reader(self.reader, _MODELS)
        except UnsupportedSchema:
            self.fast_reader = None
        for _, raw in versions:
            parsed = self.reader if raw is self.reader_raw else parse_plain(raw)
            self.by_fingerprint[schema_fingerprint(raw)] = parsed


_bundle_lock = threading.Lock()
_bundle: Bundle | None = None


def get_bundle() -> Bundle:
    global _bundle
    with _bundle_lock:
        if _bundle is None:
            _bundle = Bundle()
        return _bundle
