"""The simulator's leaky bucket (503) and per-method operating budget (429), stepped by clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from simulator_fixtures import CONNECTOR, LINE, message, running_simulator

from consumer.simulator import LeakyBucket, OperatingBudget

STATUS = {"CONNECTOR": CONNECTOR, "LINE": LINE}


def test_leaky_bucket_admits_the_burst_then_refuses_until_it_drains() -> None:
    with running_simulator(
        rate_limit_enabled=True, rate_limit_burst=50, rate_limit_drain=2.0
    ) as sim:
        statuses = [sim.call("imconnector.status", STATUS).status_code for _ in range(50)]
        assert statuses == [200] * 50
        refused = sim.send(message("over-the-limit"))
        assert refused.status_code == 503
        assert refused.json() == {
            "error": "QUERY_LIMIT_EXCEEDED",
            "error_description": refused.json()["error_description"],
        }
        assert sim.state()["chats"] == {}  # the refused request was not applied
        (last,) = sim.calls(since=50)
        assert (last["http_status"], last["error"], last["applied"]) == (
            503,
            "QUERY_LIMIT_EXCEEDED",
            False,
        )
        sim.clock.advance(1.0)  # drains 2 requests
        assert sim.call("imconnector.status", STATUS).status_code == 200
        assert sim.send(message("after-drain")).status_code == 200
        assert sim.call("imconnector.status", STATUS).status_code == 503
        sim.clock.advance(25.0)  # fully drained: a whole burst again
        statuses = [sim.call("imconnector.status", STATUS).status_code for _ in range(50)]
        assert statuses == [200] * 50


def test_refused_requests_do_not_fill_the_bucket() -> None:
    with running_simulator(
        rate_limit_enabled=True, rate_limit_burst=3, rate_limit_drain=1.0
    ) as sim:
        codes = [sim.call("imconnector.status", STATUS).status_code for _ in range(10)]
        assert codes == [200, 200, 200] + [503] * 7
        sim.clock.advance(1.0)
        assert sim.call("imconnector.status", STATUS).status_code == 200


def test_rate_limit_can_be_changed_at_runtime() -> None:
    with running_simulator(rate_limit_enabled=True, rate_limit_burst=1) as sim:
        assert sim.call("imconnector.status", STATUS).status_code == 200
        assert sim.call("imconnector.status", STATUS).status_code == 503
        limits = sim.http.post("/_sim/limits", json={"rate_limit_burst": 100}).json()
        assert limits["rate_limit_burst"] == 100
        assert sim.call("imconnector.status", STATUS).status_code == 200
        bad = sim.http.post("/_sim/limits", json={"no_such_limit": 1})
        assert bad.status_code == 400


def test_operating_budget_blocks_the_method_after_the_call_that_crosses_it() -> None:
    with running_simulator(operating_limit=1.0, operating_cost_per_element=0.4) as sim:
        start = sim.clock()
        readings = []
        for index in range(3):
            response = sim.send(message(f"m{index}"))
            assert response.status_code == 200
            readings.append(response.json()["time"]["operating"])
        # 0.8 < 1.0 before the third call, so it runs and pushes the sum to 1.2.
        assert readings == pytest.approx([0.4, 0.8, 1.2])
        blocked = sim.send(message("m3"))
        assert blocked.status_code == 429
        assert blocked.json()["error"] == "OPERATION_TIME_LIMIT"
        assert set(blocked.json()) == {"error", "error_description"}
        (chat,) = sim.state()["chats"].values()
        assert len(chat["messages"]) == 3
        # Other methods keep working.
        status = sim.call("imconnector.status", STATUS)
        assert status.status_code == 200
        assert status.json()["time"]["operating"] == pytest.approx(0.4)
        # The oldest bucket expires 10 minutes after it started.
        last_ok = sim.calls(method="imconnector.send.messages")[2]
        assert last_ok["applied"] is True
        sim.clock.advance(599)
        assert sim.send(message("still-blocked")).status_code == 429
        sim.clock.advance(1)
        again = sim.send(message("m4"))
        assert again.status_code == 200
        assert again.json()["time"]["operating_reset_at"] == int(start + 600 + 600)


def test_operating_cost_is_charged_per_message_element() -> None:
    with running_simulator(operating_limit=100.0, operating_cost_per_element=0.25) as sim:
        response = sim.send(*(message(f"m{i}") for i in range(4)))
        assert response.json()["time"]["operating"] == pytest.approx(1.0)
        reset_at = response.json()["time"]["operating_reset_at"]
        sim.clock.advance(30)  # same one-minute bucket
        second = sim.send(message("m9"))
        assert second.json()["time"]["operating"] == pytest.approx(1.25)
        assert second.json()["time"]["operating_reset_at"] == reset_at


def test_operating_budget_never_trips_without_a_cost() -> None:
    with running_simulator(operating_limit=0.5) as sim:
        codes = {sim.send(message(f"m{i}")).status_code for i in range(20)}
        assert codes == {200}


def test_leaky_bucket_unit_behaviour() -> None:
    bucket = LeakyBucket(drain=2.0, burst=2)
    assert bucket.try_take(0.0) and bucket.try_take(0.0)
    assert not bucket.try_take(0.0)
    assert bucket.try_take(0.5)  # 0.5 s drained one request
    assert bucket.level(10.0) == 0.0
    off = LeakyBucket(drain=0.0, burst=1, enabled=False)
    assert all(off.try_take(0.0) for _ in range(5))


def test_operating_budget_rolls_ten_one_minute_buckets() -> None:
    budget = OperatingBudget(limit=10.0)
    budget.spend("m", 4.0, now=0.0)
    budget.spend("m", 4.0, now=59.0)  # same bucket (started at 0)
    budget.spend("m", 4.0, now=61.0)  # new bucket
    assert not budget.allows("m", 100.0)
    assert budget.allows("other", 100.0)
    assert budget.reading("m", 100.0).reset_at == 600.0
    assert budget.allows("m", 600.0)  # first bucket (8 s) expired, 4 s left
    assert budget.reading("m", 600.0).operating == pytest.approx(4.0)


@given(
    gaps=st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=200),
    burst=st.integers(min_value=1, max_value=20),
    drain=st.floats(min_value=0.1, max_value=10.0),
)
def test_leaky_bucket_never_admits_more_than_burst_plus_drain(
    gaps: list[float], burst: int, drain: float
) -> None:
    bucket = LeakyBucket(drain=drain, burst=burst)
    now, admitted = 0.0, []
    for gap in gaps:
        now += gap
        if bucket.try_take(now):
            admitted.append(now)
    # Over any span the bucket admits at most its burst plus what drained meanwhile.
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            assert j - i + 1 <= burst + (admitted[j] - start) * drain + 1e-9
