"""`schemas list` and `schemas check`: the bundled Avro schemas, their fingerprints, and
whether the newest is compatible with the registry's latest version and the older ones."""

from __future__ import annotations

import argparse
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import fastavro
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastavro.schema import fingerprint, to_parsing_canonical_form

import schemas
from consumer.admin.console import PROG, absolute_url, err, out, print_json
from consumer.codec import SchemaRegistryClient, event_from_record
from consumer.codec.bundle import parse_plain
from consumer.codec.decoder import SINGLE_OBJECT_MAGIC
from consumer.codec.registry import registry_http
from consumer.errors import ConfigError
from consumer.redact import redact

DEFAULT_SUBJECT = "chat-events-value"

# -- schema commands ---------------------------------------------------------------------------


def schema_fingerprint(schema: dict[str, Any]) -> str:
    """CRC-64-AVRO of the parsing canonical form, hex in wire order (single-object header)."""
    return str(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def cmd_schemas_list(args: argparse.Namespace) -> int:
    """`schemas list`: the bundled released versions and their fingerprints."""
    versions = schemas.released_versions()
    rows = [
        {
            "version": number,
            "name": f"{raw.get('namespace', '')}.{raw['name']}".lstrip("."),
            "fingerprint": schema_fingerprint(raw),
            "header": (SINGLE_OBJECT_MAGIC + bytes.fromhex(schema_fingerprint(raw))).hex(),
            "reader": index == len(versions) - 1,
        }
        for index, (number, raw) in enumerate(versions)
    ]
    if args.json:
        print_json(rows)
        return 0
    out(f"{'VERSION':<9}{'CRC-64-AVRO (wire order)':<26}{'SINGLE-OBJECT HEADER':<22}NAME")
    for row in rows:
        reader = "  (reader)" if row["reader"] else ""
        out(f"v{row['version']:<8}{row['fingerprint']:<26}{row['header']:<22}{row['name']}{reader}")
    return 0


_PRIMITIVE_SAMPLES: dict[str, Any] = {
    "null": None,
    "boolean": True,
    "int": 7,
    "long": 7,
    "float": 1.5,
    "double": 1.5,
    "bytes": b"sample",
    "string": "sample",
}
_NAMED_KINDS = ("record", "error", "enum", "fixed")


def _collect_named(schema: Any, named: dict[str, Any]) -> None:
    if isinstance(schema, list):
        for branch in schema:
            _collect_named(branch, named)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in _NAMED_KINDS:
            named.setdefault(schema["name"], schema)
        if kind in ("record", "error"):
            for item in schema["fields"]:
                _collect_named(item["type"], named)
        elif kind == "array":
            _collect_named(schema["items"], named)
        elif kind == "map":
            _collect_named(schema["values"], named)
        elif isinstance(kind, dict | list):
            _collect_named(kind, named)


def _samples(schema: Any, named: dict[str, Any], stack: frozenset[str]) -> list[Any]:
    """Values of `schema` that together take every union branch at least once."""
    if isinstance(schema, str):
        if schema in _PRIMITIVE_SAMPLES:
            return [_PRIMITIVE_SAMPLES[schema]]
        return _samples(named[schema], named, stack)
    if isinstance(schema, list):
        out: list[Any] = []
        for branch in schema:
            definition = named.get(branch) if isinstance(branch, str) else branch
            record_name = (
                definition.get("name")
                if isinstance(definition, dict) and definition.get("type") in ("record", "error")
                else None
            )
            for value in _samples(branch, named, stack):
                # Tuple notation picks the union branch by name, as the producers do.
                out.append((record_name, value) if record_name else value)
        return out
    kind = schema["type"]
    if kind in ("record", "error"):
        if schema["name"] in stack:
            return []  # recursion: only reachable through a union's other branches
        inner = stack | {schema["name"]}
        per_field = [
            (item["name"], _samples(item["type"], named, inner)) for item in schema["fields"]
        ]
        if any(not values for _, values in per_field):
            return []
        count = max((len(values) for _, values in per_field), default=1)
        return [{name: values[i % len(values)] for name, values in per_field} for i in range(count)]
    if kind == "enum":
        return list(schema["symbols"])
    if kind == "fixed":
        return [bytes(schema["size"])]
    if kind == "array":
        return [[item] for item in _samples(schema["items"], named, stack)] or [[]]
    if kind == "map":
        return [{"key": value} for value in _samples(schema["values"], named, stack)] or [{}]
    return _samples(kind, named, stack)


def sample_records(schema: Mapping[str, Any]) -> list[Any]:
    """Records of a parsed schema that together use every union branch (for resolution)."""
    named: dict[str, Any] = {}
    _collect_named(schema, named)
    return _samples(schema, named, frozenset())


@dataclass(frozen=True)
class CheckRow:
    """One line of `schemas check`."""

    check: str
    against: str
    ok: bool
    result: str


def local_compatibility(
    versions: Sequence[tuple[int, Mapping[str, Any]]] | None = None,
) -> list[CheckRow]:
    """Can the newest version read records written with every released one (Avro resolution)?

    Each writer encodes sample records that take every union branch; the newest schema
    decodes them as the consumer does and the result must build a `ChatEvent`.
    """
    versions = list(schemas.released_versions() if versions is None else versions)
    newest_number, newest_raw = versions[-1]
    reader = parse_plain(newest_raw)
    rows = []
    for number, raw in versions:
        writer = parse_plain(raw)
        samples = sample_records(writer)
        try:
            for sample in samples:
                out = io.BytesIO()
                fastavro.schemaless_writer(out, writer, sample)
                out.seek(0)
                record = fastavro.schemaless_reader(
                    out, writer, reader, return_record_name=True, return_record_name_override=True
                )
                event_from_record(cast(Mapping[str, Any], record))
            rows.append(
                CheckRow(
                    "local",
                    f"bundled v{number} -> v{newest_number}",
                    True,
                    f"readable ({len(samples)} sample records)",
                )
            )
        except Exception as exc:  # noqa: BLE001 - any failure is the answer, reported whole
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
            rows.append(
                CheckRow(
                    "local",
                    f"bundled v{number} -> v{newest_number}",
                    False,
                    f"NOT READABLE: {reason}",
                )
            )
    return rows


def _display_url(url: str) -> str:
    """The URL without user:password@."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def cmd_schemas_check(args: argparse.Namespace) -> int:
    """`schemas check`: the newest bundled schema against the registry and the older versions."""
    url = args.registry or os.environ.get("IMCONNECTOR_SCHEMA_REGISTRY_URL")
    if not url:
        raise ConfigError("give --registry URL (or set IMCONNECTOR_SCHEMA_REGISTRY_URL)")
    url = absolute_url(url, "--registry").rstrip("/")
    newest_number, newest = schemas.released_versions()[-1]
    rows = local_compatibility()
    try:
        # Auth and CA from IMCONNECTOR_SCHEMA_REGISTRY_* as the service reads them.
        with SchemaRegistryClient.from_environment(url) as registry:
            latest = registry.latest(args.subject)
            compatible = registry.is_compatible(args.subject, newest)
    except (SchemaRegistryError, registry_http.HTTPError) as exc:
        shown = _display_url(url)
        reason = " ".join(str(exc).split()).replace(url, shown)[:300]
        err(redact(f"{PROG}: schema registry {shown} failed: {type(exc).__name__}: {reason}"))
        return 1
    if latest is None:
        rows.append(
            CheckRow(
                "registry",
                f"{args.subject} (no versions) -> v{newest_number}",
                True,
                "compatible (the subject has no versions yet)",
            )
        )
    else:
        against = (
            f"{args.subject} v{latest.get('version')} (id {latest.get('id')}) -> v{newest_number}"
        )
        rows.append(
            CheckRow(
                "registry", against, compatible, "compatible" if compatible else "INCOMPATIBLE"
            )
        )
    ok = all(row.ok for row in rows)
    if args.json:
        print_json({"compatible": ok, "checks": [asdict(row) for row in rows]})
    else:
        width = max(len("AGAINST"), *(len(row.against) for row in rows))
        out(f"{'CHECK':<10}{'AGAINST':<{width}}  RESULT")
        for row in rows:
            out(f"{row.check:<10}{row.against:<{width}}  {row.result}")
        out("compatible" if ok else "NOT compatible")
    return 0 if ok else 1


def register_schema_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add `schemas list` and `schemas check` to the CLI's sub-commands."""
    schema = subparsers.add_parser("schemas", help="the bundled Avro schemas")
    schema_commands = schema.add_subparsers(dest="schemas_command", required=True)
    listed = schema_commands.add_parser("list", help="bundled versions and fingerprints")
    listed.add_argument("--json", action="store_true")
    listed.set_defaults(func=cmd_schemas_list)
    check = schema_commands.add_parser(
        "check", help="is the newest bundled schema compatible with the registry and older ones"
    )
    check.add_argument(
        "--registry",
        metavar="URL",
        help="schema registry (default: IMCONNECTOR_SCHEMA_REGISTRY_URL)",
    )
    check.add_argument("--subject", default=DEFAULT_SUBJECT)
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=cmd_schemas_check)
