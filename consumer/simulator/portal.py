"""One simulated Bitrix24 portal: REST/OAuth calls pass limits, faults and auth here, one lock.

No HTTP: the server hands in a method and parameters and gets back a `RestReply`
(status + JSON body, or a transport fault for the server to act out).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from consumer.simulator.batch import (
    BATCH_MAX_LENGTH,
    BATCH_METHOD,
    SubOutcome,
    SubRequest,
    batch_result,
    halts_on_error,
    logged_params,
    parse_commands,
    substitute,
)
from consumer.simulator.calllog import CallLog, CallRecord
from consumer.simulator.clock import Clock, system_clock
from consumer.simulator.config import SimulatorConfig
from consumer.simulator.errors import (
    ERROR_BATCH_LENGTH_EXCEEDED,
    ERROR_BATCH_METHOD_NOT_ALLOWED,
    ERROR_METHOD_NOT_FOUND,
    EXPIRED_TOKEN,
    INTERNAL_SERVER_ERROR,
    OPERATION_TIME_LIMIT,
    QUERY_LIMIT_EXCEEDED,
    WRONG_AUTH_TYPE,
    RestError,
    argument_error,
)
from consumer.simulator.events import EventHub, Paged, message_add_data, waiting_chats
from consumer.simulator.faults import FaultKind, FaultPlan, FaultSettings
from consumer.simulator.limits import LeakyBucket, OperatingBudget, OperatingReading
from consumer.simulator.oauth import OAuthError, OAuthIdentity, TokenStore
from consumer.simulator.openlines import OpenLines, RequestDied
from consumer.simulator.sessions import SessionReads

LEGACY_SHAPE_METHODS = frozenset(
    {
        "imconnector.send.messages",
        "imconnector.update.messages",
        "imconnector.delete.messages",
        "imconnector.send.status.delivery",
        "imconnector.send.status.reading",
    }
)
"""Methods whose whole-call failures older servers returned as HTTP 200 + `SUCCESS: false`."""

AUTH_DESCRIPTIONS = {
    "NO_AUTH_FOUND": "Wrong authorization data",
    "expired_token": "The access token provided has expired.",
    "invalid_token": "The access token provided is invalid.",
}
TOKEN_ENDPOINT = "oauth.token"  # noqa: S105 - the call-log name of the token endpoint
TOKEN_PARAMS = ("AUTH", "ACCESS_TOKEN")
"""Where a request may carry its token; handlers never see these parameters."""

Handler = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class RestReply:
    """What to answer: a JSON body with a status, or a `transport_fault` (hang/reset) to act out."""

    status: int
    body: dict[str, Any]
    transport_fault: FaultKind | None = None
    hang_seconds: float = 0.0
    location: str | None = None  # a redirect's target (a moved portal)


@dataclass(frozen=True)
class _Invocation:
    """One handler run: its result or error, and the execution time charged for it."""

    result: Any
    error: RestError | None
    took: float
    reading: OperatingReading


def _error_body(code: str, description: str) -> dict[str, Any]:
    return {"error": code, "error_description": description}


def _refusal(exc: RestError) -> RestReply:
    return RestReply(exc.status, _error_body(exc.code, exc.description))


def _not_allowed_in_batch() -> RestError:
    return RestError(ERROR_BATCH_METHOD_NOT_ALLOWED, "Method is not allowed for batch usage.", 405)


def _without_token(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k not in TOKEN_PARAMS}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds")


class Portal:
    """State and behaviour of one portal; every public method is thread-safe."""

    def __init__(self, config: SimulatorConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or system_clock
        self.base_url = f"http://{config.host}:{config.port}"
        self.lock = threading.Lock()
        self.openlines = OpenLines(
            language=config.language,
            clock=lambda: self.clock(),
            session_idle_close_s=config.session_idle_close_s,
        )
        self.moved_to = config.moved_to
        self.move_status = config.move_status
        self.tokens = TokenStore(
            OAuthIdentity(
                client_id=config.client_id,
                client_secret=config.client_secret,
                member_id=config.member_id,
                user_id=config.admin_user_id,
            ),
            access_token_ttl=config.access_token_ttl,
        )
        self.bucket = LeakyBucket(
            config.rate_limit_drain, config.rate_limit_burst, enabled=config.rate_limit_enabled
        )
        self.budget = OperatingBudget(config.operating_limit)
        self.operating_cost_per_element = config.operating_cost_per_element
        self.legacy_errors = config.legacy_errors
        self.batch_imconnector = config.batch_imconnector
        self.faults = FaultPlan(config.fault_settings())
        self.openlines.between_writes = self._between_writes
        # imopenlines.session.history.get / dialog.get, as the token's user (all tokens
        # are the administrator's: OAuthIdentity.user_id).
        self.reads = SessionReads(
            self.openlines,
            config.admin_user_id,
            access=config.openlines_access,
            enabled=config.readback_methods,
            clock=lambda: self.clock(),
        )
        self.calls = CallLog(config.call_log_limit)
        for connector, line in config.preset_lines:
            self.openlines.preset_line(connector, line, chat_group=config.chat_group)
        # event.* methods and the events an operator's answer raises (simulator/events.py).
        self.events = EventHub(self.clock, self._event_auth)

    @property
    def client_endpoint(self) -> str:
        """What OAuth answers report as `client_endpoint`: the new address after a move."""
        return f"{(self.moved_to or self.base_url).rstrip('/')}/rest/"

    # -- domain moves ----------------------------------------------------------------------

    def moved_location(self, host: str, prefix: str, rest_path: str, query: str) -> str | None:
        """Where a moved portal sends a `/rest/` call that reached its old address
        (`host`, path `prefix` before `/rest/`); None when the call is for this address."""
        with self.lock:
            target = self.moved_to
        if target is None:
            return None
        parts = urlsplit(target)
        if host == parts.netloc and prefix == parts.path.rstrip("/"):
            return None
        return f"{target.rstrip('/')}/rest/{rest_path}" + (f"?{query}" if query else "")

    def moved_reply(self, method: str, location: str) -> RestReply:
        """The redirect a moved portal answers (logged like any call; nothing applied)."""
        with self.lock:
            status = self.move_status
            self.calls.append(
                monotonic=time.monotonic(),
                wall_time=self.clock(),
                method=method.lower(),
                params={},
                http_status=status,
                error="MOVED",
                fault=None,
                applied=False,
            )
        return RestReply(status, {}, location=location)

    def set_move(self, changes: dict[str, Any]) -> dict[str, Any]:
        """`{"to": base URL or null, "status": 301|302|307|308}`: move the portal (or not)."""
        unknown = sorted(set(changes) - {"to", "status"})
        if unknown:
            raise ValueError(f"unknown move settings: {', '.join(unknown)}")
        status = int(changes.get("status", self.move_status))
        if status not in (301, 302, 307, 308):
            raise ValueError(f"status must be 301, 302, 307 or 308, got {status}")
        target = changes.get("to", self.moved_to)
        if target is not None and not urlsplit(str(target)).netloc:
            raise ValueError(f"'to' must be an absolute URL, got {target!r}")
        with self.lock:
            self.moved_to = None if target is None else str(target)
            self.move_status = status
            return {"to": self.moved_to, "status": self.move_status}

    # -- REST -----------------------------------------------------------------------------

    def latency_for(self, method: str) -> float:
        """Seconds the server should wait before handling `method` (outside the lock)."""
        with self.lock:
            return self.faults.latency_seconds(method)

    def handle_rest(
        self,
        method: str,
        params: dict[str, Any],
        bearer: str | None = None,
        *,
        webhook: bool = False,
    ) -> RestReply:
        """Run one `/rest/<method>` call (`batch` included).

        Order: leaky bucket → fault (phase before) → auth → operating budget → method
        → fault (phase after). A batch takes one bucket unit and one fault draw; its
        sub-calls pass the budget one by one and are logged after the batch's record.

        `params` must already have upper-cased top-level keys.
        """
        method = method.lower()
        token = str(params.get("AUTH") or params.get("ACCESS_TOKEN") or bearer or "")
        # The handlers never see the token; the call log keeps the key, redacted.
        method_params = _without_token(params)
        with self.lock:
            now = self.clock()
            monotonic = time.monotonic()
            fault: FaultKind | None = None
            outcomes: list[SubOutcome] = []
            if not self.bucket.try_take(now):
                reply = RestReply(503, _error_body(QUERY_LIMIT_EXCEEDED, "Too many requests"))
                applied = False
            else:
                fault = self.faults.draw(method)
                if fault is not None and self.faults.settings.fault_phase == "before":
                    reply, applied = self._fault_reply(fault), False
                else:
                    reply, applied, outcomes = self._run(method, method_params, token, now, webhook)
                if fault is not None:
                    reply = self._fault_reply(fault)
            self._log_call(monotonic, now, method, params, reply, fault, applied, outcomes)
            return reply

    def _run(
        self, method: str, params: dict[str, Any], token: str, now: float, webhook: bool
    ) -> tuple[RestReply, bool, list[SubOutcome]]:
        """Execute the call (a batch's sub-calls in order); a request that dies between two
        writes keeps what it wrote and answers 500, as PHP does after a fatal error."""
        try:
            if method == BATCH_METHOD:
                reply, outcomes = self._execute_batch(params, token, now, webhook)
                return reply, any(outcome.applied for outcome in outcomes), outcomes
            reply, applied = self._execute(method, params, token, now, webhook)
            return reply, applied, []
        except RequestDied:
            return self._fault_reply("error"), True, []

    def _between_writes(self) -> None:
        """Between a message and its CONNECTOR_MID (`OpenLines.between_writes`)."""
        if self.faults.dies_between_writes("imconnector.send.messages"):
            raise RequestDied

    def _log_call(
        self,
        monotonic: float,
        now: float,
        method: str,
        params: dict[str, Any],
        reply: RestReply,
        fault: FaultKind | None,
        applied: bool,
        outcomes: list[SubOutcome],
    ) -> None:
        """One record for the request, then one per executed batch sub-call pointing at it."""
        record = self.calls.append(
            monotonic=monotonic,
            wall_time=now,
            method=method,
            params=logged_params(params) if method == BATCH_METHOD else params,
            http_status=None if reply.transport_fault else reply.status,
            error=None if reply.transport_fault else self._reply_error(reply),
            fault=fault,
            applied=applied,
        )
        for outcome in outcomes:
            self.calls.append(
                monotonic=monotonic,
                wall_time=now,
                method=outcome.request.method,
                params=outcome.request.params,
                http_status=record.http_status,
                error=None if outcome.error is None else outcome.error.code,
                fault=None,
                applied=outcome.applied,
                batch=record.index,
            )

    @staticmethod
    def _reply_error(reply: RestReply) -> str | None:
        error = reply.body.get("error")
        if error is None and isinstance(reply.body.get("result"), dict):
            error = reply.body["result"].get("error")  # failures reported inside `result`
        return None if error is None else str(error)

    def _fault_reply(self, fault: FaultKind) -> RestReply:
        if fault == "error":
            return RestReply(500, _error_body(INTERNAL_SERVER_ERROR, "Internal server error"))
        return RestReply(
            0, {}, transport_fault=fault, hang_seconds=self.faults.settings.hang_seconds
        )

    def _execute(
        self, method: str, params: dict[str, Any], token: str, now: float, webhook: bool
    ) -> tuple[RestReply, bool]:
        try:
            if webhook:
                raise self._webhook_refusal(method)
            self._authenticate(token, now)
            handler = self._handler(method, now)
        except RestError as exc:
            return _refusal(exc), False
        run = self._invoke(method, handler, params, now)
        timing = self._timing(now, now + run.took, run.reading)
        if run.error is not None:
            return self._error_reply(method, run.error, timing), False
        if isinstance(run.result, Paged):  # list methods put `total`/`next` beside `result`
            paged = {"result": run.result.items, "total": run.result.total}
            if run.result.next is not None:
                paged["next"] = run.result.next
            return RestReply(200, {**paged, "time": timing}), True
        return RestReply(200, {"result": run.result, "time": timing}), True

    def _execute_batch(
        self, params: dict[str, Any], token: str, now: float, webhook: bool
    ) -> tuple[RestReply, list[SubOutcome]]:
        """Auth once, then the sub-calls in order; `halt` stops at the first failure."""
        requests = parse_commands(params.get("CMD"))
        try:
            if not webhook:  # a webhook batch runs, its imconnector.* sub-calls do not
                self._authenticate(token, now)
            if not requests:
                raise argument_error("cmd")
        except RestError as exc:
            return _refusal(exc), []
        halt = halts_on_error(params)
        outcomes: list[SubOutcome] = []
        finish = now
        for request in requests[:BATCH_MAX_LENGTH]:
            outcome = self._execute_sub_call(substitute(request, outcomes), now, finish, webhook)
            outcomes.append(outcome)
            if outcome.timing is not None:
                finish = outcome.timing["finish"]
            if halt and outcome.error is not None:
                break
        else:
            # Past 50, each key fails on its own; the request still answers HTTP 200.
            too_many = RestError(ERROR_BATCH_LENGTH_EXCEEDED, "Max batch length exceeded")
            outcomes += [SubOutcome(r, error=too_many) for r in requests[BATCH_MAX_LENGTH:]]
        # The outer call is not charged to any budget (§6.2): its reading stays empty.
        timing = self._timing(now, finish, self.budget.reading(BATCH_METHOD, now))
        return RestReply(200, {"result": batch_result(outcomes), "time": timing}), outcomes

    def _execute_sub_call(
        self, request: SubRequest, now: float, start: float, webhook: bool
    ) -> SubOutcome:
        """One sub-call; every failure, whatever its usual shape, goes to `result_error`."""
        try:
            handler = self._batch_handler(request.method, now, webhook)
        except RestError as exc:
            return SubOutcome(request, error=exc)
        run = self._invoke(request.method, handler, _without_token(request.params), now)
        if run.error is not None:
            return SubOutcome(request, error=run.error)
        timing = self._timing(start, start + run.took, run.reading)
        return SubOutcome(request, result=run.result, timing=timing, applied=True)

    def _batch_handler(self, method: str, now: float, webhook: bool) -> Handler:
        if method == BATCH_METHOD:
            raise _not_allowed_in_batch()
        if webhook:
            raise self._webhook_refusal(method)
        return self._handler(method, now, in_batch=True)

    @staticmethod
    def _webhook_refusal(method: str) -> RestError:
        # event.* checks the auth type first too (rest/lib/api/event.php: AuthTypeException).
        if method.startswith(("imconnector.", "event.")):
            return RestError(WRONG_AUTH_TYPE, "Application context required", 403)
        return RestError(ERROR_METHOD_NOT_FOUND, "Method not found!", 404)

    def _authenticate(self, token: str, now: float) -> None:
        """Raise the 401 a bad, unknown or (fault-)expired token gets."""
        auth_error = self.tokens.check(token, now)
        if auth_error is None and self.faults.token_expires_now():
            self.tokens.expire(token, now)
            auth_error = EXPIRED_TOKEN
        if auth_error is not None:
            raise RestError(auth_error, AUTH_DESCRIPTIONS[auth_error], 401)

    def _handler(self, method: str, now: float, *, in_batch: bool = False) -> Handler:
        """The method's handler, if it exists, may run here and has operating budget left."""
        handler = (
            self.openlines.methods.get(method)
            or self.events.methods.get(method)
            or self.reads.methods.get(method)
        )
        if handler is None:
            raise RestError(ERROR_METHOD_NOT_FOUND, "Method not found!", 404)
        if in_batch and method.startswith("imconnector.") and not self.batch_imconnector:
            raise _not_allowed_in_batch()
        if not self.budget.allows(method, now):
            description = "Method is blocked due to operation time limit."
            raise RestError(OPERATION_TIME_LIMIT, description, 429)
        return handler

    def _invoke(
        self, method: str, handler: Handler, params: dict[str, Any], now: float
    ) -> _Invocation:
        started = time.perf_counter()
        try:
            result: Any = handler(params)
            error = None
        except RestError as exc:
            result, error = None, exc
        cost = self.operating_cost_per_element * self.openlines.element_count(params)
        reading = self.budget.spend(method, cost, now)
        # Execution time: what the method "took" in simulated seconds, at least the real time.
        took = max(cost, time.perf_counter() - started)
        return _Invocation(result=result, error=error, took=took, reading=reading)

    def _error_reply(self, method: str, exc: RestError, timing: dict[str, Any]) -> RestReply:
        failure = {"error": exc.code, "error_description": exc.description}
        if exc.in_result:
            return RestReply(200, {"result": {"result": False, **failure}, "time": timing})
        if self.legacy_errors and method in LEGACY_SHAPE_METHODS:
            return RestReply(200, {"result": {"SUCCESS": False, **failure}, "time": timing})
        return RestReply(exc.status, failure)

    @staticmethod
    def _timing(start: float, finish: float, reading: OperatingReading) -> dict[str, Any]:
        duration = finish - start
        return {
            "start": start,
            "finish": finish,
            "duration": duration,
            "processing": duration,
            "date_start": _iso(start),
            "date_finish": _iso(finish),
            "operating_reset_at": int(reading.reset_at),
            "operating": reading.operating,
        }

    # -- OAuth ------------------------------------------------------------------------------

    def handle_token(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The `/oauth/token/` endpoint (refresh grant); returns (status, JSON body)."""
        with self.lock:
            now = self.clock()
            try:
                status, body = 200, self.tokens.refresh(params, now, self.client_endpoint)
                error = None
            except OAuthError as exc:
                status, body = exc.status, _error_body(exc.code, exc.description)
                error = exc.code
            self.calls.append(
                monotonic=time.monotonic(),
                wall_time=now,
                method=TOKEN_ENDPOINT,
                params=dict(params),
                http_status=status,
                error=error,
                fault=None,
                applied=status == 200,
            )
            return status, body

    def issue_tokens(self) -> dict[str, Any]:
        """A fresh access+refresh pair, as an app install would hand over (token-endpoint shape)."""
        with self.lock:
            return self.tokens.issue(self.clock(), self.client_endpoint)

    def expire_tokens(self) -> int:
        """Expire every current access token (refresh tokens stay usable)."""
        with self.lock:
            return self.tokens.expire_all(self.clock())

    # -- admin and inspection ------------------------------------------------------------------

    def update_faults(self, changes: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            return self.faults.update(changes).as_dict()

    def fault_settings(self) -> FaultSettings:
        with self.lock:
            return self.faults.settings

    def update_limits(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Change rate/operating settings at runtime; unknown keys are refused."""
        setters = {
            "rate_limit_enabled": lambda v: setattr(self.bucket, "enabled", bool(v)),
            "rate_limit_drain": lambda v: setattr(self.bucket, "drain", float(v)),
            "rate_limit_burst": lambda v: setattr(self.bucket, "burst", int(v)),
            "operating_limit": lambda v: setattr(self.budget, "limit", float(v)),
            "operating_cost_per_element": lambda v: setattr(
                self, "operating_cost_per_element", float(v)
            ),
            "legacy_errors": lambda v: setattr(self, "legacy_errors", bool(v)),
            "batch_imconnector": lambda v: setattr(self, "batch_imconnector", bool(v)),
            "session_idle_close_s": lambda v: setattr(
                self.openlines, "session_idle_close_s", float(v)
            ),
            "openlines_access": lambda v: self.reads.set_access(str(v)),
            "readback_methods": lambda v: setattr(self.reads, "enabled", bool(v)),
        }
        unknown = sorted(set(changes) - set(setters))
        if unknown:
            raise ValueError(f"unknown limit settings: {', '.join(unknown)}")
        with self.lock:
            for key, value in changes.items():
                setters[key](value)
            return self._limits()

    def limits(self) -> dict[str, Any]:
        with self.lock:
            return self._limits()

    def _limits(self) -> dict[str, Any]:
        return {
            "rate_limit_enabled": self.bucket.enabled,
            "rate_limit_drain": self.bucket.drain,
            "rate_limit_burst": self.bucket.burst,
            "rate_limit_level": round(self.bucket.level(self.clock()), 6),
            "operating_limit": self.budget.limit,
            "operating_cost_per_element": self.operating_cost_per_element,
            "legacy_errors": self.legacy_errors,
            "batch_imconnector": self.batch_imconnector,
            "session_idle_close_s": self.openlines.session_idle_close_s,
            "openlines_access": self.reads.access,
            "readback_methods": self.reads.enabled,
        }

    def post_operator_message(self, chat_id: int, text: str) -> dict[str, Any]:
        """An operator message in a chat, awaiting send.status.delivery (see OpenLines)."""
        with self.lock:
            return self.openlines.post_operator_message(chat_id, text)

    def operator_answer(
        self, chat_id: int | None, text: str, author_id: int = 1
    ) -> dict[str, Any] | None:
        """An operator answers in chat `chat_id` (None: one whose customer waits, if any):
        the message waits for send.status.delivery and OnImConnectorMessageAdd is raised."""
        with self.lock:
            if chat_id is None:
                waiting = waiting_chats(iter(self.openlines.chats.values()))
                if not waiting:
                    return None
                chat_id = waiting[0].chat_id
            posted = self.openlines.post_operator_message(chat_id, text, author_id)
            data = message_add_data(posted, text, author_id)
            self.events.raise_event("ONIMCONNECTORMESSAGEADD", data, author_id)
            return posted

    def _event_auth(self, user_id: int) -> dict[str, Any]:
        """An event's `auth` block: a pair minted for the user who caused it (events/index.md
        "Parameter auth"); called with the lock held."""
        issued = self.tokens.issue(self.clock(), self.client_endpoint)
        return {**issued, "user_id": user_id}

    def call_records(self, since: int = 0, method: str | None = None) -> list[CallRecord]:
        with self.lock:
            return self.calls.records(since, method)

    def state(self) -> dict[str, Any]:
        """A JSON-ready snapshot of connectors, lines, data, users and chats with their messages."""
        with self.lock:
            return self.openlines.snapshot()

    def reset(self) -> None:
        """Forget calls, chats and limit counters; keep tokens, connectors, lines and settings
        (event bindings too: the offline queue and the pushes made are forgotten)."""
        with self.lock:
            self.calls.clear()
            self.openlines.clear_chats()
            self.events.offline.clear()
            self.events.deliveries.clear()
            self.bucket.reset()
            self.budget.reset()
