"""librdkafka's statistics (`stats_cb` JSON) from every client, as metrics at scrape time.

Each client (the group consumer, the transactional producer) sends its statistics every
`statistics.interval.ms`; the latest of each is kept and turned into metrics when scraped.
A client's statistics are never served stale: they are dropped when the client is
forgotten (closed) or when none came for `STALE_AFTER_INTERVALS` intervals, so a closed
client or a stuck poll loop (which serves the callback) stops exporting numbers that
look current.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from threading import Lock
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "imconnector"
STALE_AFTER_INTERVALS = 3
_MICROS = 1e-6
_MILLIS = 1e-3


@dataclass(slots=True)
class _Latest:
    stats: dict[str, Any]
    received: float  # monotonic
    interval: float  # seconds between the last two, or the configured interval


class LibrdkafkaStats(Collector):
    """The latest statistics of each live client, exposed as metrics when scraped.

    `update` is the `stats_cb` of every client (consumer and producer alike); the
    statistics say which client they come from (`name`, `type`).
    """

    def __init__(
        self, interval_s: float = 15.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lock = Lock()
        self._clients: dict[str, _Latest] = {}
        self._interval = max(interval_s, 1.0)
        self._clock = clock

    def update(self, stats_json: str) -> None:
        """Store one `stats_cb` payload; called from the client's poll."""
        parsed = json.loads(stats_json)
        name = str(parsed.get("name", "?"))
        now = self._clock()
        with self._lock:
            before = self._clients.get(name)
            interval = max(now - before.received, 1.0) if before else self._interval
            self._clients[name] = _Latest(parsed, now, interval)

    def forget(self, name: str) -> None:
        """Drop the statistics of client `name` (its handle name): it was closed."""
        with self._lock:
            self._clients.pop(name, None)

    def _live(self) -> list[dict[str, Any]]:
        """The statistics still current, newest per client type (consumer, producer)."""
        now = self._clock()
        newest: dict[str, _Latest] = {}
        with self._lock:
            for name, latest in list(self._clients.items()):
                if now - latest.received > STALE_AFTER_INTERVALS * latest.interval:
                    del self._clients[name]
                    continue
                kind = str(latest.stats.get("type", "?"))
                if kind not in newest or newest[kind].received < latest.received:
                    newest[kind] = latest
        return [latest.stats for latest in newest.values()]

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Lag per assigned partition, broker state, rtt and throttle per client, the
        group's rebalances and the producer's transaction state."""
        lag = GaugeMetricFamily(
            f"{PREFIX}_kafka_consumer_lag",
            "Messages behind the end of each assigned partition (librdkafka consumer_lag_stored).",
            labels=["topic", "partition"],
        )
        broker_up = GaugeMetricFamily(
            f"{PREFIX}_kafka_broker_up",
            "1 when the client's connection to the broker is UP.",
            labels=["client", "broker"],
        )
        rtt = GaugeMetricFamily(
            f"{PREFIX}_kafka_broker_rtt_p99_seconds",
            "99th percentile of the broker round-trip time over the last statistics window.",
            labels=["client", "broker"],
        )
        throttle = GaugeMetricFamily(
            f"{PREFIX}_kafka_broker_throttle_p99_seconds",
            "99th percentile of the broker's throttle time over the last statistics window.",
            labels=["client", "broker"],
        )
        rebalances = CounterMetricFamily(
            f"{PREFIX}_kafka_group_rebalances", "Consumer group rebalances seen by librdkafka."
        )
        txn_state = GaugeMetricFamily(
            f"{PREFIX}_kafka_transaction_state",
            "1 for the transactional producer's current state (librdkafka eos.txn_state).",
            labels=["state"],
        )
        for stats in self._live():
            client = str(stats.get("type", "?"))
            if client == "consumer":
                _partition_lag(stats, lag)
            for name, bstats in (stats.get("brokers") or {}).items():
                if bstats.get("nodeid", -1) < 0:
                    continue  # bootstrap and coordinator pseudo-brokers
                broker_up.add_metric([client, name], 1.0 if bstats.get("state") == "UP" else 0.0)
                window = bstats.get("rtt") or {}
                if window.get("cnt", 0) > 0:
                    rtt.add_metric([client, name], window.get("p99", 0) * _MICROS)
                window = bstats.get("throttle")
                if window is not None:  # an empty window: no throttling, which is news too
                    throttle.add_metric([client, name], window.get("p99", 0) * _MILLIS)
            cgrp = stats.get("cgrp")
            if cgrp:
                rebalances.add_metric([], float(cgrp.get("rebalance_cnt", 0)))
            eos = stats.get("eos")
            if client == "producer" and eos and eos.get("txn_state"):
                txn_state.add_metric([str(eos["txn_state"])], 1.0)
        yield from (lag, broker_up, rtt, throttle, rebalances, txn_state)


def _partition_lag(stats: dict[str, Any], lag: GaugeMetricFamily) -> None:
    for topic, tstats in (stats.get("topics") or {}).items():
        for pid, pstats in (tstats.get("partitions") or {}).items():
            if pid == "-1":
                continue  # librdkafka's internal unassigned partition
            value = pstats.get("consumer_lag_stored", -1)
            if value is None or value < 0:
                value = pstats.get("consumer_lag", -1)
            if value is not None and value >= 0:  # -1: not known yet
                lag.add_metric([topic, pid], float(value))
