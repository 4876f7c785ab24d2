"""The latency the service adds: call done minus the latest record timestamp among the event
and its predecessors in its chat, so waiting for a late predecessor is not charged; the
table labels every rate by what it counts and judges the added latency at 1,000 events/s."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import pytest

from consumer.core.events import ChatEvent
from consumer.demo.workload import chat_script
from ops.bench.measure import added_latencies, latencies, ready_times
from ops.bench.naive import request_params
from ops.bench.run import Bench, parse_args
from ops.bench.table import (
    ADDED_LATENCY_RATE,
    added_latency_ok,
    build_table,
    latency_rows,
)


def _sends(chat_id: str, n: int) -> list[ChatEvent]:
    """`n` sends of one chat, sequence 1..n."""
    rng = random.Random(chat_id)
    first = chat_script(rng, "p", "conn", 1, chat_id, 1)[0]
    return [
        dataclasses.replace(
            first,
            event_id=f"{chat_id}-e{i}",
            sequence=i,
            payload=dataclasses.replace(first.payload, message_id=f"{chat_id}-m{i}"),
        )
        for i in range(1, n + 1)
    ]


def _call(index: int, event: ChatEvent, done_at: float) -> dict[str, Any]:
    """A call log record of the simulator for the one request carrying `event`."""
    method, params = request_params(event)
    return {
        "index": index,
        "method": method,
        "params": params,
        "http_status": 200,
        "wall_time": done_at,
    }


def test_an_event_is_ready_when_it_and_all_its_predecessors_have_arrived() -> None:
    one, two, three = _sends("a", 3)
    (other,) = _sends("b", 1)
    # Topic order: 2 before 1 (swapped), then a duplicate of 2 much later, then 3.
    produced = [(two, 10.0), (other, 10.5), (one, 11.0), (two, 30.0), (three, 12.0)]
    ready = ready_times(produced)
    assert ready == {
        one.event_id: 11.0,
        two.event_id: 11.0,  # arrived at 10 but had to wait for 1 (11); its copy at 30 is moot
        three.event_id: 12.0,
        other.event_id: 10.5,  # another chat's events are no predecessors
    }


def test_without_sequence_the_predecessors_are_the_earlier_records_of_the_chat() -> None:
    one, two = (dataclasses.replace(e, sequence=None) for e in _sends("a", 2))
    assert ready_times([(one, 5.0), (two, 4.0)]) == {one.event_id: 5.0, two.event_id: 5.0}


def test_waiting_for_a_late_predecessor_is_not_charged_to_the_service() -> None:
    one, two, three = _sends("a", 3)
    produced = [(two, 10.0), (one, 11.0), (three, 12.0)]
    # The service calls in chat order, each 20 ms after it could: 1 and 2 at 11.02, 3 at 12.02.
    calls = [_call(0, one, 11.02), _call(1, two, 11.02), _call(2, three, 12.02)]
    added, expected = added_latencies(produced, calls)
    raw, _ = latencies(produced, calls)
    assert expected == 3
    assert added == pytest.approx([0.02, 0.02, 0.02])
    assert raw == pytest.approx([0.02, 1.02, 0.02])  # record ts -> call done charges the wait


def test_a_duplicate_counts_from_its_first_copy() -> None:
    (one,) = _sends("a", 1)
    added, expected = added_latencies([(one, 10.0), (one, 10.5)], [_call(0, one, 10.7)])
    assert (added, expected) == (pytest.approx([0.7]), 1)


def test_a_consumer_that_breaks_chat_order_can_show_a_negative_added_latency() -> None:
    one, two = _sends("a", 2)
    # The naive consumer calls 2 as soon as it arrives, before 1 is even produced.
    calls = [_call(0, two, 10.1), _call(1, one, 11.1)]
    added, _ = added_latencies([(two, 10.0), (one, 11.0)], calls)
    assert sorted(added) == pytest.approx([-0.9, 0.1])


def test_events_that_make_no_call_have_no_sample_and_unanswered_calls_do_not_count() -> None:
    one, two = _sends("a", 2)
    lost = {**_call(0, two, 10.5), "http_status": None}  # a reset: the client got no answer
    added, expected = added_latencies([(one, 10.0), (two, 10.0)], [lost, _call(1, one, 10.2)])
    assert expected == 2
    assert added == pytest.approx([0.2])


def test_a_paced_run_produces_its_events_at_the_asked_rate_plus_their_duplicates(
    tmp_path: Path,
) -> None:
    bench = Bench(parse_args(["--quick"]), "run", tmp_path, None, None, {}, 50)  # type: ignore[arg-type]
    workload, records_per_s = bench.paced_workload(ADDED_LATENCY_RATE, 3.0)
    assert 2_500 <= workload.unique <= 3_500
    assert workload.duplicates > 0
    assert records_per_s == pytest.approx(
        ADDED_LATENCY_RATE * len(workload.records) / workload.unique
    )


def _paced(p99: float, *, complete: bool = True) -> dict[str, Any]:
    return {
        "events_per_s": 1000.0,
        "records_per_s": 1100.0,
        "events": 10_000,
        "records": 11_000,
        "done": 11_000 if complete else 9_000,
        "complete": complete,
        "matched": 9_000,
        "expected": 10_000,
        "p50": 0.5,
        "p99": 3.0,
        "max": 4.0,
        "added_p50": 0.03,
        "added_p99": p99 + 0.4,  # the whole run: a fresh process's first second included
        "warm_p50": 0.02,
        "warm_p99": p99,
        "added_max": p99 + 0.1,
    }


def test_the_added_latency_row_passes_only_under_100_ms_after_the_first_second() -> None:
    assert added_latency_ok(_paced(0.099)) is True
    assert added_latency_ok(_paced(0.100)) is False
    assert added_latency_ok(_paced(0.050, complete=False)) is False  # its waiters have no sample
    no_sample = _paced(0.05)
    del no_sample["warm_p99"]
    assert added_latency_ok(no_sample) is False  # no event matched to a call after warm-up
    assert added_latency_ok(None) is None  # the run did not happen
    judged, whole = latency_rows({"added_engine": _paced(0.0551), "added_naive": _paced(2.5)})
    assert judged == [
        "added latency p50 / p99 at 1,000 events/s, after the first 1 s",
        "p99 < 100 ms",
        "20.0 ms / 55.1 ms",
        "20.0 ms / 2,500.0 ms",
        "PASS",
    ]
    assert whole == [  # shown, not judged
        "added latency p50 / p99 at 1,000 events/s, whole run (fresh process)",
        "-",
        "30.0 ms / 455.1 ms",
        "30.0 ms / 2,900.0 ms",
        "-",
    ]
    judged, _ = latency_rows({"added_engine": _paced(0.05, complete=False)})
    assert judged[2] == "20.0 ms / 50.0 ms (unfinished: 9,000/11,000 records)"
    assert judged[4] == "FAIL"


def test_events_ready_before_the_cut_are_matched_but_give_no_sample() -> None:
    one, two = _sends("a", 2)
    calls = [_call(0, one, 10.5), _call(1, two, 11.6)]
    produced = [(one, 10.0), (two, 11.5)]
    assert added_latencies(produced, calls) == (pytest.approx([0.5, 0.1]), 2)
    assert added_latencies(produced, calls, counted_from=11.0) == (pytest.approx([0.1]), 2)


def _throughput(rate: float) -> dict[str, Any]:
    calls = {"requests": {}, "elements": {}, "statuses": {}, "total_requests": 22}
    return {
        "records": 1_100,
        "done": 1_100,
        "complete": True,
        "records_per_s": rate,
        "calls": calls,
        "internals": {"sequence_gaps": 0.0},
    }


def test_every_rate_in_the_table_says_what_it_counts(tmp_path: Path) -> None:
    bench = Bench(parse_args(["--quick"]), "run", tmp_path, None, None, {}, 50)  # type: ignore[arg-type]
    bench.results = {
        "engine_0": _throughput(6_000.0),
        "naive_0": _throughput(350.0),
        "engine_50": _throughput(4_000.0),
        "naive_50": _throughput(18.0),
        "latency_engine": _paced(1.0),
        "latency_quiet_engine": _paced(1.0),
        "added_engine": _paced(0.03),
        "added_naive": _paced(3.0),
    }
    table = build_table(bench)
    assert "records/s end to end, 0 ms API latency" in table
    assert "records/s end to end, 50 ms API latency" in table
    assert "API requests per 1,000 records" in table
    assert "added latency p50 / p99 at 1,000 events/s" in table
    for line in table.splitlines():
        # "events/s" only where the paced runs produce distinct events at that rate.
        assert "events/s" not in line or "latency" in line, line
