"""Builds the Grafana dashboard for imconnector-consumer as JSON (dashboard as code).

Run `python ops/dashboards/build.py` after changing this file: it rewrites
`ops/dashboards/imconnector-consumer.json`, which is committed and copied into the Helm
chart by `ops/tools/sync-chart-files.sh`. `--check` only compares. Plain Python, no
dependencies; metric names are exactly those of `consumer/observability/metrics.py` (a
test checks it).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).with_name("imconnector-consumer.json")
UID = "imconnector-consumer"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Every query is narrowed by the two template variables.
SEL = 'namespace=~"$namespace", pod=~"$pod"'
RATE = "$__rate_interval"
GRID_WIDTH = 24


@dataclass
class Target:
    """One PromQL query of a panel."""

    expr: str
    legend: str = ""
    instant: bool = False


@dataclass
class Panel:
    """A panel before layout: kind, title, queries and display options."""

    kind: str
    title: str
    description: str
    targets: list[Target]
    unit: str = "short"
    width: int = 8
    height: int = 8
    stack: bool = False
    mappings: list[dict[str, Any]] = field(default_factory=list)
    thresholds: list[tuple[float | None, str]] = field(default_factory=lambda: [(None, "green")])
    decimals: int | None = None
    text_mode: str = "auto"


@dataclass
class Row:
    """A titled row of panels, laid out left to right and wrapped at the grid width."""

    title: str
    panels: list[Panel]


def timeseries(title: str, description: str, *targets: Target, **options: Any) -> Panel:
    """A time series panel."""
    return Panel("timeseries", title, description, list(targets), **options)


def stat(title: str, description: str, *targets: Target, **options: Any) -> Panel:
    """A single-value stat panel (4 wide, 4 high unless told)."""
    options.setdefault("width", 4)
    options.setdefault("height", 4)
    return Panel("stat", title, description, list(targets), **options)


def quantiles(metric: str, by: str = "", qs: tuple[float, ...] = (0.5, 0.95, 0.99)) -> list[Target]:
    """histogram_quantile targets of `metric`_bucket, one per quantile."""
    group = f"le, {by}" if by else "le"
    suffix = f" {{{{{by}}}}}" if by else ""
    return [
        Target(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{SEL}}}[{RATE}])))",
            f"p{round(q * 100)}{suffix}",
        )
        for q in qs
    ]


BREAKER_STATES = [
    {
        "type": "value",
        "options": {
            "0": {"text": "closed", "color": "green", "index": 0},
            "1": {"text": "half-open", "color": "yellow", "index": 1},
            "2": {"text": "open", "color": "red", "index": 2},
        },
    }
]


def rows() -> list[Row]:
    """The dashboard's content, top to bottom."""
    return [
        Row(
            "Overview",
            [
                stat(
                    "Events consumed /s",
                    "Records read from the source topics per second.",
                    Target(f"sum(rate(imconnector_events_consumed_total{{{SEL}}}[{RATE}]))"),
                    unit="ops",
                ),
                stat(
                    "Outcomes /s",
                    "Records finished per second (applied, skipped or dead-lettered).",
                    Target(f"sum(rate(imconnector_event_outcomes_total{{{SEL}}}[{RATE}]))"),
                    unit="ops",
                ),
                stat(
                    "Dead-lettered (1h)",
                    "Records written to a dead-letter topic in the last hour.",
                    Target(f"sum(increase(imconnector_dead_letters_total{{{SEL}}}[1h]))"),
                    thresholds=[(None, "green"), (1, "orange"), (100, "red")],
                    decimals=0,
                ),
                stat(
                    "Consumer lag",
                    "Messages behind the end of the assigned partitions (librdkafka).",
                    Target(f"sum(imconnector_kafka_consumer_lag{{{SEL}}})"),
                    thresholds=[(None, "green"), (1000, "orange"), (10000, "red")],
                ),
                stat(
                    "Oldest unfinished event",
                    "Age of the oldest consumed but unfinished event: the end-to-end delay.",
                    Target(f"max(imconnector_oldest_unfinished_event_age_seconds{{{SEL}}})"),
                    unit="s",
                    thresholds=[(None, "green"), (60, "orange"), (600, "red")],
                ),
                stat(
                    "Ready / up",
                    "Replicas reporting ready (joined the group, restored what they own, not "
                    "draining) and replicas scraped (whatever the job is called).",
                    Target(f"sum(imconnector_ready{{{SEL}}})", "ready"),
                    Target(f"sum(up{{{SEL}}})", "up"),
                    text_mode="value_and_name",
                ),
                stat(
                    "Bitrix24 error ratio",
                    "Share of Bitrix24 requests that did not return 2xx.",
                    Target(
                        "sum(rate(imconnector_api_requests_total"
                        f'{{{SEL}, status_class!="2xx"}}[{RATE}])) / '
                        f"sum(rate(imconnector_api_requests_total{{{SEL}}}[{RATE}]))"
                    ),
                    unit="percentunit",
                    thresholds=[(None, "green"), (0.01, "orange"), (0.05, "red")],
                ),
                stat(
                    "Bitrix24 p99 latency",
                    "99th percentile of Bitrix24 request duration.",
                    *quantiles("imconnector_api_request_duration_seconds", qs=(0.99,)),
                    unit="s",
                    thresholds=[(None, "green"), (2, "orange"), (10, "red")],
                ),
                stat(
                    "Open breakers",
                    "Portals whose circuit breaker is open (calls suspended).",
                    Target(
                        "count(max by (portal) (imconnector_circuit_breaker_state"
                        f'{{{SEL}, state="open"}}) == 1) or vector(0)'
                    ),
                    thresholds=[(None, "green"), (1, "red")],
                    decimals=0,
                ),
                stat(
                    "Parked chats",
                    "Chats parked after exhausted retries; their later events wait in order.",
                    Target(f"sum(imconnector_parked_chats{{{SEL}}})"),
                    thresholds=[(None, "green"), (1, "orange")],
                    decimals=0,
                ),
                stat(
                    "Calls in flight",
                    "Bitrix24 calls currently in flight.",
                    Target(f"sum(imconnector_calls_in_flight{{{SEL}}})"),
                    decimals=0,
                ),
                stat(
                    "Version",
                    "Service versions running (imconnector_build_info).",
                    Target(
                        f"count by (version) (imconnector_build_info{{{SEL}}})",
                        "{{version}}",
                    ),
                    text_mode="name",
                ),
            ],
        ),
        Row(
            "Bitrix24 calls (RED)",
            [
                timeseries(
                    "Requests /s by method",
                    "Rate: Bitrix24 REST requests per second by method.",
                    Target(
                        f"sum by (method) (rate(imconnector_api_requests_total{{{SEL}}}[{RATE}]))",
                        "{{method}}",
                    ),
                    unit="reqps",
                ),
                timeseries(
                    "Errors /s by method and status class",
                    "Errors: non-2xx responses and transport failures per second.",
                    Target(
                        "sum by (method, status_class) (rate(imconnector_api_requests_total"
                        f'{{{SEL}, status_class!="2xx"}}[{RATE}]))',
                        "{{method}} {{status_class}}",
                    ),
                    unit="reqps",
                ),
                timeseries(
                    "Latency",
                    "Duration: quantiles of Bitrix24 request duration, all methods.",
                    *quantiles("imconnector_api_request_duration_seconds"),
                    unit="s",
                ),
                timeseries(
                    "p99 latency by method",
                    "99th percentile of request duration per method.",
                    *quantiles("imconnector_api_request_duration_seconds", "method", (0.99,)),
                    unit="s",
                    width=12,
                ),
                timeseries(
                    "Batch size by method",
                    "Events coalesced into one request (median and p95): grows under load.",
                    *quantiles("imconnector_api_batch_size", "method", (0.5, 0.95)),
                    width=12,
                ),
            ],
        ),
        Row(
            "Event outcomes and dead letters",
            [
                timeseries(
                    "Outcomes /s",
                    "Final outcome of every consumed record.",
                    Target(
                        "sum by (outcome) "
                        f"(rate(imconnector_event_outcomes_total{{{SEL}}}[{RATE}]))",
                        "{{outcome}}",
                    ),
                    unit="ops",
                    stack=True,
                ),
                timeseries(
                    "Dead letters /s by class",
                    "Records sent to a dead-letter topic, by error class.",
                    Target(
                        "sum by (error_class) "
                        f"(rate(imconnector_dead_letters_total{{{SEL}}}[{RATE}]))",
                        "{{error_class}}",
                    ),
                    unit="ops",
                    stack=True,
                ),
                timeseries(
                    "Consumed /s by topic",
                    "Records read per source topic.",
                    Target(
                        "sum by (topic) "
                        f"(rate(imconnector_events_consumed_total{{{SEL}}}[{RATE}]))",
                        "{{topic}}",
                    ),
                    unit="ops",
                ),
                timeseries(
                    "Retries /s by reason",
                    "Request retries by reason (throttled, transient, auth, ...).",
                    Target(
                        f"sum by (reason) (rate(imconnector_retries_total{{{SEL}}}[{RATE}]))",
                        "{{reason}}",
                    ),
                    unit="ops",
                ),
                timeseries(
                    "Ambiguous sends and sequence gaps",
                    "Sends of unknown outcome (in flight at a crash, or their answer lost), by "
                    "policy; what looking them up on the portal found (present, resent, "
                    "fallback, exhausted) and why a lookup fell back; sequence gaps given up "
                    "on, by reason (timeout, chat_buffer_full, buffers_full).",
                    Target(
                        "sum by (policy) "
                        f"(increase(imconnector_ambiguous_sends_total{{{SEL}}}[{RATE}]))",
                        "ambiguous {{policy}}",
                    ),
                    Target(
                        "sum by (result) "
                        f"(increase(imconnector_send_reconciliations_total{{{SEL}}}[{RATE}]))",
                        "looked up: {{result}}",
                    ),
                    Target(
                        "sum by (reason) "
                        f"(increase(imconnector_send_reconcile_fallbacks_total{{{SEL}}}[{RATE}]))",
                        "fallback {{reason}}",
                    ),
                    Target(
                        "sum by (reason) "
                        f"(increase(imconnector_sequence_gaps_total{{{SEL}}}[{RATE}]))",
                        "gaps {{reason}}",
                    ),
                ),
                timeseries(
                    "Held in reorder buffers / parked chats",
                    "Events waiting for a sequence gap to fill, and parked chats.",
                    Target(f"sum(imconnector_reorder_held_events{{{SEL}}})", "held events"),
                    Target(f"sum(imconnector_parked_chats{{{SEL}}})", "parked chats"),
                ),
                timeseries(
                    "Display fields cleaned / portal moves",
                    "Customer names and emails cleaned so that the portal accepts them (the "
                    "message is sent, the field changed or dropped), by field; portal domain "
                    "moves followed (3xx to a new address), by portal.",
                    Target(
                        "sum by (field) "
                        f"(increase(imconnector_display_fields_cleaned_total{{{SEL}}}[{RATE}]))",
                        "cleaned {{field}}",
                    ),
                    Target(
                        "sum by (portal) "
                        f"(increase(imconnector_portal_moves_total{{{SEL}}}[{RATE}]))",
                        "moved {{portal}}",
                    ),
                ),
            ],
        ),
        Row(
            "Lag and event age",
            [
                timeseries(
                    "Consumer lag by topic",
                    "Messages behind the partition ends, summed per topic (assigned partitions).",
                    Target(
                        f"sum by (topic) (imconnector_kafka_consumer_lag{{{SEL}}})", "{{topic}}"
                    ),
                    width=6,
                ),
                timeseries(
                    "Top 10 partitions by lag",
                    "The partitions furthest behind.",
                    Target(
                        "topk(10, sum by (topic, partition) "
                        f"(imconnector_kafka_consumer_lag{{{SEL}}}))",
                        "{{topic}}/{{partition}}",
                    ),
                    width=6,
                ),
                timeseries(
                    "Oldest unfinished event age by topic",
                    "Age of the oldest consumed but unfinished event (alert at 10m).",
                    Target(
                        "max by (topic) "
                        f"(imconnector_oldest_unfinished_event_age_seconds{{{SEL}}})",
                        "{{topic}}",
                    ),
                    unit="s",
                    width=6,
                ),
                timeseries(
                    "End-to-end latency",
                    "Event time to the end of its successful Bitrix24 call (quantiles).",
                    *quantiles("imconnector_event_latency_seconds"),
                    unit="s",
                    width=6,
                ),
                timeseries(
                    "Assigned and paused partitions by pod",
                    "Partitions per replica, those paused for backpressure (their calls "
                    "piled up), how many times partitions were paused, and how many times one "
                    "went back to a record because the schema registry did not answer.",
                    Target(
                        f"sum by (pod) (imconnector_assigned_partitions{{{SEL}}})",
                        "assigned {{pod}}",
                    ),
                    Target(
                        f"sum by (pod) (imconnector_paused_partitions{{{SEL}}})",
                        "paused {{pod}}",
                    ),
                    Target(
                        "sum by (pod) "
                        f"(increase(imconnector_partition_pauses_total{{{SEL}}}[{RATE}]))",
                        "pauses {{pod}}",
                    ),
                    Target(
                        "sum by (pod) "
                        f"(increase(imconnector_registry_waits_total{{{SEL}}}[{RATE}]))",
                        "registry waits {{pod}}",
                    ),
                ),
                timeseries(
                    "Rebalances",
                    "Rebalance callbacks by type, and group rebalances seen by librdkafka.",
                    Target(
                        f"sum by (type) (increase(imconnector_rebalances_total{{{SEL}}}[{RATE}]))",
                        "{{type}}",
                    ),
                    Target(
                        f"sum(increase(imconnector_kafka_group_rebalances_total{{{SEL}}}[{RATE}]))",
                        "group (librdkafka)",
                    ),
                ),
                timeseries(
                    "Broker connections up",
                    "1 when librdkafka's connection to the broker is UP (min over replicas).",
                    Target(f"min by (broker) (imconnector_kafka_broker_up{{{SEL}}})", "{{broker}}"),
                ),
            ],
        ),
        Row(
            "Throttling and breakers",
            [
                timeseries(
                    "Throttle wait by reason",
                    "Seconds per second spent waiting for the rate limit or operating budget.",
                    Target(
                        "sum by (reason) "
                        f"(rate(imconnector_throttle_wait_seconds_total{{{SEL}}}[{RATE}]))",
                        "{{reason}}",
                    ),
                    unit="s",
                ),
                Panel(
                    "state-timeline",
                    "Circuit breaker by portal",
                    "Per-portal breaker: closed, half-open, open (worst replica).",
                    [
                        Target(
                            # The state set as 0 closed, 1 half-open, 2 open (worst replica).
                            "max by (portal) (sum without (state) (imconnector_circuit_breaker_"
                            f'state{{{SEL}, state="half_open"}}) + 2 * sum without (state) '
                            f'(imconnector_circuit_breaker_state{{{SEL}, state="open"}}))',
                            "{{portal}}",
                        )
                    ],
                    mappings=BREAKER_STATES,
                ),
                timeseries(
                    "Token refreshes by result",
                    "OAuth refreshes: ok, adopted (another replica refreshed), failed.",
                    Target(
                        "sum by (result) "
                        f"(increase(imconnector_token_refreshes_total{{{SEL}}}[{RATE}]))",
                        "{{result}}",
                    ),
                ),
            ],
        ),
        Row(
            "Transactions",
            [
                timeseries(
                    "Transactions /s by result",
                    "Kafka transactions (changelog, outcomes, dead letters, offsets).",
                    Target(
                        f"sum by (result) (rate(imconnector_transactions_total{{{SEL}}}[{RATE}]))",
                        "{{result}}",
                    ),
                    unit="ops",
                ),
                timeseries(
                    "Abort ratio by pod",
                    "Share of transactions aborted (alert above 5%).",
                    Target(
                        "sum by (pod) (rate(imconnector_transactions_total"
                        f'{{{SEL}, result="aborted"}}[{RATE}])) / sum by (pod) '
                        f"(rate(imconnector_transactions_total{{{SEL}}}[{RATE}]))",
                        "{{pod}}",
                    ),
                    unit="percentunit",
                ),
                timeseries(
                    "Commit duration",
                    "Time to commit one Kafka transaction.",
                    *quantiles("imconnector_transaction_duration_seconds", qs=(0.5, 0.99)),
                    unit="s",
                ),
                timeseries(
                    "Producer transaction state",
                    "librdkafka's transaction state of each pod's producer (InTransaction, "
                    "CommittingTransaction, AbortableError, FatalError, ...).",
                    Target(
                        f"max by (pod, state) (imconnector_kafka_transaction_state{{{SEL}}})",
                        "{{pod}} {{state}}",
                    ),
                ),
                timeseries(
                    "Broker round trip p99",
                    "librdkafka's broker round-trip time, consumer and producer (worst pod).",
                    Target(
                        "max by (client, broker) "
                        f"(imconnector_kafka_broker_rtt_p99_seconds{{{SEL}}})",
                        "{{client}} {{broker}}",
                    ),
                    unit="s",
                ),
                timeseries(
                    "Broker throttle p99",
                    "Time the brokers throttled this client (quotas), consumer and producer.",
                    Target(
                        "max by (client, broker) "
                        f"(imconnector_kafka_broker_throttle_p99_seconds{{{SEL}}})",
                        "{{client}} {{broker}}",
                    ),
                    unit="s",
                ),
            ],
        ),
        Row(
            "Restore and state size",
            [
                timeseries(
                    "Partitions restoring",
                    "Assigned partitions still restoring chat state from the changelog.",
                    Target(
                        f"sum by (pod) (imconnector_state_restoring_partitions{{{SEL}}})",
                        "{{pod}}",
                    ),
                    width=6,
                ),
                timeseries(
                    "Restore records /s",
                    "Changelog records replayed per second while restoring.",
                    Target(
                        "sum by (pod) "
                        f"(rate(imconnector_state_restore_records_total{{{SEL}}}[{RATE}]))",
                        "{{pod}}",
                    ),
                    unit="ops",
                    width=6,
                ),
                timeseries(
                    "Chats in state",
                    "Chat states held in memory (bounded by the chat TTL).",
                    Target(f"sum by (pod) (imconnector_chats_in_state{{{SEL}}})", "{{pod}}"),
                    width=6,
                ),
                timeseries(
                    "Ready by pod",
                    "1 when the replica joined the group, restored what it owns and is not "
                    "draining (a replica without partitions is ready too).",
                    Target(f"max by (pod) (imconnector_ready{{{SEL}}})", "{{pod}}"),
                    width=6,
                ),
            ],
        ),
        Row(
            "Runtime",
            [
                timeseries(
                    "CPU",
                    "CPU seconds per second used by each replica.",
                    Target(
                        f"sum by (pod) (rate(process_cpu_seconds_total{{{SEL}}}[{RATE}]))",
                        "{{pod}}",
                    ),
                    unit="percentunit",
                    width=8,
                ),
                timeseries(
                    "Resident memory",
                    "Resident set size of each replica (counts against the pod's memory limit).",
                    Target(f"sum by (pod) (process_resident_memory_bytes{{{SEL}}})", "{{pod}}"),
                    unit="bytes",
                    width=8,
                ),
                timeseries(
                    "Poll loop heartbeat age",
                    "Seconds since the Kafka poll loop last ran (/healthz fails when stale).",
                    Target(
                        "max by (pod) (time() - "
                        f"imconnector_poll_loop_last_seen_timestamp_seconds{{{SEL}}})",
                        "{{pod}}",
                    ),
                    unit="s",
                ),
                timeseries(
                    "Open file descriptors",
                    "Open file descriptors as a share of the limit.",
                    Target(
                        f"max by (pod) (process_open_fds{{{SEL}}} / process_max_fds{{{SEL}}})",
                        "{{pod}}",
                    ),
                    unit="percentunit",
                    width=12,
                ),
                timeseries(
                    "Restarts and GC",
                    "Process restarts and Python garbage collections per interval.",
                    Target(
                        f"sum by (pod) (changes(process_start_time_seconds{{{SEL}}}[{RATE}]))",
                        "restarts {{pod}}",
                    ),
                    Target(
                        "sum by (pod, generation) "
                        f"(increase(python_gc_collections_total{{{SEL}}}[{RATE}]))",
                        "gc gen{{generation}} {{pod}}",
                    ),
                    width=12,
                ),
            ],
        ),
        Row(
            "Operator events (Bitrix24 -> Kafka)",
            [
                timeseries(
                    "Operator events /s",
                    "Events received from Bitrix24 and stored in Kafka, by mode (pull, push) "
                    "and kind (MessageAdd, ...).",
                    Target(
                        "sum by (mode, kind) "
                        f"(rate(imconnector_inbound_events_received_total{{{SEL}}}[{RATE}]))",
                        "received {{mode}} {{kind}}",
                    ),
                    Target(
                        "sum by (mode, kind) "
                        f"(rate(imconnector_inbound_events_produced_total{{{SEL}}}[{RATE}]))",
                        "stored {{mode}} {{kind}}",
                    ),
                    unit="ops",
                ),
                timeseries(
                    "Refused /s",
                    "Pushed requests and offline records refused, by reason (bad_token, "
                    "kafka_unavailable: a pushed event lost, ...).",
                    Target(
                        "sum by (mode, reason) "
                        f"(rate(imconnector_inbound_events_refused_total{{{SEL}}}[{RATE}]))",
                        "{{mode}} {{reason}}",
                    ),
                    unit="ops",
                ),
                timeseries(
                    "Pull lag by portal",
                    "Age of the oldest offline event not yet moved to Kafka (alert: over 5 "
                    "minutes for 10 minutes).",
                    Target(
                        f"max by (portal) (imconnector_inbound_pull_lag_seconds{{{SEL}}})",
                        "{{portal}}",
                    ),
                    unit="s",
                    thresholds=[(None, "green"), (300, "red")],
                ),
            ],
        ),
    ]


