"""The naive consumer the benchmark compares the service with.

What a first version of this service would look like: one `confluent_kafka.Consumer`, and
for each record, one after the other: decode it, make one synchronous HTTP call of the
matching `imconnector.*` method with a one-element `MESSAGES` array (or the flat
`chat.name.set` parameters), then commit that record's offset synchronously. No batching,
no concurrency, no dedup, no ordering, no retries. The request element is built by
`consumer.core.mapping.element_for`, so both contenders send the same content.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
from confluent_kafka import Consumer, KafkaError, KafkaException

from consumer.codec import ChatEventDecoder
from consumer.core.events import ChatEvent
from consumer.core.mapping import BATCHABLE, element_for
from consumer.errors import PoisonRecord


def request_params(event: ChatEvent) -> tuple[str, dict[str, Any]]:
    """`(method, params)` of the one request the naive consumer makes for `event`."""
    user_id = event.user.id if event.user is not None else None
    method, element = element_for(event, user_id)
    if method in BATCHABLE:
        return method, {"CONNECTOR": event.connector, "LINE": event.line, "MESSAGES": [element]}
    return method, {"CONNECTOR": event.connector, "LINE": event.line, **element}


@dataclass
class NaiveResult:
    """What one run did."""

    processed: int = 0  # records decoded, called and committed
    poison: int = 0
    first_record_at: float | None = None  # time.monotonic() of the first record received
    last_done_at: float | None = None  # time.monotonic() after the last commit
    statuses: Counter[int] = field(default_factory=Counter)  # HTTP status -> count
    transport_errors: int = 0

    @property
    def elapsed(self) -> float:
        """Seconds from the first record received to the last record committed."""
        if self.first_record_at is None or self.last_done_at is None:
            return 0.0
        return self.last_done_at - self.first_record_at

    @property
    def rate(self) -> float:
        """Records per second over `elapsed`."""
        return self.processed / self.elapsed if self.elapsed > 0 else 0.0


class NaiveConsumer:
    """Consume `topic` as `group`, one record and one request at a time."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group: str,
        rest_url: str,
        access_token: str,
        *,
        timeout: float = 30.0,
    ) -> None:
        self.topic = topic
        self.rest_url = rest_url if rest_url.endswith("/") else rest_url + "/"
        self._token = access_token
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        self._http = httpx.Client(timeout=timeout)
        self._decoder = ChatEventDecoder()
        self.result = NaiveResult()
        self.stop_event = threading.Event()
        self.assigned = threading.Event()  # set once the group gave this consumer partitions

    def close(self) -> None:
        """Leave the group and close the HTTP connection."""
        self._consumer.close()
        self._http.close()

    def call(self, event: ChatEvent) -> int:
        """One synchronous request for `event`; returns the HTTP status."""
        method, params = request_params(event)
        response = self._http.post(f"{self.rest_url}{method}", json={**params, "auth": self._token})
        return response.status_code

    def run(
        self,
        *,
        max_records: int | None = None,
        budget_s: float | None = None,
        first_record_timeout: float = 120.0,
    ) -> NaiveResult:
        """Process records until `max_records`, `budget_s` after the first record, or `stop()`.

        Gives up when no record arrives within `first_record_timeout` seconds.
        """
        result = self.result
        self._consumer.subscribe([self.topic], on_assign=lambda *_: self.assigned.set())
        deadline: float | None = None
        give_up = time.monotonic() + first_record_timeout
        try:
            while not self.stop_event.is_set():
                if result.first_record_at is None and time.monotonic() > give_up:
                    break
                if max_records is not None and result.processed + result.poison >= max_records:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                msg = self._consumer.poll(0.1)
                if msg is None:
                    continue
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(error)
                if result.first_record_at is None:
                    result.first_record_at = time.monotonic()
                    if budget_s is not None:
                        deadline = result.first_record_at + budget_s
                try:
                    event = self._decoder.decode(msg.value())
                except PoisonRecord:
                    result.poison += 1
                else:
                    try:
                        result.statuses[self.call(event)] += 1
                    except httpx.HTTPError:
                        result.transport_errors += 1
                    result.processed += 1
                self._consumer.commit(message=msg, asynchronous=False)
                result.last_done_at = time.monotonic()
        finally:
            self.close()
        return result
