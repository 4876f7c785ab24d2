"""What the engine writes besides its state: the outcome of every record (the audit trail)
and the dead letters, sized to fit their topics, and the per-record counts.

Every consumed record ends in exactly one final outcome (applied, duplicate, superseded,
moot, skipped, dead_lettered); `ambiguous_resent` is recorded next to it when a send may
have reached the portal twice. A dead letter keeps the original key, value and headers and
adds the reason (`consumer.kafka.records.dead_letter_headers`); one too large for its
topic loses long header values first and then its value (class `too_large`, with its
source coordinates, so it can be fetched from the source topic).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from consumer.core.fold import Outcome
from consumer.core.state import PendingCall
from consumer.kafka.records import dead_letter_headers, fit_record, outcome_record
from consumer.kafka.writer import TransactionalWriter
from consumer.observability.metrics import Metrics
from consumer.settings import Settings

logger = logging.getLogger(__name__)

FINAL = frozenset({"applied", "duplicate", "superseded", "moot", "skipped", "dead_lettered"})


class Outputs:
    """Outcome lines and dead letters into the open transaction; counts to metrics."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        writer: TransactionalWriter[Any],
        clock: Callable[[], float],
        limits: dict[str, int] | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._writer = writer
        self._clock = clock
        self.limits = limits or {}  # topic -> largest record it takes
        # Per-record counts add up here and reach their counters once per loop iteration:
        # a counter's inc takes a lock, twice per event otherwise.
        self._consumed = dict.fromkeys(settings.source_topics, 0)
        self._outcomes: dict[str, int] = {}

    def consumed(self, topic: str) -> None:
        """One record read from `topic`."""
        self._consumed[topic] += 1

    def publish_counts(self) -> None:
        """The counts since the last call, to their Prometheus counters."""
        for topic, count in self._consumed.items():
            if count:
                self._metrics.events_consumed.labels(topic=topic).inc(count)
                self._consumed[topic] = 0
        if self._outcomes:
            for outcome, count in self._outcomes.items():
                self._metrics.outcomes.labels(outcome=outcome).inc(count)
            self._outcomes = {}

    def skipped(self, chat: str, call: PendingCall, outcome: str, **fields: Any) -> None:
        """A line for a record that made no call (a duplicate), or beside a call's outcome
        (`ambiguous_resent`, a `gap` given up); only final outcomes are counted."""
        if outcome in FINAL:
            self._outcomes[outcome] = self._outcomes.get(outcome, 0) + 1
        self.line(chat, outcome_record(chat, call, outcome, **fields))

    def line(self, chat: str, value: bytes) -> None:
        """One line of the outcomes topic."""
        self._writer.produce(self._settings.outcomes_topic, chat.encode(), value, None)

    def emit(self, chat: str, outcome: Outcome) -> None:
        """The outcome of a call (and its dead letter)."""
        call = outcome.call
        if outcome.outcome == "ambiguous_resent":
            self._metrics.ambiguous_sends.labels(policy="resend").inc()
        else:
            self._outcomes[outcome.outcome] = self._outcomes.get(outcome.outcome, 0) + 1
        if outcome.outcome == "applied":
            self._metrics.event_latency.observe(max(0.0, self._clock() - call.occurred_at / 1000))
        error_class = outcome.error_class
        value: bytes | None = call.raw
        headers = None
        if outcome.outcome == "dead_lettered":
            assert error_class is not None
            topic = self._settings.dlq_topic(call.origin[0])
            key = call.raw_key or chat.encode()
            headers = dead_letter_headers(
                call,
                group=self._settings.group_id,
                error_class=error_class,
                code=outcome.code,
                message=outcome.message,
                http_status=outcome.http_status,
                attempts=call.attempts,
                now_ms=int(self._clock() * 1000),
            )
            value, headers, dropped = fit_record(
                key, value, headers, self.limits.get(topic, 1_000_000)
            )
            if dropped:
                logger.warning(
                    "dead letter of %s[%d]@%d is larger than %s takes: written without its "
                    "value (fetch it from the source topic at that offset)",
                    *call.origin,
                    topic,
                )
                headers = [
                    (k, b"too_large" if k == "imconnector.error.class" else v) for k, v in headers
                ]
                headers.append(("imconnector.error.original_class", error_class.encode()))
                error_class = "too_large"
            self._metrics.dead_letters.labels(error_class=error_class).inc()
            self._writer.produce(topic, key, value, headers, partition=call.origin[1])
        self.line(
            chat,
            outcome_record(
                chat,
                call,
                outcome.outcome,
                error_class=error_class,
                code=outcome.code,
                message=outcome.message,
                http_status=outcome.http_status,
                result=outcome.result,
                attempts=call.attempts or None,
                redrive=call.redrive_count or None,
            ),
        )

    def dead_letter(
        self,
        chat: str,
        origin: tuple[str, int, int],
        value: bytes,
        key: bytes,
        headers: tuple[tuple[str, bytes], ...],
        error_class: str,
        code: str,
        message: str,
        event_id: str = "",
        kind: str = "unknown",
    ) -> None:
        """A record dead-lettered before it became a call (poison, an invalid event, a
        call whose body the changelog lost)."""
        call = PendingCall(event_id, None, kind, "", {}, 0, origin, value, key, headers)
        logger.warning(
            "record dead-lettered (%s %s): %s",
            error_class,
            code,
            message,
            extra={"topic": origin[0], "partition": origin[1], "offset": origin[2]},
        )
        self.emit(chat, Outcome(call, "dead_lettered", error_class, code, message))
