"""Metrics and the operator endpoints: fresh registry per test, real HTTP on loopback."""

from __future__ import annotations

import json
import time

import httpx
from prometheus_client import CollectorRegistry

from consumer.observability.health import OpsServer
from consumer.observability.librdkafka_stats import LibrdkafkaStats
from consumer.observability.metrics import Metrics

STATS = {
    "name": "imconnector-host#consumer-1",
    "type": "consumer",
    "topics": {
        "chat-events": {
            "partitions": {
                "0": {"consumer_lag_stored": 12, "consumer_lag": 15},
                "1": {"consumer_lag_stored": -1, "consumer_lag": 4},
                "2": {"consumer_lag_stored": -1, "consumer_lag": -1},
                "-1": {"consumer_lag_stored": 99},
            }
        }
    },
    "brokers": {
        "127.0.0.1:9092/1": {"nodeid": 1, "state": "UP"},
        "127.0.0.1:9093/2": {"nodeid": 2, "state": "DOWN"},
        "GroupCoordinator": {"nodeid": -1, "state": "UP"},
    },
    "cgrp": {"rebalance_cnt": 3},
}


def test_librdkafka_statistics_become_lag_broker_and_rebalance_metrics():
    metrics = Metrics(CollectorRegistry())
    metrics.kafka.update(json.dumps(STATS))
    get = metrics.registry.get_sample_value
    assert get("imconnector_kafka_consumer_lag", {"topic": "chat-events", "partition": "0"}) == 12
    assert get("imconnector_kafka_consumer_lag", {"topic": "chat-events", "partition": "1"}) == 4
    assert get("imconnector_kafka_consumer_lag", {"topic": "chat-events", "partition": "2"}) is None
    assert (
        get("imconnector_kafka_consumer_lag", {"topic": "chat-events", "partition": "-1"}) is None
    )
    up = "imconnector_kafka_broker_up"
    assert get(up, {"client": "consumer", "broker": "127.0.0.1:9092/1"}) == 1
    assert get(up, {"client": "consumer", "broker": "127.0.0.1:9093/2"}) == 0
    assert get(up, {"client": "consumer", "broker": "GroupCoordinator"}) is None
    assert get("imconnector_kafka_group_rebalances_total") == 3


def test_known_label_values_start_at_zero_and_process_metrics_exist():
    metrics = Metrics(CollectorRegistry(), version="9.9")
    get = metrics.registry.get_sample_value
    assert get("imconnector_dead_letters_total", {"error_class": "exhausted"}) == 0
    assert get("imconnector_token_refreshes_total", {"result": "failed"}) == 0
    assert get("imconnector_build_info", {"version": "9.9"}) == 1
    assert get("process_start_time_seconds") is not None


def test_probes_and_metrics_endpoint():
    metrics = Metrics(CollectorRegistry())
    ready = {"value": False}
    server = OpsServer(
        metrics, lambda: ready["value"], host="127.0.0.1", port=0, stale_after_s=5
    ).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        with httpx.Client() as client:
            assert client.get(f"{base}/readyz").status_code == 503
            ready["value"] = True
            assert client.get(f"{base}/readyz").status_code == 200
            metrics.poll_heartbeat.set(time.time())
            assert client.get(f"{base}/healthz").status_code == 200
            metrics.poll_heartbeat.set(time.time() - 60)
            stale = client.get(f"{base}/healthz")
            assert stale.status_code == 503 and "silent" in stale.text
            metrics.outcomes.labels(outcome="applied").inc(3)
            text = client.get(f"{base}/metrics").text
            assert 'imconnector_event_outcomes_total{outcome="applied"} 3.0' in text
            assert client.get(f"{base}/nope").status_code == 404
    finally:
        server.stop()


