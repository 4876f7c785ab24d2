"""The mypyc build (`consumer/native.py`): what runs is what was built from these sources,
a stale build is refused, and the interpreted build passes the core tests too."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from consumer import native
from consumer.errors import ConfigError
from consumer.native import COMPILED, module_name, status

ROOT = Path(__file__).resolve().parents[2]


def test_each_module_runs_as_built():
    found = status()
    assert found.problem is None, found.problem
    for path in COMPILED:
        loaded = importlib.import_module(module_name(path)).__file__
        assert loaded is not None
        compiled = loaded.endswith(tuple(EXTENSION_SUFFIXES))
        assert compiled == (module_name(path) in found.compiled), loaded
    assert found.label == ("compiled" if found.compiled else "interpreted")


@pytest.fixture
def fake_build(tmp_path, monkeypatch):
    """A package directory with every compiled module's source, its extension file and a
    stamp of what was built, standing in for `consumer/`."""
    package = tmp_path / "consumer"
    package.mkdir()
    for path in COMPILED:
        (tmp_path / path).write_text(f"# {path}\n")
        (package / (Path(path).stem + EXTENSION_SUFFIXES[0])).write_bytes(b"")
    stamp = package / "_native.json"
    digests = native.source_digests(tmp_path)
    stamp.write_text(json.dumps({**native.build_key(), "sources": digests}))
    monkeypatch.setattr(native, "PACKAGE_DIR", package)
    monkeypatch.setattr(native, "STAMP", stamp)
    return tmp_path


def test_a_fresh_build_is_usable(fake_build):
    found = native.usable()
    assert found.problem is None
    assert found.label == "compiled"
    assert found.compiled == tuple(module_name(path) for path in COMPILED)


def test_a_source_edited_after_the_build_is_refused_with_the_fix(fake_build):
    (fake_build / "consumer/fold.py").write_text("# fold, edited\n")
    found = status()
    assert found.stale == ("consumer/fold.py",)
    assert found.label == "stale"
    assert found.problem is not None
    assert "consumer/fold.py changed since compiled" in found.problem
    assert "scripts/compile" in found.problem
    with pytest.raises(ConfigError, match=r"consumer/fold\.py changed since compiled"):
        native.usable()


def test_the_service_refuses_a_stale_build_before_connecting(fake_build, monkeypatch):
    from consumer.service import run_service
    from consumer.settings import load_settings

    (fake_build / "consumer/engine.py").write_text("# engine, edited\n")
    # Nothing listens on port 1: had the check come after the engine started, this would
    # fail on the broker instead.
    monkeypatch.setenv("IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    with pytest.raises(ConfigError, match=r"consumer/engine\.py changed since compiled"):
        run_service(load_settings(None))


def test_an_unreadable_stamp_is_refused(fake_build):
    native.STAMP.write_text("{not json")
    found = status()
    assert found.problem is not None
    assert "_native.json is unreadable" in found.problem


def test_a_build_without_a_stamp_is_one_pip_made(fake_build):
    native.STAMP.unlink()  # the image: sources and extensions from one `pip install`
    found = status()
    assert found.problem is None
    assert found.label == "compiled"


def test_nothing_compiled_is_the_interpreted_build(tmp_path, monkeypatch):
    (tmp_path / "consumer").mkdir()
    monkeypatch.setattr(native, "PACKAGE_DIR", tmp_path / "consumer")
    monkeypatch.setattr(native, "STAMP", tmp_path / "consumer/_native.json")
    found = status()
    assert (found.compiled, found.problem, found.label) == ((), None, "interpreted")


@pytest.mark.timeout(600)
def test_the_interpreted_build_passes_the_core_tests():
    """The sources stay the reference: the fold, ordering, state and codec tests pass with
    every compiled module loaded from its `.py` file."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.interpreted",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/unit/test_fold.py",
            "tests/unit/test_ordering_properties.py",
            "tests/unit/test_partition_work.py",
            "tests/unit/test_codec.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert f"interpreted: {len(COMPILED)} modules ran from their sources" in done.stdout
    assert " passed" in done.stdout
    assert " failed" not in done.stdout
