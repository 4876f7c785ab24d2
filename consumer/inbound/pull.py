"""The pull loop: each portal's offline event queue into Kafka, nothing lost, doubles marked.

Per portal and batch (bitrix24/b24restdocs `api-reference/events/offline-events.md`,
"Retrieval with Reservation"; server code `rest/lib/api/event.php`):

1. `event.offline.get` with `clear=0` reserves up to `limit` records under a new
   `process_id` and returns them; reserved records are hidden from other fetches.
2. Their `OperatorEvent`s are written to Kafka in one transaction (`TransactionalSink`).
3. Only then `event.offline.clear` deletes them (`process_id` + their `id`s). Records
   that do not parse are marked with `event.offline.error` instead: they stay in the
   queue (ERROR=1, `event.offline.list`) for a person, and nothing is produced for them.

A crash or a Kafka outage between 1 and 3 leaves the batch reserved. This process asks
for it again with `process_id` (`event.offline.get`: "re-select any unprocessed records
from the current process"); a restarted one finds reservations it does not know with
`event.offline.list` (its `PROCESS_ID` column) and takes them over. A batch committed to
Kafka but not cleared before a crash is written again after the restart: the same
changes get the same `event_id` (`contract.make_event`), so the double is recognisable.

Rate limits, OAuth refresh and the portals are the consumer's own (`BitrixClient`,
`PortalRateLimiter`, `OperatingBudget`, the token store).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from confluent_kafka import KafkaException

from consumer.bitrix.client import BitrixClient
from consumer.bitrix.limits import OperatingBudget, PortalRateLimiter
from consumer.bitrix.oauth import TokenStore
from consumer.errors import BitrixError, ConfigError, Throttled
from consumer.inbound.contract import OperatorEvent
from consumer.inbound.payloads import EVENT_KINDS, MalformedEvent, events_from_offline_record
from consumer.inbound.sink import KafkaUnavailable, TransactionalSink, ensure_topic
from consumer.observability.metrics import Metrics
from consumer.settings import Settings

logger = logging.getLogger(__name__)

MODE = "pull"
LIST_PAGE = 50  # event.offline.list pages are always 50 records (event-offline-list.md)
MAX_RECOVERY_PAGES = 20  # reservations to look for at start: up to 1000 records
MAX_BACKOFF_S = 30.0


@dataclass
class PortalQueue:
    """What the loop knows about one portal's offline queue."""

    recovered: bool = False  # reservations left by an earlier process were looked for
    backlog: list[str] = field(default_factory=list)  # their process ids, to finish first
    current: str | None = None  # the process whose records may still be reserved
    adopted: bool = False  # `current` is another process's: it may hold more than a batch
    uncleared: tuple[int, ...] = ()  # record ids committed to Kafka, not yet cleared
    oldest_ms: int | None = None  # TIMESTAMP_X of the oldest record fetched, not cleared
    empty_at: float = field(default_factory=time.time)  # when the queue was last seen empty
    retry_at: float = 0.0  # monotonic: no fetch before this (after a failure)
    backoff: float = 0.0

    def lag(self) -> float:
        """Age of the oldest event not yet cleared: of the batch in hand, or, when the
        queue could not be read, the time since it was last seen empty."""
        now = time.time()
        if self.oldest_ms is not None:
            return max(0.0, now - self.oldest_ms / 1000)
        if self.retry_at > time.monotonic():
            return max(0.0, now - self.empty_at)
        return 0.0


