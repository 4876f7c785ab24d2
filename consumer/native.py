"""Which modules are compiled with mypyc, and whether the compiled ones match their source.

The modules every record goes through (decode aside) are compiled to C extensions by
mypyc: `scripts/compile` builds them next to their sources for the venv (`make
bootstrap` runs it), the Dockerfile builds them into the image (`IMCONNECTOR_COMPILE=1
pip install .`, see `setup.py`). The source stays the reference: the same `.py` files
run interpreted when nothing is compiled (`IMCONNECTOR_PURE_PYTHON=1 make bootstrap`).

An extension built in place goes stale when its source is edited afterwards: Python
would go on loading the old extension. `scripts/compile` writes the SHA-256 of every
source it compiled to `STAMP`; `status()` compares, and the service and the tests refuse
a stale build with the command that fixes it.

This module itself is never compiled: `setup.py` and `scripts/compile` import it.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from consumer.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
# The shared library mypyc builds for the group, inside the package (not top level), so
# an editable install finds it like any other module of `consumer`.
GROUP = "consumer._native"
STAMP = PACKAGE_DIR / "_native.json"

# Paths relative to the project root. Left out on purpose: `codec` (its decode runs in
# the generated Avro reader, which is built at run time, and the tests replace its
# functions), `frozen` (mypyc cannot compile a `dataclass_transform` decorator; the
# classes it marks are compiled as native classes wherever they are defined), and
# everything off the per-record path (CLI, admin, settings, simulator).
COMPILED = (
    "consumer/events.py",
    "consumer/mapping.py",
    "consumer/state.py",
    "consumer/ordering.py",
    "consumer/fold.py",
    "consumer/kafka_io.py",
    "consumer/dispatch.py",
    "consumer/dispatch_process.py",
    "consumer/engine.py",
)


@dataclass(frozen=True, slots=True)
class NativeStatus:
    """What `status()` found."""

    compiled: tuple[str, ...]  # module names loaded from (or built as) extensions
    stale: tuple[str, ...]  # source files edited since they were compiled
    problem: str | None  # why the build cannot be used, with the fix; None if it can

    @property
    def label(self) -> str:
        """`compiled`, `interpreted` or `stale`, for logs, metrics and the bench table."""
        if self.problem is not None:
            return "stale"
        return "compiled" if self.compiled else "interpreted"


def module_name(path: str) -> str:
    """`consumer/engine.py` -> `consumer.engine`."""
    return path.removesuffix(".py").replace("/", ".")


def source_digests(root: Path | None = None) -> dict[str, str]:
    """SHA-256 of every source in `COMPILED`, by path."""
    base = root or PACKAGE_DIR.parent
    return {path: hashlib.sha256((base / path).read_bytes()).hexdigest() for path in COMPILED}


def build_key() -> dict[str, str]:
    """What else a build depends on: the interpreter and mypyc's version."""
    try:
        from mypy.version import __version__ as mypy_version
    except ImportError:  # an image without mypy: only checked where the build happens
        mypy_version = "unknown"
    return {"python": sys.version.split()[0], "mypy": mypy_version}


def extensions() -> list[Path]:
    """The compiled extension files present in the package."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return sorted(p for p in PACKAGE_DIR.iterdir() if p.name.endswith(suffixes))


def status() -> NativeStatus:
    """Compare the extensions in the package with their sources and the stamp."""
    built = extensions()
    if not built:
        return NativeStatus((), (), None)
    names = tuple(
        module_name(path)
        for path in COMPILED
        if any(p.name.startswith(Path(path).stem + ".") for p in built)
    )
    fix = "run scripts/compile (make bootstrap does), or delete consumer/*.so to run interpreted"
    if not STAMP.exists():
        # Built by pip (the image): sources and extensions come from one build step.
        return NativeStatus(names, (), None)
    try:
        stamp = json.loads(STAMP.read_text())
        recorded = stamp["sources"]
    except (ValueError, KeyError, TypeError) as exc:
        return NativeStatus(names, (), f"{STAMP.name} is unreadable ({exc}); {fix}")
    current = source_digests()
    stale = tuple(path for path in COMPILED if recorded.get(path) != current[path])
    if stale:
        return NativeStatus(
            names,
            stale,
            f"{', '.join(stale)} changed since compiled: Python would run the old code; {fix}",
        )
    return NativeStatus(names, (), None)


def usable() -> NativeStatus:
    """`status()`, or a `ConfigError` (exit status 2, the fix in its message) when stale."""
    found = status()
    if found.problem is not None:
        raise ConfigError(found.problem)
    return found
