"""The benchmark's naive consumer sends what the service sends, and latency matching is exact."""

from __future__ import annotations

import random

from consumer.core.mapping import BATCHABLE, RENAME, element_for
from consumer.demo.workload import chat_script, interleave
from ops.bench.measure import burst_ratio, call_summary, identities, latencies, percentile
from ops.bench.naive import request_params
from ops.bench.workload import make_workload


def _events(n_chats: int = 20, per_chat: int = 15) -> list:
    rng = random.Random(5)
    scripts = [chat_script(rng, "p", "conn", 3, f"c{i}", per_chat) for i in range(n_chats)]
    return interleave(scripts, rng, duplicate_rate=0.1, reorder_rate=0.1)


def test_one_request_per_event_with_the_services_element() -> None:
    for event in _events():
        method, params = request_params(event)
        expected_method, element = element_for(event, event.user.id if event.user else None)
        assert method == expected_method
        assert params["CONNECTOR"] == "conn" and params["LINE"] == 3
        if method in BATCHABLE:
            assert params["MESSAGES"] == [element]
        else:
            assert method == RENAME
            assert {k: params[k] for k in element} == element
            assert "MESSAGES" not in params


def test_every_kind_is_covered() -> None:
    kinds = {event.kind for event in _events(50, 20)}
    assert kinds == {
        "MessageSent",
        "MessageEdited",
        "MessageDeleted",
        "ChatRenamed",
        "DeliveryConfirmed",
        "ReadConfirmed",
    }


def test_latency_matches_elements_of_batched_and_single_calls() -> None:
    events = [e for e in _events(5, 6)]
    unique = list({e.event_id: e for e in events}.values())
    stamps = [100.0 + i for i in range(len(events))]
    first_stamp = {}
    for event, stamp in zip(events, stamps, strict=True):
        first_stamp.setdefault(event.event_id, stamp)
    # The "portal" answers every event 0.5 s after its first copy was produced, batching
    # all MESSAGES-method elements of one method into one call.
    calls = []
    by_method: dict[str, list] = {}
    for event in unique:
        method, params = request_params(event)
        if method in BATCHABLE:
            by_method.setdefault(method, []).append((event, params["MESSAGES"][0]))
        else:
            calls.append(
                {
                    "index": len(calls),
                    "method": method,
                    "params": params,
                    "http_status": 200,
                    "wall_time": first_stamp[event.event_id] + 0.5,
                }
            )
    for method, items in by_method.items():
        for event, element in items:
            calls.append(
                {
                    "index": len(calls),
                    "method": method,
                    "params": {"MESSAGES": [element]},
                    "http_status": 200,
                    "wall_time": first_stamp[event.event_id] + 0.5,
                }
            )
    values, expected = latencies(list(zip(events, stamps, strict=True)), calls)
    assert expected == len(unique)
    assert len(values) == len(unique)
    assert all(abs(v - 0.5) < 1e-9 for v in values)


def test_identities_of_a_batched_call_are_per_element() -> None:
    event = next(e for e in _events() if e.kind == "MessageSent")
    method, params = request_params(event)
    twice = {"MESSAGES": params["MESSAGES"] * 2}
    assert len(list(identities(method, twice))) == 2


def test_burst_ratio_and_summary() -> None:
    calls = [
        {
            "method": "imconnector.send.messages",
            "http_status": 200,
            "params": {"MESSAGES": [{}] * n},
        }
        for n in (50, 50, 7)
    ]
    calls.append({"method": RENAME, "http_status": 200, "params": {"CHAT_ID": "x"}})
    summary = call_summary(calls)
    assert summary["total_requests"] == 4
    assert summary["elements"]["imconnector.send.messages"] == 107
    ratio, requests, bound = burst_ratio(summary, 50, ["imconnector.send.messages"])
    assert (requests, bound) == (3, 3) and ratio == 1.0


def test_workload_is_reproducible_and_has_duplicates() -> None:
    one = make_workload(2000, 100, seed=1)
    two = make_workload(2000, 100, seed=1)
    assert one.records == two.records
    assert one.duplicates > 0.05 * one.unique
    assert 1500 <= one.unique <= 2500


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0
