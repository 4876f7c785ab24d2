"""A strict Avro binary reader generated from one schema: Python source specialised to it,
compiled once, building the caller's model objects directly.

Why generated code: every record is decoded on the poll loop, and fastavro's generic
reader plus the re-encoding that proves the bytes canonical does several times the work of
straight-line code that knows every field's type (docs/adr/0003 says what it is worth end
to end). Why strict: the generated reader accepts exactly the bytes fastavro's writer
produces for what they decode to (minimal varints, union indexes in range, one array
block, booleans 0/1, ints within 32 bits), so a corrupt record can never decode to a
*different* valid-looking event and no re-encode is needed.

Supported: records, unions, arrays, null, boolean, int, long, string. Anything else
(bytes, float, double, enum, fixed, map, logical types, recursive types) raises
`UnsupportedSchema`, and the caller keeps its generic reader for that schema.
"""

from __future__ import annotations

import inspect
import keyword
from collections.abc import Callable, Mapping
from typing import Any

from consumer.errors import SchemaMismatch

__all__ = ["DatumReader", "UnsupportedSchema", "compile_reader", "generate_source"]

# `reader(buf, pos) -> (value, end)`: one datum starting at `pos`; `end` is where it stops.
# Raises SchemaMismatch for bytes it refuses, IndexError when `buf` ends inside the datum,
# UnicodeDecodeError for a string that is not UTF-8.
DatumReader = Callable[[bytes, int], tuple[Any, int]]

_INT_MIN = -(2**31)
_INT_MAX = 2**31 - 1
_MAX_VARINT_BYTES = 10  # 64 bits, 7 per byte
_MAX_UNION_BRANCHES = 64  # every index below 64 is one varint byte: the generated test is `==`

_PRIMITIVE_TYPES = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)
_NON_CANONICAL = "NON_CANONICAL"
_AVRO_DECODE = "AVRO_DECODE"


class UnsupportedSchema(ValueError):
    """The schema uses something the generator does not handle; read it another way."""


# -- runtime helpers the generated code calls on its slow paths (multi-byte varints, errors) --


def _long(buf: bytes, pos: int) -> tuple[int, int]:
    """The zigzag varint at `pos` whose first byte has its continuation bit set.

    The generated code reads one-byte varints inline; this handles the rest and refuses
    the two encodings fastavro's writer never makes: more than ten bytes (or more than 64
    bits in ten), and trailing zero groups (an overlong encoding of a smaller number).
    """
    start = pos
    value = 0
    shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if shift == 7 * _MAX_VARINT_BYTES:
            raise SchemaMismatch(
                f"varint at byte {start} is longer than {_MAX_VARINT_BYTES} bytes",
                code=_AVRO_DECODE,
            )
    if byte == 0:
        raise SchemaMismatch(
            f"overlong varint at byte {start}: {_NOT_CANONICAL_TEXT}", code=_NON_CANONICAL
        )
    if value >> 64:
        raise SchemaMismatch(f"varint at byte {start} exceeds 64 bits", code=_AVRO_DECODE)
    return (value >> 1) ^ -(value & 1), pos


def _int(buf: bytes, pos: int) -> tuple[int, int]:
    """`_long`, then the 32-bit range an Avro int promises (one-byte varints always fit)."""
    value, end = _long(buf, pos)
    if not _INT_MIN <= value <= _INT_MAX:
        raise SchemaMismatch(
            f"int {value} at byte {pos} is outside the 32-bit range", code=_AVRO_DECODE
        )
    return value, end


def _varint_at(buf: bytes, at: int) -> int:
    """The zigzag varint at `at`, however many bytes (for error messages)."""
    first = buf[at]
    return _long(buf, at)[0] if first >= 0x80 else (first >> 1) ^ -(first & 1)


def _length_error(length: int, left: int, at: int) -> SchemaMismatch:
    """A string length that is negative or runs past the end of the record."""
    return SchemaMismatch(
        f"string length {length} at byte {at} is negative or exceeds the {left} bytes left",
        code=_AVRO_DECODE,
    )


