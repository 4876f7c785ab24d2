"""The dispatcher against the simulator: every call applied once and in order per chat, and
one request counted per request the portal saw."""

from __future__ import annotations

from collections import Counter

import pytest

from consumer.codec import ChatEventEncoder
from tests.integration.harness import (
    EngineThread,
    applied_call_list,
    expected_calls,
    line_simulator,
    make_settings,
    produce,
    shuffled_workload,
    wait_until,
)

pytestmark = pytest.mark.kafka


@pytest.fixture
def sim():
    with line_simulator(latency_ms=15) as server:
        yield server


def test_every_call_is_applied_once_in_order_and_each_request_counted(
    kafka_bootstrap, topic_factory, unique, sim
):
    topic = topic_factory(3)
    settings = make_settings(kafka_bootstrap, topic, unique("g"), sim)
    scripts, events = shuffled_workload(5, 40, 3, 10)
    with EngineThread(settings) as running:
        produce(kafka_bootstrap, topic, events, [ChatEventEncoder("single-object")])
        wait_until(
            lambda: running.outcomes_total() >= len(events), 120, "every record to reach an outcome"
        )
        wait_until(lambda: not running.engine.dispatcher.in_flight, 30, "no batch in flight")
        registry = running.metrics.registry
        requests = Counter(r.method for r in sim.portal.call_records() if r.batch is None)
        counted = {
            method: registry.get_sample_value(
                "imconnector_api_requests_total", {"method": method, "status_class": "2xx"}
            )
            for method in requests
        }
        in_flight = registry.get_sample_value("imconnector_calls_in_flight")
    seen = applied_call_list(sim)
    for script in scripts:
        assert seen[script[0].chat_id] == expected_calls(script), script[0].chat_id
    assert counted == dict(requests.items())
    assert in_flight == 0
