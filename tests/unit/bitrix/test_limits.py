"""A portal's limits without sleeping: the leaky bucket, the per-method operating budget
(with its pause before the portal refuses) and the per-portal circuit breaker."""

from __future__ import annotations

import pytest

from consumer.bitrix.limits import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    CircuitBreaker,
    OperatingBudget,
    PortalRateLimiter,
)

T0 = 1_000.0  # a monotonic clock reading; the bucket treats 0.0 as "never used"
SEND = "imconnector.send.messages"
UPDATE = "imconnector.update.messages"


# -- leaky bucket --------------------------------------------------------------------------
def test_the_burst_goes_at_once_then_requests_wait_for_the_drain() -> None:
    bucket = PortalRateLimiter(drain=2.0, burst=50)
    assert [bucket.reserve(T0) for _ in range(50)] == [0.0] * 50
    assert bucket.reserve(T0) == pytest.approx(0.5)  # one over: half a second at 2/s
    assert bucket.reserve(T0) == pytest.approx(1.0)  # reserved slots queue up


def test_the_bucket_drains_with_time() -> None:
    bucket = PortalRateLimiter(drain=2.0, burst=50)
    for _ in range(50):
        bucket.reserve(T0)
    assert bucket.reserve(T0 + 5.0) == 0.0  # 10 drained, 41 in the bucket
    assert bucket.level == pytest.approx(41.0)
    assert bucket.reserve(T0 + 1_000.0) == 0.0
    assert bucket.level == pytest.approx(1.0)  # never below empty


def test_a_replica_uses_90_percent_of_its_share_of_burst_and_drain() -> None:
    """Several replicas keep buckets of their own against the portal's one: a shared
    replica keeps a tenth of its part free (SHARED_HEADROOM)."""
    bucket = PortalRateLimiter(drain=2.0, burst=50, share=0.5)
    assert [bucket.reserve(T0) for _ in range(22)] == [0.0] * 22  # 50 * 0.5 * 0.9 = 22.5
    assert bucket.reserve(T0) == pytest.approx(0.5 / 0.9)  # 0.5 over at 0.9/s


def test_a_tiny_share_still_lets_one_request_through() -> None:
    bucket = PortalRateLimiter(drain=2.0, burst=50, share=0.01)
    assert bucket.reserve(T0) == 0.0
    assert bucket.reserve(T0) == pytest.approx(1 / (2.0 * 0.01 * 0.9))  # 1 over at 0.018/s


def test_query_limit_exceeded_fills_the_bucket_and_backs_off() -> None:
    bucket = PortalRateLimiter(drain=2.0, burst=50)
    assert bucket.reserve(T0) == 0.0
    bucket.saturated(T0)  # the portal counted more than we did (other clients)
    assert bucket.backoff == pytest.approx(0.8)
    assert bucket.reserve(T0) == pytest.approx(1 / (2.0 * 0.8))  # full, draining at 1.6/s
    for _ in range(10):
        bucket.saturated(T0)
    assert bucket.backoff == pytest.approx(0.25)  # never below a quarter
    for _ in range(200):
        bucket.went_through()
    assert bucket.backoff == 1.0  # won back request by request


# -- operating budget -----------------------------------------------------------------------
def _time_block(operating: float, reset_in: float, wall: float = 1.7e9) -> dict[str, float]:
    return {"operating": operating, "operating_reset_at": wall + reset_in}


def test_a_method_pauses_before_the_portal_refuses_it() -> None:
    budget = OperatingBudget(limit=480.0, headroom=0.9)
    wall = 1.7e9
    budget.observe(SEND, _time_block(431.9, 30.0, wall), wall, T0)
    assert budget.wait(SEND, T0) == 0.0  # under 90 % of 480 s
    budget.observe(SEND, _time_block(432.0, 30.0, wall), wall, T0)
    assert budget.wait(SEND, T0) == pytest.approx(30.0)  # until operating_reset_at
    assert budget.wait(SEND, T0 + 20.0) == pytest.approx(10.0)
    assert budget.wait(UPDATE, T0) == 0.0  # the budget is per method
    assert budget.wait(SEND, T0 + 30.0) == 0.0
    assert SEND not in budget.paused_until  # an ended pause is forgotten


def test_a_reset_time_in_the_past_does_not_pause() -> None:
    budget = OperatingBudget()
    budget.observe(SEND, _time_block(470.0, -5.0), 1.7e9, T0)
    assert budget.wait(SEND, T0) == 0.0


@pytest.mark.parametrize(
    "block",
    [
        None,
        "operating=470",
        {},
        {"operating": 470.0},
        {"operating_reset_at": 1.7e9 + 30},
        {"operating": "470", "operating_reset_at": 1.7e9 + 30},
    ],
)
def test_a_missing_or_malformed_time_block_is_ignored(block: object) -> None:
    budget = OperatingBudget()
    budget.observe(SEND, block, 1.7e9, T0)
    assert budget.wait(SEND, T0) == 0.0