def _block_error(count: int, left: int, at: int) -> SchemaMismatch:
    """An array block count that cannot be right.

    More items than bytes left (every supported item takes at least one byte) is a corrupt
    or truncated record, whatever the sign; a negative count that would fit is a legal
    Avro form (the block's byte size follows) that fastavro's writer never produces.
    """
    if abs(count) > left:
        return SchemaMismatch(
            f"array block of {count} items at byte {at} exceeds the {left} bytes left",
            code=_AVRO_DECODE,
        )
    return SchemaMismatch(
        f"array block with a negative count at byte {at}: {_NOT_CANONICAL_TEXT}",
        code=_NON_CANONICAL,
    )


def _blocks_end_error(buf: bytes, at: int) -> SchemaMismatch:
    """Anything but a single zero byte after an array's first block."""
    try:
        count = _varint_at(buf, at)
    except SchemaMismatch as exc:
        return exc
    return SchemaMismatch(
        f"array continues with a second block ({count} items) at byte {at}: {_NOT_CANONICAL_TEXT}",
        code=_NON_CANONICAL,
    )


def _union_error(buf: bytes, at: int, branches: int) -> SchemaMismatch:
    """The union index at `at` is none of the one-byte codes 0, 2, ... of its branches."""
    try:
        index = _varint_at(buf, at)
    except SchemaMismatch as exc:
        return exc
    if index < 0:
        # fastavro would pick a branch by Python's negative indexing; Avro has no such index.
        return SchemaMismatch(
            f"negative union index {index} at byte {at}: {_NOT_CANONICAL_TEXT}",
            code=_NON_CANONICAL,
        )
    return SchemaMismatch(
        f"union index {index} at byte {at} is out of range for {branches} branches",
        code=_AVRO_DECODE,
    )


def _boolean_error(byte: int, at: int) -> SchemaMismatch:
    """A boolean byte other than 0 or 1."""
    return SchemaMismatch(
        f"boolean byte 0x{byte:02x} at byte {at}: {_NOT_CANONICAL_TEXT}", code=_NON_CANONICAL
    )


_NOT_CANONICAL_TEXT = "not the canonical encoding of what it decodes to"

_HELPERS: dict[str, Any] = {
    "_long": _long,
    "_int": _int,
    "_length_error": _length_error,
    "_block_error": _block_error,
    "_blocks_end_error": _blocks_end_error,
    "_union_error": _union_error,
    "_boolean_error": _boolean_error,
}


# -- the generator ------------------------------------------------------------------------------


