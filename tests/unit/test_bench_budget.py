"""The benchmark's time budget lets a service at the target rate finish its workload."""

from __future__ import annotations

import pytest

from ops.bench.run import DUPLICATE_RATE, TARGET_EPS, parse_args


@pytest.mark.parametrize("events", [None, 100_000, 300_000, 1_000_000])
def test_a_run_at_the_target_rate_finishes_within_the_default_budget(events: int | None) -> None:
    args = parse_args([] if events is None else ["--events", str(events)])
    records = args.events * (1 + DUPLICATE_RATE)
    assert args.engine_budget >= 60.0
    assert args.engine_budget * TARGET_EPS >= records, (args.engine_budget, records)


def test_an_explicit_budget_is_kept() -> None:
    assert parse_args(["--engine-budget", "45"]).engine_budget == 45.0