class OfflinePuller:
    """Moves each portal's offline queue into Kafka, one reserved batch at a time."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        client: BitrixClient,
        sink: TransactionalSink,
        portals: Iterable[str] | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._client = client
        self._sink = sink
        self._limit = settings.inbound.pull_limit
        names = sorted(settings.portals) if portals is None else list(portals)
        unknown = [name for name in names if name not in settings.portals]
        if unknown or not names:
            raise ConfigError(
                f"no such portal {', '.join(unknown)}: pull needs portals in IMCONNECTOR_PORTALS"
                if unknown
                else "pull needs at least one portal in IMCONNECTOR_PORTALS"
            )
        self.queues = {name: PortalQueue() for name in names}
        self._limiters = {
            name: PortalRateLimiter(cfg.rate_drain, cfg.rate_burst, cfg.rate_share)
            for name, cfg in settings.portals.items()
            if name in self.queues
        }
        self._budgets = {
            name: OperatingBudget(settings.portals[name].operating_limit) for name in names
        }
        for name, queue in self.queues.items():
            metrics.inbound_pull_lag.labels(portal=name).set_function(queue.lag)

    def _extra(self) -> dict[str, Any]:
        connector = self._settings.inbound.auth_connector
        return {"auth_connector": connector} if connector else {}

    async def _call(self, portal: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """One REST call inside the portal's rate limit and operating budget."""
        budget = self._budgets[portal]
        while (wait := budget.wait(method, time.monotonic())) > 0:
            self._metrics.throttle_waits.labels(reason="operating_budget").inc(wait)
            await asyncio.sleep(min(wait, 5.0))
        wait = self._limiters[portal].reserve(time.monotonic())
        if wait > 0:
            self._metrics.throttle_waits.labels(reason="rate_limit").inc(wait)
            await asyncio.sleep(wait)
        try:
            body = await self._client.call(portal, method, {**params, **self._extra()})
        except BitrixError as exc:
            status = "transport" if exc.http_status is None else f"{exc.http_status // 100}xx"
            self._metrics.api_requests.labels(method=method, status_class=status).inc()
            if isinstance(exc, Throttled):
                if exc.code == "OPERATION_TIME_LIMIT" or exc.http_status == 429:
                    budget.exceeded(method, time.monotonic(), exc.retry_after)
                else:
                    self._limiters[portal].saturated(time.monotonic())
            raise
        self._metrics.api_requests.labels(method=method, status_class="2xx").inc()
        budget.observe(method, body.get("time"), time.time(), time.monotonic())
        return body

    async def _reserved_process_ids(self, portal: str) -> list[str]:
        """Reservations nobody in this process made (an earlier process died holding them):
        `event.offline.list` ordered by PROCESS_ID descending shows reserved records first."""
        found: list[str] = []
        start = 0
        for _ in range(MAX_RECOVERY_PAGES):
            body = await self._call(
                portal, "event.offline.list", {"order": {"PROCESS_ID": "DESC"}, "start": start}
            )
            rows = body.get("result") or []
            for row in rows:
                process = str(row.get("PROCESS_ID") or "")
                if not process:
                    return found
                if process not in found:
                    found.append(process)
            if "next" not in body or not rows:
                return found
            start += LIST_PAGE
        return found

    async def pull_once(self, portal: str) -> int:
        """Fetch, produce and clear one batch of `portal`'s queue; the number of records
        handled (0: the queue is empty). Raises `BitrixError` or `KafkaUnavailable`."""
        queue = self.queues[portal]
        if not queue.recovered:
            queue.backlog = await self._reserved_process_ids(portal)
            queue.recovered = True
            if queue.backlog:
                logger.warning(
                    "portal %s: %d reserved batches left by an earlier process; taking them "
                    "over (events already in Kafka are written again with the same event_id)",
                    portal,
                    len(queue.backlog),
                    extra={"portal": portal},
                )
        if queue.uncleared:
            await self._clear(portal, queue)
        if queue.current is None and queue.backlog:
            queue.current, queue.adopted = queue.backlog.pop(0), True
        params: dict[str, Any] = {"clear": 0, "limit": self._limit}
        if queue.current is not None:
            params["process_id"] = queue.current
        result = (await self._call(portal, "event.offline.get", params)).get("result") or {}
        records = [r for r in result.get("events") or [] if isinstance(r, dict)]
        if not records:
            queue.current, queue.adopted, queue.oldest_ms = None, False, None
            if not queue.backlog:
                queue.empty_at = time.time()
            return 0
        process_id = queue.current or str(result.get("process_id") or "")
        queue.current = process_id
        queue.oldest_ms = _oldest(records)
        events, good_ids, bad_message_ids = self._parse(portal, records)
        await asyncio.to_thread(self._sink.commit, events)
        # From here on these records are in Kafka: a failure below must not fetch and
        # write them again, so the next round clears them first.
        queue.uncleared = tuple(good_ids)
        for event in events:
            self._metrics.inbound_produced.labels(MODE, event.kind, portal).inc()
        if bad_message_ids:
            await self._call(
                portal,
                "event.offline.error",
                {"process_id": process_id, "message_id": bad_message_ids},
            )
        await self._clear(portal, queue)
        # A process of ours reserved one batch, now cleared; an adopted one may have
        # reserved more (another limit): it is asked again until it comes back short.
        if not queue.adopted or len(records) < self._limit:
            queue.current, queue.adopted = None, False
        queue.oldest_ms = None
        return len(records)

    async def _clear(self, portal: str, queue: PortalQueue) -> None:
        if queue.uncleared and queue.current is not None:
            await self._call(
                portal,
                "event.offline.clear",
                {"process_id": queue.current, "id": list(queue.uncleared)},
            )
        queue.uncleared = ()

    def _parse(
        self, portal: str, records: list[dict[str, Any]]
    ) -> tuple[list[OperatorEvent], list[int], list[str]]:
        """(events, ids of the records they came from, MESSAGE_IDs of records refused)."""
        events: list[OperatorEvent] = []
        good: list[int] = []
        bad: list[str] = []
        for record in records:
            name = str(record.get("EVENT_NAME") or "").upper()
            kind = EVENT_KINDS.get(name, "unknown")
            try:
                parsed = events_from_offline_record(record, portal)
            except MalformedEvent as exc:
                reason = "not_connector_event" if kind == "unknown" else "malformed"
                self._metrics.inbound_refused.labels(MODE, kind, portal, reason).inc()
                logger.error(
                    "portal %s: offline record %s (%s) refused: %s; marked with "
                    "event.offline.error, it stays in the queue (event.offline.list)",
                    portal,
                    record.get("ID"),
                    name,
                    exc,
                    extra={"portal": portal},
                )
                bad.append(str(record.get("MESSAGE_ID") or ""))
                continue
            for event in parsed:
                self._metrics.inbound_received.labels(MODE, event.kind, portal).inc()
            events.extend(parsed)
            record_id = str(record.get("ID") or "")
            good.append(int(record_id) if record_id.isdigit() else 0)  # ID is an integer key
        return events, [i for i in good if i > 0], [m for m in bad if m]

    async def run(self, stop: threading.Event) -> None:
        """Pull every portal until `stop` is set; back off on failures, never give up."""
        interval = self._settings.inbound.pull_interval_s
        while not stop.is_set():
            busy = False
            for portal, queue in self.queues.items():
                if stop.is_set() or queue.retry_at > time.monotonic():
                    continue
                try:
                    handled = await self.pull_once(portal)
                except Throttled as exc:
                    # The portal's bucket is shared with the engine's calls: slow down
                    # (the limiter now counts it full), no alarm.
                    queue.retry_at = time.monotonic() + (exc.retry_after or 1.0)
                    logger.info("portal %s: pull throttled (%s)", portal, exc.code)
                    continue
                except (BitrixError, KafkaUnavailable) as exc:
                    queue.backoff = min(MAX_BACKOFF_S, max(1.0, queue.backoff * 2))
                    queue.retry_at = time.monotonic() + queue.backoff
                    what = "Kafka" if isinstance(exc, KafkaUnavailable) else "Bitrix24"
                    logger.warning(
                        "portal %s: pull waits %.0f s (%s: %s); nothing is cleared before "
                        "it is stored",
                        portal,
                        queue.backoff,
                        what,
                        exc,
                        extra={"portal": portal},
                    )
                    continue
                queue.backoff, queue.retry_at = 0.0, 0.0
                busy = busy or handled >= self._limit or queue.current is not None
            if not busy:
                await _pause(stop, interval)


