"""Every Prometheus metric the service exports, in one place, on an injected registry.

Label values are small closed sets (outcome, error class, method, status class, topic,
partition, portal); never chat ids, event ids or error strings. Dashboards
(`ops/dashboards/`) and alert rules (`ops/alerts/`) use exactly these names.
"""

from __future__ import annotations

import contextlib
from threading import Lock
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from consumer.observability.librdkafka_stats import LibrdkafkaStats

# Why a lookup of a send of unknown outcome gave up (`consumer.bitrix.readback` decides):
# the `reason` label of `imconnector_send_reconciliations_total{result="fallback"}`.
RECONCILE_FALLBACK_REASONS = (
    "disabled",
    "id_not_kept",
    "no_user",
    "session_closed",
    "access_denied",
    "method_missing",
    "read_error",
    "unreadable",
)

PREFIX = "imconnector"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# An event can wait minutes behind a gap, a rename waits for its chat's first send, a
# portal outage holds everything: the latency an operator pages on reaches an hour.
_EVENT_LATENCY_BUCKETS = (
    *_LATENCY_BUCKETS[3:],
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200)
BREAKER_STATES = ("closed", "half_open", "open")  # consumer.bitrix.limits: 0, 1, 2


class BreakerStateGauge:
    """`imconnector_circuit_breaker_state{portal, state}`: per portal one series per state,
    1 for the current one and 0 for the others (a state set, so alerts match a name, not
    a number). `labels(portal=...).set(state)` takes the breaker's 0/1/2 or the name."""

    def __init__(self, gauge: Gauge) -> None:
        self._gauge = gauge
        self._current: dict[str, str] = {}
        self._lock = Lock()

    def labels(self, *, portal: str) -> _PortalBreakerState:
        """The state of `portal`'s breaker, to `set`."""
        return _PortalBreakerState(self, portal)

    def set(self, portal: str, state: int | str) -> None:
        """Make `state` the 1 of `portal` (only on a change: called per batch)."""
        name = BREAKER_STATES[state] if isinstance(state, int) else state
        with self._lock:
            if self._current.get(portal) == name:
                return
            self._current[portal] = name
            for each in BREAKER_STATES:
                self._gauge.labels(portal=portal, state=each).set(1.0 if each == name else 0.0)


class _PortalBreakerState:
    __slots__ = ("_owner", "_portal")

    def __init__(self, owner: BreakerStateGauge, portal: str) -> None:
        self._owner = owner
        self._portal = portal

    def set(self, state: int | str) -> None:
        self._owner.set(self._portal, state)