def test_operation_time_limit_pauses_for_retry_after_or_a_minute() -> None:
    budget = OperatingBudget()
    budget.exceeded(SEND, T0, 12.0)
    assert budget.wait(SEND, T0) == pytest.approx(12.0)
    budget.exceeded(UPDATE, T0, None)
    assert budget.wait(UPDATE, T0) == pytest.approx(60.0)


def test_a_shorter_refusal_does_not_cut_a_longer_pause() -> None:
    budget = OperatingBudget()
    budget.exceeded(SEND, T0, 40.0)
    budget.exceeded(SEND, T0 + 1.0, 5.0)
    assert budget.wait(SEND, T0 + 1.0) == pytest.approx(39.0)


# -- circuit breaker ------------------------------------------------------------------------
def _opened(now: float = T0) -> CircuitBreaker:
    breaker = CircuitBreaker(window=20, min_calls=10, failure_ratio=0.5, cooldown=2.0)
    for ok in [True] * 5 + [False] * 5:
        breaker.record(ok, now)
    assert breaker.state == OPEN
    return breaker


def test_the_breaker_opens_on_half_failures_once_enough_calls_were_seen() -> None:
    breaker = CircuitBreaker(window=20, min_calls=10, failure_ratio=0.5)
    for _ in range(9):
        breaker.record(False, T0)
    assert breaker.state == CLOSED  # 9 failures, but fewer than min_calls calls
    assert breaker.wait(T0) == 0.0
    breaker.record(True, T0)
    assert breaker.state == OPEN  # 9 of 10 failed


def test_a_mostly_healthy_portal_stays_closed() -> None:
    breaker = CircuitBreaker(window=20, min_calls=10, failure_ratio=0.5)
    for ok in [True, True, False] * 10:
        breaker.record(ok, T0)
    assert breaker.state == CLOSED


def test_only_the_last_window_of_calls_counts() -> None:
    breaker = CircuitBreaker(window=20, min_calls=10, failure_ratio=0.5)
    for _ in range(20):
        breaker.record(True, T0)
    for _ in range(9):
        breaker.record(False, T0)
    assert breaker.state == CLOSED  # window: 11 successes, 9 failures
    breaker.record(False, T0)
    assert breaker.state == OPEN  # 10 of the last 20 (10 of all 30 would not open it)


def test_an_open_breaker_holds_calls_for_the_cooldown_then_lets_one_probe() -> None:
    breaker = _opened()
    assert breaker.wait(T0) == pytest.approx(2.0)
    assert breaker.wait(T0 + 1.5) == pytest.approx(0.5)
    assert breaker.wait(T0 + 2.0) == 0.0  # the probe goes
    assert breaker.state == HALF_OPEN
    assert breaker.wait(T0 + 2.1) == pytest.approx(1.0)  # the others wait for its answer


def test_a_successful_probe_closes_the_breaker_and_forgets_the_failures() -> None:
    breaker = _opened()
    breaker.wait(T0 + 2.0)
    breaker.record(True, T0 + 2.2)
    assert breaker.state == CLOSED
    assert not breaker.results
    assert breaker.wait(T0 + 2.2) == 0.0
    for _ in range(9):
        breaker.record(False, T0 + 3.0)
    assert breaker.state == CLOSED  # counting starts over


def test_a_failed_probe_reopens_with_a_doubled_cooldown_up_to_the_cap() -> None:
    breaker = _opened()
    breaker.max_cooldown = 6.0
    now = T0
    cooldowns = []
    for _ in range(3):
        now += breaker.current_cooldown
        assert breaker.wait(now) == 0.0  # the probe
        breaker.record(False, now)
        assert breaker.state == OPEN
        cooldowns.append(breaker.current_cooldown)
    assert cooldowns == [4.0, 6.0, 6.0]
    assert breaker.wait(now) == pytest.approx(6.0)


def test_a_probe_answered_by_throttling_or_an_auth_error_closes_the_breaker() -> None:
    breaker = _opened()
    breaker.wait(T0 + 2.0)
    breaker.answered(T0 + 2.1)  # QUERY_LIMIT_EXCEEDED, expired_token...: the portal is there
    assert breaker.state == CLOSED
    assert breaker.wait(T0 + 2.1) == 0.0


def test_answered_outside_a_probe_changes_nothing() -> None:
    closed = CircuitBreaker()
    closed.answered(T0)
    assert closed.state == CLOSED and not closed.results  # not counted as a success
    opened = _opened()
    opened.answered(T0 + 0.5)
    assert opened.state == OPEN
    assert opened.wait(T0 + 0.5) == pytest.approx(1.5)


def test_a_probe_that_never_reports_lets_another_go_after_the_probe_timeout() -> None:
    breaker = _opened()
    breaker.probe_timeout = 30.0
    assert breaker.wait(T0 + 2.0) == 0.0  # the probe goes, and is cancelled silently
    assert breaker.wait(T0 + 31.9) == pytest.approx(1.0)
    assert breaker.wait(T0 + 32.0) == 0.0  # a new probe
    assert breaker.wait(T0 + 32.1) == pytest.approx(1.0)  # one at a time again
    breaker.record(True, T0 + 32.5)
    assert breaker.state == CLOSED