def _oldest(records: list[dict[str, Any]]) -> int | None:
    stamps = []
    for record in records:
        try:
            stamps.append(datetime.fromisoformat(str(record.get("TIMESTAMP_X"))).timestamp())
        except ValueError:
            continue
    return int(min(stamps) * 1000) if stamps else None


async def _pause(stop: threading.Event, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not stop.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(min(0.1, deadline - time.monotonic()))


async def run_pull(
    settings: Settings,
    metrics: Metrics,
    store: TokenStore,
    stop: threading.Event,
    portals: Iterable[str] | None = None,
) -> None:
    """The pull loop with its own Bitrix24 client and transactional producer."""

    def on_refresh(result: str) -> None:
        metrics.token_refreshes.labels(result=result).inc()

    client: BitrixClient | None = None
    while client is None and not stop.is_set():
        try:
            await asyncio.to_thread(ensure_topic, settings)
            # Reads each portal's newest OAuth pair from the store (the tokens topic).
            client = BitrixClient(settings.portals, settings.http, store, on_refresh=on_refresh)
        except KafkaException as exc:
            logger.warning("pull waits for Kafka (%s)", exc.args[0])
            await _pause(stop, 5.0)
    if client is None:
        return
    sink = TransactionalSink(settings)
    try:
        puller = OfflinePuller(settings, metrics, client, sink, portals)
        await puller.run(stop)
    finally:
        await client.aclose()
        sink.close()


class PullThread:
    """The pull loop in a thread of the service (`IMCONNECTOR_INBOUND__PULL_IN_SERVICE`),
    with its own asyncio loop, Bitrix24 client and Kafka producer."""

    def __init__(self, settings: Settings, metrics: Metrics, store: TokenStore) -> None:
        self._settings = settings
        self._metrics = metrics
        self._store = store
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="inbound-pull", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(run_pull(self._settings, self._metrics, self._store, self._stop))
        except BaseException as exc:
            self.error = exc
            logger.exception("the inbound pull loop stopped")

    def start(self) -> PullThread:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