class _Generator:
    """Emits the body of `read(buf, pos)`: one straight-line block per schema node.

    Every value lands in a fresh local `vN` (or is the constant `None`), so an expression
    handed to a parent never depends on `pos` or on a name that is later rebound.
    """

    def __init__(self, named: Mapping[str, Any], constructors: Mapping[str, Callable[..., Any]]):
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = dict(_HELPERS)
        self._named = dict(named)
        self._constructors = constructors
        self._counter = 0
        self._open: list[str] = []  # records being generated: a name seen again is recursion

    def fresh(self) -> str:
        self._counter += 1
        return f"v{self._counter}"

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def resolve(self, node: Any) -> Any:
        """`node` with a named-type reference replaced by its definition."""
        if isinstance(node, str) and node not in _PRIMITIVE_TYPES:
            if node not in self._named:
                raise UnsupportedSchema(f"unknown type {node!r}")
            return self._named[node]
        if isinstance(node, dict):
            if "logicalType" in node:
                raise UnsupportedSchema(f"logical type {node['logicalType']!r}")
            kind = node.get("type")
            if kind in _PRIMITIVE_TYPES or isinstance(kind, dict | list):
                return self.resolve(kind)
            if kind == "record":
                self._named[str(node["name"])] = node
        return node

    def value(self, node: Any, depth: int) -> str:
        """Emit the reading of one `node` value at indent `depth`; return its expression."""
        node = self.resolve(node)
        if node == "null":
            return "None"
        if node in ("long", "int"):
            return self.varint(depth, "_long" if node == "long" else "_int")
        if node == "string":
            return self.string(depth)
        if node == "boolean":
            return self.boolean(depth)
        if isinstance(node, list):
            return self.union(node, depth)
        if isinstance(node, dict) and node.get("type") == "record":
            return self.record(node, depth)
        if isinstance(node, dict) and node.get("type") == "array":
            return self.array(node, depth)
        kind = node.get("type") if isinstance(node, dict) else node
        raise UnsupportedSchema(f"type {kind!r} is not supported by the generated reader")

    def varint(self, depth: int, slow: str) -> str:
        out = self.fresh()
        self.emit(depth, f"{out} = buf[pos]")
        self.emit(depth, f"if {out} < 128:")
        self.emit(depth + 1, "pos += 1")
        self.emit(depth + 1, f"{out} = ({out} >> 1) ^ -({out} & 1)")
        self.emit(depth, "else:")
        self.emit(depth + 1, f"{out}, pos = {slow}(buf, pos)")
        return out

    def string(self, depth: int) -> str:
        length = self.varint(depth, "_long")
        end = self.fresh()
        out = self.fresh()
        self.emit(depth, f"{end} = pos + {length}")
        self.emit(depth, f"if {length} < 0 or {end} > size:")
        self.emit(depth + 1, f"raise _length_error({length}, size - pos, pos)")
        self.emit(depth, f"{out} = buf[pos:{end}].decode()")
        self.emit(depth, f"pos = {end}")
        return out

    def boolean(self, depth: int) -> str:
        out = self.fresh()
        self.emit(depth, f"{out} = buf[pos]")
        self.emit(depth, f"if {out} > 1:")
        self.emit(depth + 1, f"raise _boolean_error({out}, pos)")
        self.emit(depth, "pos += 1")
        self.emit(depth, f"{out} = {out} == 1")
        return out

    def union(self, branches: list[Any], depth: int) -> str:
        if not branches or len(branches) > _MAX_UNION_BRANCHES:
            raise UnsupportedSchema(f"a union of {len(branches)} branches")
        index = self.fresh()
        out = self.fresh()
        self.emit(depth, f"{index} = buf[pos]")
        self.emit(depth, "pos += 1")
        for number, branch in enumerate(branches):
            # a union index is a zigzag varint: branch k is the single byte 2k
            self.emit(depth, f"{'if' if number == 0 else 'elif'} {index} == {2 * number}:")
            expression = self.value(branch, depth + 1)
            self.emit(depth + 1, f"{out} = {expression}")
        self.emit(depth, "else:")
        self.emit(depth + 1, f"raise _union_error(buf, pos - 1, {len(branches)})")
        return out

    def record(self, node: Mapping[str, Any], depth: int) -> str:
        name = str(node["name"])
        if name in self._open:
            raise UnsupportedSchema(f"recursive type {name!r}")
        constructor = self._constructors.get(name)
        if constructor is None:
            raise UnsupportedSchema(f"no constructor for record {name!r}")
        fields = [str(f["name"]) for f in node["fields"]]
        for field in fields:
            if not field.isidentifier() or keyword.iskeyword(field):
                raise UnsupportedSchema(f"field name {field!r} is not a Python identifier")
        positional = _positional_order(name, constructor, fields)
        self._open.append(name)
        values = {str(f["name"]): self.value(f["type"], depth) for f in node["fields"]}
        self._open.pop()
        symbol = f"_record{len(self.namespace)}"
        self.namespace[symbol] = constructor
        out = self.fresh()
        if positional is not None:
            arguments = ", ".join(values[field] for field in positional)
        else:
            arguments = ", ".join(f"{field}={value}" for field, value in values.items())
        self.emit(depth, f"{out} = {symbol}({arguments})")
        return out

    def array(self, node: Mapping[str, Any], depth: int) -> str:
        items = node["items"]
        if self.min_width(items, frozenset()) == 0:
            # a zero-width item makes a block count unbounded by the bytes that arrived
            raise UnsupportedSchema("an array of zero-width items")
        count = self.varint(depth, "_long")
        collected = self.fresh()
        out = self.fresh()
        self.emit(depth, f"if {count}:")
        self.emit(depth + 1, f"if {count} < 0 or {count} > size - pos:")
        self.emit(depth + 2, f"raise _block_error({count}, size - pos, pos)")
        self.emit(depth + 1, f"{collected} = []")
        self.emit(depth + 1, f"for _ in range({count}):")
        item = self.value(items, depth + 2)
        self.emit(depth + 2, f"{collected}.append({item})")
        # fastavro writes every array as one block and a zero count: anything else is not it
        self.emit(depth + 1, "if buf[pos]:")
        self.emit(depth + 2, "raise _blocks_end_error(buf, pos)")
        self.emit(depth + 1, "pos += 1")
        self.emit(depth + 1, f"{out} = tuple({collected})")
        self.emit(depth, "else:")
        self.emit(depth + 1, f"{out} = ()")
        return out

    def min_width(self, node: Any, seen: frozenset[str]) -> int:
        """The fewest bytes a value of `node` can take (0 for null and empty records)."""
        if isinstance(node, str) and node not in _PRIMITIVE_TYPES:
            if node in seen or node not in self._named:
                return 1  # the generator itself refuses recursion and unknown names
            return self.min_width(self._named[node], seen | {node})
        if isinstance(node, dict):
            kind = node.get("type")
            if kind == "record":
                return sum(self.min_width(f["type"], seen) for f in node["fields"])
            return 1 if kind in ("array", "map") else self.min_width(kind, seen)
        return 0 if node == "null" else 1  # unions and other primitives: at least one byte


