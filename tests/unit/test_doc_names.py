"""The docs name only settings and metrics that exist.

A runbook that tells an operator to set `IMCONNECTOR_HTTP__NETWORK_BACKEND` after the setting
was removed sends them into a start-up failure (unknown names exit 2) in the middle of an
incident; a metric that no longer exists makes a query that returns nothing. So every
`IMCONNECTOR_*` name in the README, `docs/`, the runbooks and the chart's README must load
as a setting (through the service's own name check, `consumer.settings_names`), and every
`imconnector_*` metric they name must be one the service exports.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from consumer.bitrix.element_errors import KNOWN_TEXTS
from consumer.settings import Settings
from consumer.settings_names import ENV_PREFIX, unknown_names
from consumer.simulator import errors as simulator_errors

REPO = Path(__file__).resolve().parents[2]
# Decision records are history: they may name what a decision removed.
RECORDS = REPO / "docs" / "adr"
DOCS = sorted(
    path
    for path in [
        REPO / "README.md",
        *(REPO / "docs").rglob("*.md"),
        *(REPO / "ops").rglob("*.md"),
        REPO / "helm" / "imconnector-consumer" / "README.md",
    ]
    if RECORDS not in path.parents
)
SETTING = re.compile(r"IMCONNECTOR_[A-Z0-9_<>]+")
METRIC = re.compile(r"\bimconnector_[a-z0-9_]+")
PLACEHOLDER = re.compile(r"<[A-Z_]+>")
# Bitrix24's own error codes share the prefix. Those the client maps and the simulator
# raises are read from their modules; these are the ones the docs cite besides.
BITRIX_CODES_CITED = frozenset({"IMCONNECTOR_NOT_SPECIFIED_CORRECT_COMMAND"})
# The misspelling the README shows to explain the did-you-mean.
EXAMPLE_TYPOS = frozenset({"IMCONNECTOR_ENGINE__BATCHSIZE"})


def bitrix_codes() -> frozenset[str]:
    """Every Bitrix24 error code with the `IMCONNECTOR_` prefix the project knows of."""
    simulator = {
        value
        for value in vars(simulator_errors).values()
        if isinstance(value, str) and value.startswith(ENV_PREFIX)
    }
    return frozenset(KNOWN_TEXTS) | simulator | BITRIX_CODES_CITED


def setting_name(name: str) -> str:
    """A documented name as a variable: a placeholder for a portal key becomes one (`P1`);
    a trailing placeholder or `__` (`PORTALS__<KEY>__<FIELD>`, `ENGINE__…`) stands for any
    field under its prefix, so the prefix is what must exist."""
    parts = name.split("__")
    kept: list[str] = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if last and (not part or PLACEHOLDER.fullmatch(part)):
            break
        kept.append(PLACEHOLDER.sub("P1", part))
    return "__".join(kept)


def documented_settings() -> list[tuple[str, str]]:
    """(file, name) for every `IMCONNECTOR_*` setting name the docs mention."""
    skip = bitrix_codes() | EXAMPLE_TYPOS
    found = []
    for path in DOCS:
        for name in sorted(set(SETTING.findall(path.read_text()))):
            if name not in skip:
                found.append((str(path.relative_to(REPO)), name))
    return found


def readme_table_settings() -> list[str]:
    """The first column of the README's configuration table, with the prefix restored.

    A cell may abbreviate after its first name: `KAFKA__SECURITY_PROTOCOL`, `__SASL_MECHANISM`
    (same group) or `SCHEMA_REGISTRY_USERNAME`/`_PASSWORD` (same stem)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names = []
    for row in section.splitlines():
        if not row.startswith("| `"):
            continue
        first = None
        for token in re.findall(r"`([A-Z0-9_<>]+)`", row.split(" | ", 1)[0]):
            if first is None:
                first, name = token, token
            elif token.startswith("__"):
                name = first.rsplit("__", 1)[0] + token
            elif token.startswith("_"):
                name = first.rsplit("_", 1)[0] + token
            else:
                name = token
            names.append(ENV_PREFIX + name)
    return names


def load_metric_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "metric_names", REPO / "ops" / "tools" / "metric_names.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("metric_names", module)
    spec.loader.exec_module(module)
    return module


def test_the_docs_are_scanned() -> None:
    assert len(documented_settings()) > 30
    assert len(readme_table_settings()) > 30


@pytest.mark.parametrize(("doc", "name"), documented_settings())
def test_each_setting_the_docs_name_exists(doc: str, name: str) -> None:
    assert unknown_names(Settings, [setting_name(name)]) == [], f"{doc} names {name}"


@pytest.mark.parametrize("name", readme_table_settings())
def test_each_setting_in_the_readme_table_exists(name: str) -> None:
    assert unknown_names(Settings, [setting_name(name)]) == []


def test_each_metric_the_docs_name_is_exported() -> None:
    samples = load_metric_tool().defined_metric_names()
    histograms = {name.removesuffix("_bucket") for name in samples if name.endswith("_bucket")}
    defined = samples | histograms
    missing = {
        (str(path.relative_to(REPO)), name)
        for path in DOCS
        for name in METRIC.findall(path.read_text())
        if name not in defined
    }
    assert sorted(missing) == []


def test_the_breaker_state_is_matched_by_name_not_by_number() -> None:
    """The breaker gauge is a state set (`state="open"` is 1); the number 2 for open was the
    shape of releases up to 0.1.0, which only the alert rule still accepts during a rollout."""
    by_number = re.compile(r"circuit_breaker_state(\{[^}]*\})?\s*==\s*2\b|\(state 2\)")
    assert [str(p.relative_to(REPO)) for p in DOCS if by_number.search(p.read_text())] == []


@pytest.mark.parametrize(
    "name",
    [
        "IMCONNECTOR_HTTP__NETWORK_BACKEND",
        "IMCONNECTOR_ENGINE__DISPATCH",
        "IMCONNECTOR_PORTALS__<KEY>__RATE_SHAER",
        "IMCONNECTOR_ENGIN__…",
    ],
)
def test_a_name_that_is_no_setting_is_caught(name: str) -> None:
    match = SETTING.search(name)
    assert match is not None
    assert unknown_names(Settings, [setting_name(match.group())]) != []
