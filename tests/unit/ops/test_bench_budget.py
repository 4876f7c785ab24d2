"""The benchmark's time budget lets a service at the target rate finish its workload, and
its warm-up run stays out of the measured results."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.bench.run import Bench, parse_args
from ops.bench.table import TARGET_RECORDS_PER_S, build_details, build_table
from ops.bench.workload import DUPLICATE_RATE, make_workload


@pytest.mark.parametrize("events", [None, 100_000, 300_000, 1_000_000])
def test_a_run_at_the_target_rate_finishes_within_the_default_budget(events: int | None) -> None:
    args = parse_args([] if events is None else ["--events", str(events)])
    records = args.events * (1 + DUPLICATE_RATE)
    assert args.engine_budget >= 60.0
    assert args.engine_budget * TARGET_RECORDS_PER_S >= records, (args.engine_budget, records)


def test_an_explicit_budget_is_kept() -> None:
    assert parse_args(["--engine-budget", "45"]).engine_budget == 45.0


def test_a_warm_up_runs_by_default_and_can_be_skipped() -> None:
    assert parse_args([]).warmup_events == 30_000
    assert parse_args(["--quick"]).warmup_events == 1_000
    assert parse_args(["--warmup-events", "0"]).warmup_events == 0


def test_the_warm_up_is_reported_apart_from_the_measured_runs(tmp_path: Path) -> None:
    args = parse_args(["--quick"])
    bench = Bench(args, "run", tmp_path, None, None, {}, 50)  # type: ignore[arg-type]
    bench.warmup = {"done": 1_100, "records": 1_100, "records_per_s": 2_000.0}
    details = build_details(bench, make_workload(100, 10, 1))
    assert (
        "warm-up before the measured runs (not in the table): 1,100/1,100 records of "
        "1,000 events at 0 ms, 2,000 records/s"
    ) in details
    assert "warm-up" not in build_table(bench)