def _positional_order(
    name: str, constructor: Callable[..., Any], fields: list[str]
) -> list[str] | None:
    """The record's fields in the order `constructor` takes them positionally, or None to
    pass them by keyword; raises `UnsupportedSchema` if it does not take exactly them.

    Positional arguments because a keyword call costs ~0.1 us more per field, and a chat
    event has two dozen.
    """
    try:
        signature = inspect.signature(constructor)
    except ValueError:
        return None  # a builtin such as `dict`: nothing to check before calling it
    try:
        signature.bind(**dict.fromkeys(fields))
    except TypeError as exc:
        raise UnsupportedSchema(f"{name}'s constructor does not take its fields: {exc}") from exc
    leading = list(signature.parameters.values())[: len(fields)]
    if {p.name for p in leading} == set(fields) and all(
        p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in leading
    ):
        return [p.name for p in leading]
    return None


def generate_source(schema: Any, constructors: Mapping[str, Callable[..., Any]]) -> str:
    """The Python source of the reader for `schema` (a `fastavro.parse_schema` result).

    Exposed for reading and debugging; `compile_reader` is what callers use.
    """
    source, _ = _generate(schema, constructors)
    return source


def _generate(
    schema: Any, constructors: Mapping[str, Callable[..., Any]]
) -> tuple[str, dict[str, Any]]:
    named = schema.get("__named_schemas", {}) if isinstance(schema, dict) else {}
    generator = _Generator(named, constructors)
    result = generator.value(schema, 1)
    generator.emit(1, f"return {result}, pos")
    source = "\n".join(["def read(buf, pos):", "    size = len(buf)", *generator.lines, ""])
    return source, generator.namespace


def compile_reader(schema: Any, constructors: Mapping[str, Callable[..., Any]]) -> DatumReader:
    """A `DatumReader` for `schema` that builds each record with `constructors[full name]`.

    The constructor gets the record's fields, positionally when its parameters start with
    exactly them, else by keyword; arrays become tuples, unions the value of their branch.
    Byte positions in error messages count from the start of `buf`. Raises
    `UnsupportedSchema` for a schema this generator does not cover.
    """
    source, namespace = _generate(schema, constructors)
    code = compile(source, "<consumer.codec.avro_fast generated reader>", "exec")
    # The source is built from the schema's structure alone: field names are checked to be
    # identifiers and every other name is ours, so nothing from the schema runs as code.
    exec(code, namespace)  # noqa: S102
    reader: DatumReader = namespace["read"]
    return reader