class Metrics:
    """The service's metrics, registered on `registry` (a fresh one per test)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        version: str = "0",
        *,
        statistics_interval_s: float = 15.0,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        p = PREFIX
        self.build_info = Gauge(
            f"{p}_build_info",
            "Always 1; the label carries the version.",
            ["version"],
            registry=r,
        )
        self.build_info.labels(version=version).set(1)
        self.events_consumed = Counter(
            f"{p}_events_consumed_total", "Records read from source topics.", ["topic"], registry=r
        )
        self.outcomes = Counter(
            f"{p}_event_outcomes_total",
            "Final outcome of every consumed record: applied, duplicate, superseded, moot, "
            "dead_lettered, ambiguous_resent.",
            ["outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            f"{p}_dead_letters_total",
            "Records written to a dead-letter topic, by error class.",
            ["error_class"],
            registry=r,
        )
        self.api_requests = Counter(
            f"{p}_api_requests_total",
            "Bitrix24 REST requests by method and status class (2xx, 4xx, 5xx, transport).",
            ["method", "status_class"],
            registry=r,
        )
        self.api_duration = Histogram(
            f"{p}_api_request_duration_seconds",
            "Bitrix24 REST request duration.",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.api_batch_size = Histogram(
            f"{p}_api_batch_size",
            "Events coalesced into one Bitrix24 request.",
            ["method"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            f"{p}_retries_total", "Request retries by reason.", ["reason"], registry=r
        )
        self.throttle_waits = Counter(
            f"{p}_throttle_wait_seconds_total",
            "Seconds spent waiting for rate or operating budgets.",
            ["reason"],
            registry=r,
        )
        self.token_refreshes = Counter(
            f"{p}_token_refreshes_total",
            "OAuth token refreshes by result (ok, adopted, failed).",
            ["result"],
            registry=r,
        )
        self.breaker_state = BreakerStateGauge(
            Gauge(
                f"{p}_circuit_breaker_state",
                "Per-portal breaker state: 1 for the current state (closed, half_open, "
                "open), 0 for the others.",
                ["portal", "state"],
                registry=r,
            )
        )
        self.reorder_held = Gauge(
            f"{p}_reorder_held_events",
            "Events held in reorder buffers waiting for a gap to fill.",
            registry=r,
        )
        self.sequence_gaps = Counter(
            f"{p}_sequence_gaps_total",
            "Sequence gaps given up on, by reason: timeout (gap_timeout_s), chat_buffer_full "
            "(reorder_buffer_per_chat), buffers_full (max_buffered_events held).",
            ["reason"],
            registry=r,
        )
        self.event_latency = Histogram(
            f"{p}_event_latency_seconds",
            "Event time to the end of its successful call.",
            buckets=_EVENT_LATENCY_BUCKETS,
            registry=r,
        )
        self.calls_in_flight = Gauge(
            f"{p}_calls_in_flight", "Bitrix24 calls in flight.", registry=r
        )
        self.oldest_event_age = Gauge(
            f"{p}_oldest_unfinished_event_age_seconds",
            "Age of the oldest consumed but unfinished event.",
            ["topic", "partition"],
            registry=r,
        )
        self.chats_in_state = Gauge(
            f"{p}_chats_in_state", "Chat states held in memory.", registry=r
        )
        self.parked_chats = Gauge(
            f"{p}_parked_chats", "Chats parked after exhausted retries.", registry=r
        )
        self.restore_records = Counter(
            f"{p}_state_restore_records_total",
            "Changelog records replayed while restoring state.",
            registry=r,
        )
        self.restoring_partitions = Gauge(
            f"{p}_state_restoring_partitions",
            "Assigned partitions still restoring state.",
            registry=r,
        )
        self.ambiguous_sends = Counter(
            f"{p}_ambiguous_sends_total",
            "Calls found in flight after a crash (unknown outcome).",
            ["policy"],
            registry=r,
        )
        self.reconciliations = Counter(
            f"{p}_send_reconciliations_total",
            "Sends of unknown outcome looked up on the portal, by result: present (it had "
            "taken effect), resent (it was missing, sent again), fallback (the lookup could "
            "not tell; unknown_outcome_policy decided), exhausted (sent reconcile_max_sends "
            "(retry.max_attempts) times without a known outcome: dead-lettered, its chat "
            "parked).",
            ["result"],
            registry=r,
        )
        self.reconcile_fallbacks = Counter(
            f"{p}_send_reconcile_fallbacks_total",
            "Lookups of sends of unknown outcome that could not tell, by reason: no_user "
            "(the chat's first send), session_closed, access_denied, method_missing, "
            "read_error, unreadable, id_not_kept, disabled.",
            ["reason"],
            registry=r,
        )
        self.transactions = Counter(
            f"{p}_transactions_total",
            "Kafka transactions by result (committed, aborted).",
            ["result"],
            registry=r,
        )
        self.transaction_duration = Histogram(
            f"{p}_transaction_duration_seconds",
            "Time to commit one Kafka transaction.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.assigned_partitions = Gauge(
            f"{p}_assigned_partitions", "Source partitions assigned to this process.", registry=r
        )
        self.rebalances = Counter(
            f"{p}_rebalances_total", "Rebalance callbacks by type.", ["type"], registry=r
        )
        self.paused_partitions = Gauge(
            f"{p}_paused_partitions", "Partitions paused for backpressure.", registry=r
        )
        self.partition_pauses = Counter(
            f"{p}_partition_pauses_total",
            "Times a partition was paused because its calls piled up (backpressure).",
            registry=r,
        )
        self.registry_waits = Counter(
            f"{p}_registry_waits_total",
            "Times a partition went back to a record because the schema registry did not "
            "answer (it reads the record again after a backoff).",
            registry=r,
        )
        self.poll_heartbeat = Gauge(
            f"{p}_poll_loop_last_seen_timestamp_seconds",
            "Unix time the poll loop last ran.",
            registry=r,
        )
        self.ready = Gauge(f"{p}_ready", "1 when assigned partitions are restored.", registry=r)
        # consumer.inbound: Bitrix24's operator events into Kafka. `portal` is a configured
        # portal key or "unknown" (never a value taken from a request), `mode` push or pull.
        self.inbound_received = Counter(
            f"{p}_inbound_events_received_total",
            "Operator events received from Bitrix24 (one per chat element), by mode, kind "
            "and portal.",
            ["mode", "kind", "portal"],
            registry=r,
        )
        self.inbound_produced = Counter(
            f"{p}_inbound_events_produced_total",
            "Operator events Kafka acknowledged (push) or committed (pull).",
            ["mode", "kind", "portal"],
            registry=r,
        )
        self.inbound_refused = Counter(
            f"{p}_inbound_events_refused_total",
            "Pushed requests or offline records refused, by reason: bad_token, "
            "unknown_portal, malformed, too_large, replayed, rate_limited, "
            "kafka_unavailable, not_connector_event.",
            ["mode", "kind", "portal", "reason"],
            registry=r,
        )
        self.inbound_pull_lag = Gauge(
            f"{p}_inbound_pull_lag_seconds",
            "Age of the oldest offline event not yet cleared from the portal's queue (0 "
            "when the queue was last seen empty).",
            ["portal"],
            registry=r,
        )
        self.display_fields_cleaned = Counter(
            f"{p}_display_fields_cleaned_total",
            "Customer display fields (name, last_name, email) cleaned or dropped so that the "
            "portal accepts the user block, counted once per call.",
            ["field"],
            registry=r,
        )
        self.portal_moves = Counter(
            f"{p}_portal_moves_total",
            "Portal domain moves followed (a 301/302/307/308 to the portal's new address).",
            ["portal"],
            registry=r,
        )
        self.kafka = LibrdkafkaStats(statistics_interval_s)
        r.register(self.kafka)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        # Known label values start at 0 so increase() sees the first failure too.
        for outcome in ("applied", "duplicate", "superseded", "moot", "skipped", "dead_lettered"):
            self.outcomes.labels(outcome=outcome)
        for error_class in (
            "poison",
            "permanent",
            "causal_wait",
            "auth",
            "exhausted",
            "parked",
            "ambiguous",
            "invalid_event",
            "too_large",
            "lost",
        ):
            self.dead_letters.labels(error_class=error_class)
        for result in ("ok", "adopted", "failed"):
            self.token_refreshes.labels(result=result)
        for result in ("committed", "aborted"):
            self.transactions.labels(result=result)
        for result in ("present", "resent", "fallback", "exhausted"):
            self.reconciliations.labels(result=result)
        for reason in RECONCILE_FALLBACK_REASONS:
            self.reconcile_fallbacks.labels(reason=reason)
        for reason in ("timeout", "chat_buffer_full", "buffers_full"):
            self.sequence_gaps.labels(reason=reason)
        for name in ("name", "last_name", "email"):
            self.display_fields_cleaned.labels(field=name)

    def forget_partition(self, topic: str, partition: int) -> None:
        """A revoked partition's series go (a stale age must not page anyone)."""
        with contextlib.suppress(KeyError):
            self.oldest_event_age.remove(topic, str(partition))

    def count_cleaned(self, call: Cleaned) -> None:
        """Count the display fields cleaned in `call`'s user block, once: the mark is
        cleared, so whoever counts it first (the engine or the dispatcher) counts it."""
        for name in call.cleaned:
            self.display_fields_cleaned.labels(field=name).inc()
        call.cleaned = ()


class Cleaned(Protocol):
    """A call that names the display fields cleaned in it (`consumer.core.state.PendingCall`)."""

    cleaned: tuple[str, ...]
