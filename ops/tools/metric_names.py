"""Checks that dashboards and alert rules only query metrics the service really exports.

The names the service defines come from `consumer/observability/metrics.py` itself (a `Metrics` on a
fresh registry, expanded to the sample names Prometheus stores: `_total`, `_bucket`, ...).
Expressions are read with a small PromQL tokenizer that also rejects unknown functions,
so a typo in either a metric or a function name is caught. Used by
tests/unit/ops/test_dashboards.py and tests/integration/test_alerts.py; run it directly to
check the committed files:

    .venv/bin/python ops/tools/metric_names.py
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "ops" / "dashboards" / "imconnector-consumer.json"
RULES = REPO / "ops" / "alerts" / "imconnector-consumer.rules.yaml"

# Metrics every Prometheus target or Python client has, besides the service's own.
STANDARD_PREFIXES = ("process_", "python_")
STANDARD_NAMES = frozenset({"up"})

AGGREGATORS = frozenset(
    {
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    }
)  # fmt: skip
FUNCTIONS = frozenset(
    {
        "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp",
        "clamp_max", "clamp_min", "count_over_time", "day_of_month", "day_of_week",
        "day_of_year", "days_in_month", "delta", "deriv", "double_exponential_smoothing",
        "exp", "floor", "histogram_avg", "histogram_count", "histogram_fraction",
        "histogram_quantile", "histogram_stddev", "histogram_stdvar", "histogram_sum",
        "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace",
        "last_over_time", "ln", "log10", "log2", "mad_over_time", "max_over_time",
        "min_over_time", "minute", "month", "predict_linear", "present_over_time",
        "quantile_over_time", "rate", "resets", "round", "scalar", "sgn", "sort",
        "sort_by_label", "sort_by_label_desc", "sort_desc", "sqrt", "stddev_over_time",
        "stdvar_over_time", "sum_over_time", "time", "timestamp", "vector", "year", "acos",
        "acosh", "asin", "asinh", "atan", "atanh", "cos", "cosh", "deg", "pi", "rad", "sin",
        "sinh", "tan", "tanh",
    }
)  # fmt: skip
KEYWORDS = frozenset(
    {
        "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
        "unless", "offset", "atan2", "inf", "nan", "start", "end",
    }
)  # fmt: skip

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-z]+", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![A-Za-z0-9_:.])(0x[0-9a-f]+|\d+(\.\d*)?(e[+-]?\d+)?)", re.IGNORECASE)
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?")
_LABEL_VALUES = re.compile(
    r"^\s*label_values\(\s*(?:([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?\s*,)?"
)


def defined_metric_names() -> frozenset[str]:
    """Every sample name the service's `Metrics` exposes (counters as `_total`, ...)."""
    from prometheus_client import CollectorRegistry

    from consumer.observability.metrics import Metrics

    registry = CollectorRegistry()
    Metrics(registry)
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
        "summary": ("", "_count", "_sum", "_created"),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return frozenset(names)


def is_standard(name: str) -> bool:
    """True for metrics every target has (`up`) or the Python client's runtime metrics."""
    return name in STANDARD_NAMES or name.startswith(STANDARD_PREFIXES)


def parse(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, unknown function names) referenced by a PromQL expression."""
    text = _STRING.sub(" ", expr)
    text = _VARIABLE.sub(" ", text)
    previous = None
    while previous != text:  # nested subqueries/matchers: strip innermost first
        previous = text
        text = _MATCHERS.sub(" ", text)
        text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    metrics: set[str] = set()
    unknown: set[str] = set()
    for match in _IDENT.finditer(text):
        word = match.group(0).rstrip("( \t\n")
        is_call = match.group(1) is not None
        if is_call:
            if word not in FUNCTIONS and word not in AGGREGATORS:
                unknown.add(word)
        elif word.lower() in KEYWORDS or word in AGGREGATORS:
            continue
        else:
            metrics.add(word)
    return metrics, unknown


def label_values_metric(query: str) -> str | None:
    """The metric of a Grafana `label_values(metric{...}, label)` variable query."""
    match = _LABEL_VALUES.match(query)
    if not match:
        raise ValueError(f"not a label_values() query: {query!r}")
    return match.group(1)


def problems(expr: str, defined: frozenset[str]) -> list[str]:
    """Why `expr` is wrong: unknown metrics or functions (empty when fine)."""
    metrics, unknown_functions = parse(expr)
    found = [f"unknown function {name}()" for name in sorted(unknown_functions)]
    found += [
        f"metric {name} is not defined in consumer/observability/metrics.py"
        for name in sorted(metrics)
        if name not in defined and not is_standard(name)
    ]
    return found


def dashboard_expressions(dashboard: dict[str, object]) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel, rows included."""
    out: list[tuple[str, str]] = []

    def walk(panels: object) -> None:
        for panel in panels if isinstance(panels, list) else []:
            for target in panel.get("targets", []):
                out.append((panel.get("title", "?"), target.get("expr", "")))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    return out


def rule_expressions(rules: dict[str, object]) -> list[tuple[str, str]]:
    """(alert or record name, expr) for every rule of a Prometheus rule file."""
    out: list[tuple[str, str]] = []
    for group in rules.get("groups", []):  # type: ignore[union-attr]
        for rule in group.get("rules", []):
            out.append((rule.get("alert") or rule.get("record"), rule["expr"]))
    return out


def main() -> int:
    """Check the committed dashboard and rules; print each problem; exit 1 if any."""
    import yaml

    defined = defined_metric_names()
    items = [
        (f"{DASHBOARD.name}: {title}", expr)
        for title, expr in dashboard_expressions(json.loads(DASHBOARD.read_text()))
    ]
    items += [
        (f"{RULES.name}: {name}", expr)
        for name, expr in rule_expressions(yaml.safe_load(RULES.read_text()))
    ]
    bad = 0
    for where, expr in items:
        for problem in problems(expr, defined):
            print(f"{where}: {problem}")
            bad += 1
    print(f"{len(items)} expressions checked, {bad} problems")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
