"""After `OPERATION_TIME_LIMIT` a method waits until the reset time the portal reported."""

from __future__ import annotations

from consumer.bitrix.limits import OperatingBudget

WALL = 1_700_000_000.0


def test_a_429_waits_until_the_last_reported_reset_of_that_method() -> None:
    budget = OperatingBudget(limit=480.0)
    # A good answer, far from the limit: only its reset time is remembered.
    budget.observe("m", {"operating": 3.5, "operating_reset_at": WALL + 240}, WALL, 100.0)
    assert budget.wait("m", 100.0) == 0.0
    budget.exceeded("m", 110.0, None)
    assert budget.wait("m", 110.0) == 230.0  # until 100 + 240, not a flat 60 s
    assert budget.wait("m", 339.0) == 1.0
    assert budget.wait("m", 340.0) == 0.0


def test_60_seconds_only_when_no_reset_time_is_known() -> None:
    budget = OperatingBudget()
    budget.exceeded("unknown", 10.0, None)
    assert budget.wait("unknown", 10.0) == 60.0
    # A reset time already passed is no better than none.
    budget.observe("stale", {"operating": 1, "operating_reset_at": WALL + 5}, WALL, 0.0)
    budget.exceeded("stale", 20.0, None)
    assert budget.wait("stale", 20.0) == 60.0


def test_reset_times_are_per_method_and_a_retry_after_wins() -> None:
    budget = OperatingBudget()
    budget.observe("a", {"operating": 1, "operating_reset_at": WALL + 300}, WALL, 0.0)
    budget.exceeded("b", 0.0, None)
    assert budget.wait("b", 0.0) == 60.0
    budget.exceeded("a", 0.0, 5.0)
    assert budget.wait("a", 0.0) == 5.0
