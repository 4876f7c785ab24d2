"""Packaging: one version source, a hashed lock the image installs, a pinned base image,
a licence file matching the declared licence, a changelog."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import yaml

import consumer

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_one_version_source_for_the_package_the_chart_and_the_image() -> None:
    version = PYPROJECT["project"]["version"]
    # the code reads it from the package metadata, it does not repeat it
    init = (ROOT / "consumer/__init__.py").read_text()
    assert not re.search(r"__version__\s*=\s*[\"']\d+\.\d+", init)
    assert consumer.__version__ == importlib.metadata.version("imconnector-consumer") == version
    chart = yaml.safe_load((ROOT / "helm/imconnector-consumer/Chart.yaml").read_text())
    assert chart["appVersion"] == version
    assert re.findall(r"^ARG VERSION=(\S+)$", DOCKERFILE, re.M) == [version]


def test_the_lock_pins_every_dependency_with_hashes() -> None:
    lock = (ROOT / "requirements.lock").read_text()
    assert "pip-compile" in lock and "--generate-hashes" in lock  # how it was made
    entries = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", lock, re.M)
    pinned = {name.lower().replace("_", "-") for name, _ in entries}
    blocks = re.split(r"^(?=[A-Za-z0-9_.-]+==)", lock, flags=re.M)[1:]
    assert len(blocks) == len(entries)
    assert all("--hash=sha256:" in block for block in blocks)
    direct = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    extra = {_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["otel"]}
    assert direct | extra <= pinned  # the image has tracing too
    assert "--find-links" not in lock  # nothing from this machine


def test_the_image_installs_the_lock_on_a_base_pinned_by_digest() -> None:
    assert "pip install --require-hashes --no-deps -r requirements.lock" in DOCKERFILE
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE, re.M)
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", base)
    assert "docker buildx imagetools inspect python:3.11-slim-bookworm" in DOCKERFILE


def test_the_licence_file_matches_the_declared_licence() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert PYPROJECT["project"]["license"] == {"text": "Apache-2.0"}
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in DOCKERFILE


def test_the_changelog_keeps_a_changelog() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog\n")
    assert "keepachangelog.com" in text
    headings = re.findall(r"^## \[([^\]]+)\]", text, re.M)
    assert headings[0] == "Unreleased"
    assert PYPROJECT["project"]["version"] in headings
    sections = set(re.findall(r"^### (\w+)$", text, re.M))
    assert sections <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}
