"""The push endpoint: the handler URL of classic `event.bind` handlers.

Bitrix24 POSTs each event form-encoded (bitrix24/b24restdocs `api-reference/events/
index.md`, "What Comes to the Handler"); a request is taken only if its
`auth[application_token]` is the installed app's token for its `auth[member_id]`
(`api-reference/events/safe-event-handlers.md`), compared in constant time. The answer is
200 only once Kafka acknowledged every record (`AcknowledgedSink`); 503 when it did not.
Bitrix24 does not resend a failed event ("No retries", `events/index.md`), so a Kafka
outage loses pushed events: pull (`consumer.inbound.pull`) is the mode that loses nothing.

Every refusal has its own status and a one-line reason, and is counted
(`imconnector_inbound_events_refused_total{reason}`): rate_limited 429, too_large 413,
malformed 400/411/415, unknown_portal 403, bad_token 401, not_connector_event 400,
replayed 409 (an event id already stored), kafka_unavailable 503.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler

from consumer.errors import ConfigError
from consumer.inbound.payloads import MalformedEvent, events_from_data, parse_envelope, parse_form
from consumer.inbound.sink import AcknowledgedSink, KafkaUnavailable
from consumer.observability.metrics import Metrics
from consumer.settings import InboundSettings, PortalSettings

logger = logging.getLogger(__name__)

MODE = "push"
FORM = "application/x-www-form-urlencoded"


class ApplicationTokens:
    """Which configured portal a `member_id` is, and that portal's application token.

    A portal's `member_id` setting (default: its key) names it in events; its token comes
    from `application_token`, or from `application_token_file`, read again when the file
    changes (a reinstalled app gets a new token).
    """

    def __init__(self, portals: Mapping[str, PortalSettings]) -> None:
        self._portals = portals
        self._by_member: dict[str, str] = {}
        for name, cfg in portals.items():
            if cfg.application_token is not None and cfg.application_token_file:
                raise ConfigError(
                    f"portal {name!r} sets both application_token and application_token_file: "
                    "keep one"
                )
            self._by_member[(cfg.member_id or name).lower()] = name
        self._files: dict[str, tuple[float, bytes]] = {}
        self._lock = threading.Lock()

    def portal_for(self, member_id: str | None) -> str | None:
        """The portal key for `member_id`, None if no configured portal has it."""
        return None if not member_id else self._by_member.get(member_id.lower())

    def expected(self, portal: str) -> bytes | None:
        """The portal's application token, None when none is configured."""
        cfg = self._portals[portal]
        if cfg.application_token is not None:
            return cfg.application_token.get_secret_value().encode()
        path = cfg.application_token_file
        if not path:
            return None
        try:
            stamp = os.stat(path).st_mtime
        except OSError:
            return None
        with self._lock:
            cached = self._files.get(portal)
            if cached is None or cached[0] != stamp:
                with open(path, "rb") as handle:
                    cached = (stamp, handle.read().strip())
                self._files[portal] = cached
        return cached[1] or None

    def matches(self, portal: str, presented: str | None) -> bool:
        """True when `presented` is the portal's token (constant time)."""
        expected = self.expected(portal)
        if expected is None or presented is None:
            return False
        return hmac.compare_digest(expected, presented.encode())