def _thresholds(steps: list[tuple[float | None, str]]) -> dict[str, Any]:
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for value, color in steps],
    }


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "unit": panel.unit,
        "mappings": panel.mappings,
        "thresholds": _thresholds(panel.thresholds),
        "color": {"mode": "thresholds" if panel.kind == "stat" else "palette-classic"},
    }
    if panel.decimals is not None:
        defaults["decimals"] = panel.decimals
    options: dict[str, Any]
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 20 if panel.stack else 5,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
        }
        options = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif panel.kind == "stat":
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "textMode": panel.text_mode,
            "orientation": "auto",
        }
    elif panel.kind == "state-timeline":
        defaults["color"] = {"mode": "thresholds"}
        defaults["custom"] = {"fillOpacity": 80, "lineWidth": 0}
        options = {
            "showValue": "auto",
            "mergeValues": True,
            "rowHeight": 0.9,
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "single", "sort": "none"},
        }
    else:
        raise ValueError(f"unknown panel kind {panel.kind!r}")
    targets = []
    for index, target in enumerate(panel.targets):
        item: dict[str, Any] = {
            "refId": chr(ord("A") + index),
            "datasource": DATASOURCE,
            "expr": target.expr,
            "legendFormat": target.legend or "__auto",
            "range": not target.instant,
            "instant": target.instant,
        }
        targets.append(item)
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": targets,
    }


