"""Metrics and the operator endpoints: fresh registry per test, real HTTP on loopback."""

from __future__ import annotations

import json
import time

import httpx
from prometheus_client import CollectorRegistry

from consumer.observability.health import OpsServer
from consumer.observability.metrics import Metrics

STATS = {
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
    assert get("imconnector_kafka_broker_up", {"broker": "127.0.0.1:9092/1"}) == 1
    assert get("imconnector_kafka_broker_up", {"broker": "127.0.0.1:9093/2"}) == 0
    assert get("imconnector_kafka_broker_up", {"broker": "GroupCoordinator"}) is None
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
