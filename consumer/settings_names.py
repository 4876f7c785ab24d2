"""The names of the settings: which `IMCONNECTOR_*` variables and config-file keys exist,
a did-you-mean for those that do not, and one-line messages for validation errors.

A typo (`IMCONNECTOR_ENGINE__BATCHSIZE=7`) must stop the service at start, naming the
right spelling, instead of leaving the default in force without a word.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable, Iterator
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

ENV_PREFIX = "IMCONNECTOR_"
# Variables with the prefix that are not settings: read before the settings are.
RESERVED = frozenset({"CONFIG_FILE", "SECRETS_DIR", "SEED_ACCESS_TOKEN", "SEED_REFRESH_TOKEN"})
_DELIMITER = "__"


def _inner(annotation: Any) -> tuple[str, Any]:
    """`("model", cls)`, `("dict", value type)` or `("leaf", None)` for a field type."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _inner(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            kind = _inner(arg)
            if kind[0] != "leaf":
                return kind
        return "leaf", None
    if origin is dict:
        return "dict", get_args(annotation)[1]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "model", annotation
    return "leaf", None


def _exists(parts: list[str], annotation: Any) -> bool:
    if not parts:
        return True  # the whole field (a JSON value for a model or a dict)
    kind, inner = _inner(annotation)
    if kind == "model":
        field = inner.model_fields.get(parts[0])
        return field is not None and _exists(parts[1:], field.annotation)
    if kind == "dict":
        return bool(parts[0]) and _exists(parts[1:], inner)
    return False


def _spellings(annotation: Any, path: list[str], typed: list[str]) -> Iterator[list[str]]:
    """Every name under `path`; a dict's key is the one the user typed at that place."""
    if path:
        yield path
    kind, inner = _inner(annotation)
    if kind == "model":
        for name, field in inner.model_fields.items():
            yield from _spellings(field.annotation, [*path, name], typed)
    elif kind == "dict" and _inner(inner)[0] != "leaf":
        key = typed[len(path)] if len(typed) > len(path) else "<key>"
        yield from _spellings(inner, [*path, key], typed)


def _suggest(wrong: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(wrong, list(candidates), n=1, cutoff=0.8)
    return f": did you mean {close[0]}?" if close else " (see README 'Configuration')"


def unknown_names(model: type[BaseModel], names: Iterable[str]) -> list[str]:
    """One message per `IMCONNECTOR_*` name in `names` that is no setting of `model`."""
    messages = []
    for name in sorted(set(names)):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper == ENV_PREFIX:
            continue
        rest = upper.removeprefix(ENV_PREFIX)
        if rest in RESERVED:
            continue
        typed = rest.lower().split(_DELIMITER)
        if _exists(typed, model):
            continue
        spellings = (
            ENV_PREFIX + _DELIMITER.join(parts).upper() for parts in _spellings(model, [], typed)
        )
        messages.append(f"{name} is not a known setting{_suggest(upper, spellings)}")
    return messages


def _model_at(model: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    annotation: Any = model
    for part in loc:
        kind, inner = _inner(annotation)
        if kind == "model":
            field = inner.model_fields.get(part)
            if field is None:
                return None
            annotation = field.annotation
        elif kind == "dict":
            annotation = inner
        else:
            return None
    kind, inner = _inner(annotation)
    return inner if kind == "model" else None


def describe_error(model: type[BaseModel], error: dict[str, Any]) -> str:
    """A pydantic error as one line naming the variable (or config-file key) and the fix."""
    loc = [str(part) for part in error.get("loc", ()) if part not in ("function-after",)]
    name = ENV_PREFIX + _DELIMITER.join(loc).upper() if loc else ENV_PREFIX
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if error.get("type") == "missing":
        if [part.lower() for part in loc] in (["kafka"], ["kafka", "bootstrap_servers"]):
            return (
                f"{ENV_PREFIX}KAFKA__BOOTSTRAP_SERVERS is required: set it to host:port[,host:port]"
            )
        return f"{name} is required: set it in the environment or the YAML config file"
    if error.get("type") == "extra_forbidden":
        # Variables were checked before validation: this key came from the config file.
        parent = _model_at(model, loc[:-1])
        siblings = [".".join([*loc[:-1], f]) for f in (parent.model_fields if parent else ())]
        key = ".".join(loc)
        return f"config file key {key} is not a known setting{_suggest(key, siblings)}"
    return f"{name}: {message}"