def _layout(content: list[Row]) -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    panel_id = 1
    y = 0
    for row in content:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
                "panels": [],
            }
        )
        panel_id += 1
        y += 1
        x = 0
        line_height = 0
        for panel in row.panels:
            if x + panel.width > GRID_WIDTH:
                x = 0
                y += line_height
                line_height = 0
            panels.append(_panel_json(panel, panel_id, x, y))
            panel_id += 1
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return panels


def _query_variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-variable"},
        "definition": query,
        "refresh": 2,
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "hide": 0,
        "regex": "",
    }


def build_dashboard() -> dict[str, Any]:
    """The whole dashboard as a JSON-ready dict (deterministic: same input, same output)."""
    return {
        "uid": UID,
        "title": "imconnector-consumer",
        "description": "Kafka -> Bitrix24 imconnector mirroring: RED of Bitrix24 calls, "
        "event outcomes, lag, throttling, transactions, state and runtime.",
        "tags": ["imconnector", "kafka", "bitrix24"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "links": [],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "options": [],
                    "refresh": 1,
                    "regex": "",
                    "includeAll": False,
                    "multi": False,
                },
                _query_variable(
                    "namespace", "Namespace", "label_values(imconnector_build_info, namespace)"
                ),
                _query_variable(
                    "pod",
                    "Pod",
                    'label_values(imconnector_build_info{namespace=~"$namespace"}, pod)',
                ),
            ]
        },
        "panels": _layout(rows()),
    }


def render() -> str:
    """The dashboard JSON text exactly as committed."""
    return json.dumps(build_dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, compare) ops/dashboards/imconnector-consumer.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run python ops/dashboards/build.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
