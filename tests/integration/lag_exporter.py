"""A consumer-group lag exporter for the Prometheus tests, reading the real broker.

At every scrape it asks the broker for one group's committed offsets and its topics' end
offsets, and serves the lag in the two shapes the alert rules read from outside the
service:

* kafka-exporter's `kafka_consumergroup_lag{consumergroup, topic, partition}` for each
  partition with a committed offset (danielqsj/kafka_exporter, `consumergroupLag`);
* KEDA's `keda_scaler_metrics_value{namespace, metric, scaledObject, scaler, triggerIndex,
  type}`: one value per trigger (topic), the topic's total lag with a missing commit
  counted from the start (offsetResetPolicy earliest), capped at partitions x lagThreshold
  unless idle consumers are allowed, as KEDA's Kafka scaler reports it
  (kedacore/keda pkg/metricscollector/prommetrics.go, pkg/scalers/kafka_scaler.go).

It stands in for the kafka-exporter or KEDA operator an operator runs; the numbers are the
broker's own, so the alerts are tested against real group state with no replica running.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

TIMEOUT_S = 10.0


@dataclass(frozen=True)
class KedaTrigger:
    """The ScaledObject whose Kafka triggers KEDA would report (one trigger per topic)."""

    namespace: str
    scaled_object: str
    lag_threshold: int


class LagExporter:
    """An HTTP server on loopback serving the group's lag at /metrics."""

    def __init__(
        self, bootstrap: str, group: str, topics: list[str], keda: KedaTrigger | None = None
    ) -> None:
        self.group = group
        self.topics = topics
        self.keda = keda
        self._admin = AdminClient({"bootstrap.servers": bootstrap})
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.exposition().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every second would flood the test output

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> LagExporter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def partition_lags(self) -> dict[tuple[str, int], tuple[int, int | None]]:
        """(topic, partition) -> (end offset, committed offset or None), from the broker."""
        metadata = self._admin.list_topics(timeout=TIMEOUT_S)
        partitions = [
            TopicPartition(topic, p)
            for topic in self.topics
            for p in sorted(metadata.topics[topic].partitions)
        ]
        ends = self._admin.list_offsets(
            {tp: OffsetSpec.latest() for tp in partitions}, request_timeout=TIMEOUT_S
        )
        committed_future = self._admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(self.group, partitions)], request_timeout=TIMEOUT_S
        )[self.group]
        committed = {
            (tp.topic, tp.partition): tp.offset
            for tp in committed_future.result(TIMEOUT_S).topic_partitions
        }
        out: dict[tuple[str, int], tuple[int, int | None]] = {}
        for tp, future in ends.items():
            offset = committed.get((tp.topic, tp.partition), -1)
            out[(tp.topic, tp.partition)] = (
                int(future.result(TIMEOUT_S).offset),
                offset if offset >= 0 else None,
            )
        return out

    def exposition(self) -> str:
        """The Prometheus text exposition of both shapes."""
        lags = self.partition_lags()
        lines = [
            "# HELP kafka_consumergroup_lag Current Approximate Lag of a ConsumerGroup at "
            "Topic/Partition",
            "# TYPE kafka_consumergroup_lag gauge",
        ]
        for (topic, partition), (end, committed) in sorted(lags.items()):
            if committed is not None:
                lines.append(
                    f'kafka_consumergroup_lag{{consumergroup="{self.group}",topic="{topic}",'
                    f'partition="{partition}"}} {end - committed}'
                )
        if self.keda is not None:
            lines += [
                "# HELP keda_scaler_metrics_value The current value for each scaler's metric "
                "that would be used by the HPA in computing the target average.",
                "# TYPE keda_scaler_metrics_value gauge",
            ]
            for index, topic in enumerate(self.topics):
                mine = [v for (t, _), v in lags.items() if t == topic]
                total = sum(end - (committed or 0) for end, committed in mine)
                threshold = self.keda.lag_threshold
                if total // threshold > len(mine):  # no idle consumers beyond partitions
                    total = len(mine) * threshold
                lines.append(
                    f'keda_scaler_metrics_value{{namespace="{self.keda.namespace}",'
                    f'metric="s{index}-kafka-{topic}",scaledObject="{self.keda.scaled_object}",'
                    f'scaler="kafkaScaler",triggerIndex="{index}",type="scaledobject"}} {total}'
                )
        return "\n".join(lines) + "\n"