class ReplayGuard:
    """The last `capacity` event ids stored, and those being stored right now.

    `claim` hands out only ids that are neither, so two copies of one event that arrive
    together are not both written; `confirm` remembers them once stored, `release`
    forgets a claim whose store failed (Kafka down), so the same event may come again.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._stored: OrderedDict[str, None] = OrderedDict()
        self._claimed: set[str] = set()
        self._lock = threading.Lock()

    def claim(self, event_ids: Iterable[str]) -> set[str]:
        with self._lock:
            fresh = {i for i in event_ids if i not in self._stored and i not in self._claimed}
            self._claimed |= fresh
            return fresh

    def confirm(self, event_ids: Iterable[str]) -> None:
        with self._lock:
            for event_id in event_ids:
                self._claimed.discard(event_id)
                self._stored[event_id] = None
            while len(self._stored) > self._capacity:
                self._stored.popitem(last=False)

    def release(self, event_ids: Iterable[str]) -> None:
        with self._lock:
            self._claimed.difference_update(event_ids)


class RequestRate:
    """A token bucket over all requests: `rate` per second, up to `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._updated = time.monotonic()
        self._lock = threading.Lock()

    def try_take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
            self._updated = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True


class PushHandler:
    """Turns one POST into stored `OperatorEvent`s, or a refusal that says why."""

    def __init__(
        self,
        settings: InboundSettings,
        tokens: ApplicationTokens,
        sink: AcknowledgedSink,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._tokens = tokens
        self._sink = sink
        self._metrics = metrics
        self._rate = RequestRate(settings.push_rate, settings.push_burst)
        self._replays = ReplayGuard(settings.replay_window)

    def _refuse(
        self, status: int, reason: str, text: str, *, kind: str = "unknown", portal: str = "unknown"
    ) -> tuple[int, str]:
        self._metrics.inbound_refused.labels(MODE, kind, portal, reason).inc()
        level = logging.WARNING if reason in ("bad_token", "unknown_portal") else logging.INFO
        logger.log(level, "pushed event refused (%s, HTTP %d): %s", reason, status, text)
        return status, text

    def handle(self, request: BaseHTTPRequestHandler) -> tuple[int, str]:
        """Read and judge one request; `(HTTP status, one-line answer)`."""
        if not self._rate.try_take():
            return self._refuse(
                429,
                "rate_limited",
                f"more than {self._settings.push_rate:g} requests/s "
                "(IMCONNECTOR_INBOUND__PUSH_RATE): slow down",
            )
        length = request.headers.get("Content-Length", "")
        if not length.isdigit():
            return self._refuse(411, "malformed", "a Content-Length header is required")
        if int(length) > self._settings.max_body_bytes:
            request.close_connection = True  # the body is not read
            return self._refuse(
                413,
                "too_large",
                f"body of {length} bytes is over the {self._settings.max_body_bytes}-byte "
                "limit (IMCONNECTOR_INBOUND__MAX_BODY_BYTES)",
            )
        body = request.rfile.read(int(length))
        media = (request.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if media != FORM:
            return self._refuse(
                415, "malformed", f"Content-Type {media or 'none'!r}: Bitrix24 sends {FORM}"
            )
        try:
            envelope = parse_envelope(parse_form(body.decode("utf-8")))
        except UnicodeDecodeError:
            return self._refuse(400, "malformed", "the body is not UTF-8")
        except MalformedEvent as exc:
            return self._refuse(400, "malformed", f"not a Bitrix24 event: {exc}")
        portal = self._tokens.portal_for(envelope.member_id)
        if portal is None:
            return self._refuse(
                403,
                "unknown_portal",
                "auth[member_id] names no configured portal (IMCONNECTOR_PORTALS__<key>__"
                "MEMBER_ID)",
            )
        if self._tokens.expected(portal) is None:
            return self._refuse(
                403,
                "unknown_portal",
                f"portal {portal!r} has no application token configured "
                f"(IMCONNECTOR_PORTALS__{portal.upper()}__APPLICATION_TOKEN or _FILE)",
                portal=portal,
            )
        if not self._tokens.matches(portal, envelope.application_token):
            return self._refuse(
                401,
                "bad_token",
                "auth[application_token] is missing or not the installed app's token",
                portal=portal,
            )
        kind = envelope.kind
        if kind is None:
            return self._refuse(
                400,
                "not_connector_event",
                f"{envelope.event} is not an OnImConnector* event: bind only those here",
                portal=portal,
            )
        occurred_at = (envelope.ts if envelope.ts is not None else int(time.time())) * 1000
        try:
            events = events_from_data(
                kind, envelope.data, portal=portal, occurred_at=occurred_at, source="push"
            )
        except MalformedEvent as exc:
            return self._refuse(400, "malformed", str(exc), kind=kind, portal=portal)
        self._metrics.inbound_received.labels(MODE, kind, portal).inc(len(events))
        fresh_ids = self._replays.claim(e.event_id for e in events)
        fresh = [e for e in events if e.event_id in fresh_ids]
        replayed = len(events) - len(fresh)
        if not fresh:
            return self._refuse(
                409, "replayed", "every event in it was stored already", kind=kind, portal=portal
            )
        try:
            self._sink.store(fresh)
        except KafkaUnavailable as exc:
            self._replays.release(fresh_ids)
            return self._refuse(
                503, "kafka_unavailable", f"not stored, Kafka: {exc}", kind=kind, portal=portal
            )
        self._replays.confirm(fresh_ids)
        self._metrics.inbound_produced.labels(MODE, kind, portal).inc(len(fresh))
        if replayed:
            self._metrics.inbound_refused.labels(MODE, kind, portal, "replayed").inc(replayed)
        note = f" ({replayed} already stored)" if replayed else ""
        return 200, f"stored {len(fresh)} events{note}"
