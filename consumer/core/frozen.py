"""`@frozen`: immutable value classes that are cheap to build.

`@dataclass(frozen=True)` sets every field through `object.__setattr__`, which makes
building one several times slower than building a plain slotted dataclass, and the engine
builds several per event (the decoded event, its payload, its outcome). So the classes
marked `@frozen` are frozen for the type checker (PEP 681 `frozen_default`; `mypy --strict`
refuses an assignment to a field) and plain slotted dataclasses at run time, equal and
hashable by value as frozen ones are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, dataclass_transform

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True)
def frozen(cls: type[_T]) -> type[_T]:
    """A slotted dataclass, hashable by value, that the type checker treats as frozen."""
    return dataclass(slots=True, unsafe_hash=True)(cls)
