"""A pytest plugin, `-p tests.interpreted`: the modules `consumer/native.py` compiles load
from their `.py` sources even when compiled extensions sit beside them, so one checkout
can test both builds (`tests/unit/test_native.py` runs the core tests this way)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib.machinery import ModuleSpec
from types import ModuleType

import pytest

from consumer.native import COMPILED, PACKAGE_DIR, module_name

_SOURCES = {module_name(path): PACKAGE_DIR.parent / path for path in COMPILED}


class _SourceFirst:
    """A meta path finder that answers for the compiled modules with their sources."""

    @staticmethod
    def find_spec(
        name: str, path: object = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        source = _SOURCES.get(name)
        return None if source is None else importlib.util.spec_from_file_location(name, source)


already = sorted(name for name in _SOURCES if name in sys.modules)
if already:
    raise RuntimeError(f"tests.interpreted loaded too late: {already} already imported")
sys.meta_path.insert(0, _SourceFirst)


def pytest_sessionstart(session: pytest.Session) -> None:
    for name in _SOURCES:  # all of them, so the summary vouches for every one
        importlib.import_module(name)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    loaded = {name: str(sys.modules[name].__file__) for name in _SOURCES if name in sys.modules}
    compiled = sorted(name for name, file in loaded.items() if not file.endswith(".py"))
    if compiled:
        raise RuntimeError(f"tests.interpreted: {compiled} were loaded compiled")
    terminalreporter.write_line(f"interpreted: {len(loaded)} modules ran from their sources")