PRODUCER_STATS = {
    "name": "imconnector-host-tx#producer-2",
    "type": "producer",
    "brokers": {
        "127.0.0.1:9092/1": {
            "nodeid": 1,
            "state": "UP",
            "rtt": {"cnt": 40, "p99": 2500},  # microseconds
            "throttle": {"cnt": 40, "p99": 120},  # milliseconds
        },
    },
    "topics": {"imconnector.outcomes": {"partitions": {"0": {"consumer_lag": -1}}}},
    "eos": {"idemp_state": "Assigned", "txn_state": "InTransaction"},
}


def test_producer_statistics_give_rtt_throttle_and_transaction_state():
    metrics = Metrics(CollectorRegistry())
    metrics.kafka.update(json.dumps(STATS))
    metrics.kafka.update(json.dumps(PRODUCER_STATS))
    get = metrics.registry.get_sample_value
    broker = {"client": "producer", "broker": "127.0.0.1:9092/1"}
    assert get("imconnector_kafka_broker_rtt_p99_seconds", broker) == 0.0025
    assert get("imconnector_kafka_broker_throttle_p99_seconds", broker) == 0.12
    assert get("imconnector_kafka_broker_up", broker) == 1
    assert get("imconnector_kafka_transaction_state", {"state": "InTransaction"}) == 1
    # the consumer's keep coming alongside
    assert get("imconnector_kafka_broker_up", {**broker, "client": "consumer"}) == 1
    assert get("imconnector_kafka_consumer_lag", {"topic": "chat-events", "partition": "0"}) == 12


def test_statistics_are_never_served_stale():
    now = {"t": 1000.0}
    registry = CollectorRegistry()
    stats = LibrdkafkaStats(interval_s=15, clock=lambda: now["t"])
    registry.register(stats)
    stats.update(json.dumps(STATS))
    stats.update(json.dumps(PRODUCER_STATS))
    lag = {"topic": "chat-events", "partition": "0"}
    assert registry.get_sample_value("imconnector_kafka_consumer_lag", lag) == 12
    stats.forget("imconnector-host#consumer-1")  # closed: gone at once
    assert registry.get_sample_value("imconnector_kafka_consumer_lag", lag) is None
    state = {"state": "InTransaction"}
    now["t"] += 40  # fewer than three intervals: still current
    assert registry.get_sample_value("imconnector_kafka_transaction_state", state) == 1
    now["t"] += 10  # more than three intervals without statistics: dropped
    assert registry.get_sample_value("imconnector_kafka_transaction_state", state) is None


def test_breaker_state_is_a_labelled_state():
    metrics = Metrics(CollectorRegistry())
    get = metrics.registry.get_sample_value

    def states(portal):
        return {
            state: get("imconnector_circuit_breaker_state", {"portal": portal, "state": state})
            for state in ("closed", "half_open", "open")
        }

    metrics.breaker_state.labels(portal="p1").set(2)  # the breaker's OPEN
    metrics.breaker_state.labels(portal="p2").set(0)
    assert states("p1") == {"closed": 0, "half_open": 0, "open": 1}
    assert states("p2") == {"closed": 1, "half_open": 0, "open": 0}
    metrics.breaker_state.labels(portal="p1").set("half_open")
    assert states("p1") == {"closed": 0, "half_open": 1, "open": 0}


def test_event_latency_buckets_reach_an_hour():
    metrics = Metrics(CollectorRegistry())
    metrics.event_latency.observe(2400)  # 40 minutes behind a portal outage
    get = metrics.registry.get_sample_value
    assert get("imconnector_event_latency_seconds_bucket", {"le": "1800.0"}) == 0
    assert get("imconnector_event_latency_seconds_bucket", {"le": "3600.0"}) == 1


def test_metrics_endpoint_negotiates_openmetrics():
    metrics = Metrics(CollectorRegistry())
    server = OpsServer(metrics, lambda: True, host="127.0.0.1", port=0).start()
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        with httpx.Client() as client:
            plain = client.get(url)
            open_metrics = client.get(
                url, headers={"Accept": "application/openmetrics-text; version=1.0.0"}
            )
        assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
        assert open_metrics.text.endswith("# EOF\n")
        assert "# TYPE imconnector_event_outcomes counter" in open_metrics.text
    finally:
        server.stop()
