"""Dispatch: runs coalesced Bitrix24 requests on an asyncio loop in its own thread.

The engine hands over `Batch`es (one method, one portal/connector/line, the head call of
several chats, each chat at most once) and collects `BatchDone`s. Here live the portal
policies (leaky bucket, operating budget, circuit breaker, retries with full jitter, the
token refresh in the client) and the mapping of per-element results back to events.
Reads that look a send of unknown outcome up (`readback.READ_METHODS`) are calls too:
several chats' reads share one REST `batch` request, each coming back with its `result`.
With `reconcile_sends` on, a send of unknown outcome (a timeout, reset, 5xx or unreadable
answer after it left) is not sent again here: it comes back as `UNKNOWN_OUTCOME`, and the
engine looks it up before it resends.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Self

from consumer.bitrix.classify import (
    AUTH_CODES,
    THROTTLED_CODES,
    TRANSIENT_CODES,
    batch_results,
    element_result_data,
    element_results,
)
from consumer.bitrix.client import BitrixClient, batch_safe
from consumer.bitrix.oauth import TokenStore
from consumer.bitrix.readback import READ_METHODS
from consumer.core.mapping import RENAME, SEND
from consumer.core.state import PendingCall
from consumer.dispatch.batch import Batch, BatchDone, CallResult, request_params
from consumer.dispatch.portals import PortalPolicies, Revoked
from consumer.errors import (
    AmbiguousError,
    BitrixError,
    CausalWait,
    ConfigError,
    PermanentError,
    Throttled,
    TransientError,
)
from consumer.observability.metrics import Metrics
from consumer.observability.tracing import request_span
from consumer.settings import RetrySettings, Settings

logger = logging.getLogger(__name__)

BATCH_LIMIT = 50  # sub-calls per REST `batch` request (reference §1 item 8)
# A read's sub-call that failed with one of these is run again on its own (classified,
# retried, refreshed there); any other refusal of a read is final.
RETRIED_IN_BATCH = (
    THROTTLED_CODES
    | AUTH_CODES
    | TRANSIENT_CODES
    | {
        "MISSING_ELEMENT_RESULT",
        "BATCH_SUBCALL_FAILED",
        "ERROR_BATCH_METHOD_NOT_ALLOWED",
        "ERROR_BATCH_LENGTH_EXCEEDED",
    }
)
# The error class of a send that may or may not have been applied, handed back to be
# looked up on the portal (reconciliation on) instead of being resent here.
UNKNOWN_OUTCOME = "unknown_outcome"
# A portal answering one of these (for the whole batch or a sub-call) does not run
# `imconnector.*` inside `batch`; whether real portals do is unconfirmed (reference §1.8).
BATCH_REFUSED = frozenset(
    {
        "ERROR_BATCH_METHOD_NOT_ALLOWED",
        "ERROR_METHOD_NOT_FOUND",
        "WRONG_AUTH_TYPE",
        "ERROR_BATCH_LENGTH_EXCEEDED",
    }
)


class Dispatcher:
    """Owns the asyncio loop thread that talks to Bitrix24."""

    def __init__(
        self,
        client_factory: Callable[[], BitrixClient],
        retry: RetrySettings,
        metrics: Metrics,
        *,
        max_in_flight: int = 32,
        unknown_outcome_policy: str = "resend",
        reconcile_sends: bool = False,
        operating_limit: float = 480.0,
        batch_renames: bool = True,
    ) -> None:
        self._client_factory = client_factory
        self._client: BitrixClient | None = None
        self._retry = retry
        self._metrics = metrics
        self._max_in_flight = max_in_flight
        self._policy = unknown_outcome_policy
        self._reconcile = reconcile_sends
        self._operating_limit = operating_limit
        self._done: queue.SimpleQueue[BatchDone] = queue.SimpleQueue()
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._run_loop, name="dispatch", daemon=True)
        self._policies = PortalPolicies(
            lambda: self._client.portals if self._client is not None else {},
            metrics,
            slots=max_in_flight,
            operating_limit=operating_limit,
        )
        self._portal_in_flight: dict[str, int] = {}
        self._revoked: set[int] = set()  # epochs of revoked partitions: their calls stay
        self._tasks: set[asyncio.Future[None]] = set()
        self._in_flight = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._batch_renames = batch_renames
        self._batch_refused: set[str] = set()  # portals that refused `batch` for renames

    @classmethod
    def from_settings(
        cls, settings: Settings, metrics: Metrics, store: TokenStore, **extra: Any
    ) -> Self:
        """The dispatcher `settings` describe, its client keeping OAuth pairs in `store`."""

        def on_refresh(result: str) -> None:
            metrics.token_refreshes.labels(result=result).inc()

        def on_move(portal: str) -> None:
            metrics.portal_moves.labels(portal=portal).inc()

        for portal in settings.portals:  # at 0, so increase() sees the first move too
            metrics.portal_moves.labels(portal=portal)

        return cls(
            lambda: BitrixClient(
                settings.portals, settings.http, store, on_refresh=on_refresh, on_move=on_move
            ),
            settings.retry,
            metrics,
            max_in_flight=settings.engine.max_in_flight_requests,
            unknown_outcome_policy=settings.engine.unknown_outcome_policy,
            reconcile_sends=settings.engine.reconcile_sends,
            batch_renames=settings.engine.batch_renames,
            **extra,
        )

    # -- engine side (any thread) ------------------------------------------------------
    def start(self) -> None:
        """Start the loop thread and build the HTTP client on it."""
        self._loop_thread.start()
        asyncio.run_coroutine_threadsafe(self._setup(), self._loop).result(timeout=30)

    def submit(self, batch: Batch) -> None:
        """Queue `batch` for sending; its `BatchDone` shows up in `drain()`."""
        with self._lock:
            self._in_flight += 1
            self._portal_in_flight[batch.portal] = self._portal_in_flight.get(batch.portal, 0) + 1
        self._metrics.calls_in_flight.inc(len(batch.calls))
        for _, call in batch.calls:
            if call.cleaned:  # counted when the call is first sent
                self._metrics.count_cleaned(call)
        future = asyncio.run_coroutine_threadsafe(self._run(batch), self._loop)
        future.add_done_callback(lambda f: f.cancelled() or f.exception())

    def drain(self) -> list[BatchDone]:
        """Every finished batch since the last call (non-blocking)."""
        out: list[BatchDone] = []
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                return out

    def wait(self, timeout: float) -> bool:
        """Block until a batch finishes or `timeout` passes; True if one finished."""
        fired = self._wake.wait(timeout)
        self._wake.clear()
        return fired

    @property
    def in_flight(self) -> int:
        """Batches submitted and not yet drained."""
        with self._lock:
            return self._in_flight

    def in_flight_by_portal(self) -> dict[str, int]:
        """Batches submitted and not yet finished, per portal."""
        with self._lock:
            return dict(self._portal_in_flight)

    def set_share(self, share: float) -> None:
        """This replica's part of every portal's limits (the part of the source partitions it
        owns); a portal with a fixed `rate_share` keeps its own."""
        if self._loop_thread.is_alive():
            self._loop.call_soon_threadsafe(self._policies.set_share, share)

    def revoke(self, epochs: set[int]) -> None:
        """Calls of these partition assignments are never sent from now on: those still
        waiting for a slot or a limit come back `cancelled` (the next owner sends them)."""
        with self._lock:
            self._revoked |= epochs

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel what is left and stop the loop thread."""
        if not self._loop_thread.is_alive():
            if not self._loop.is_closed() and not self._loop.is_running():
                self._loop.close()  # never started (the engine stopped before assignment)
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        try:
            fut.result(timeout=timeout)
        except Exception:  # noqa: BLE001 - best effort on the way out
            logger.warning("dispatcher did not shut down cleanly")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(timeout=timeout)
        if not self._loop_thread.is_alive():
            self._loop.close()

    def portal_has_capacity(self, portal: str) -> bool:
        """False while a batch for `portal` waits on its limits: the engine then lets calls
        pile up in the chats' outboxes, so the next request carries a full batch."""
        return self._policies.has_capacity(portal)

    def rename_batch_limit(self, portal: str) -> int:
        """How many `chat.name.set` calls of `portal` may share one request (via `batch`)."""
        if self._batch_renames and portal not in self._batch_refused:
            return BATCH_LIMIT
        return 1

    def breaker_states(self) -> dict[str, int]:
        """Portal -> breaker state (for metrics and tests)."""
        return self._policies.breaker_states()

    # -- loop side ---------------------------------------------------------------------
    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    async def _setup(self) -> None:
        self._client = self._client_factory()

    async def _shutdown(self) -> None:
        for task in asyncio.all_tasks(self._loop):
            if task is not asyncio.current_task():
                task.cancel()
        if self._client is not None:
            await self._client.aclose()

    def _finish(self, done: BatchDone) -> None:
        self._metrics.calls_in_flight.dec(len(done.results))
        self._done.put(done)
        with self._lock:
            self._in_flight -= 1
            portal = done.batch.portal
            self._portal_in_flight[portal] -= 1
            if not self._portal_in_flight[portal]:
                del self._portal_in_flight[portal]
        self._wake.set()

    def _revoked_in(self, batch: Batch, calls: list[PendingCall]) -> set[int]:
        """Indexes of `calls` whose partition was revoked since the batch was planned."""
        if not self._revoked or not batch.routes:
            return set()
        epochs = {id(c): route[2] for (_, c), route in zip(batch.calls, batch.routes, strict=True)}
        with self._lock:
            revoked = self._revoked
            return {i for i, call in enumerate(calls) if epochs.get(id(call)) in revoked}

    async def _without(
        self, batch: Batch, calls: list[PendingCall], keys: list[str], revoked: set[int]
    ) -> list[CallResult]:
        """The batch less its revoked calls: they are reported `cancelled` at once (never
        sent; their owner is waiting to hand them over), the others go on."""
        self._report(
            batch,
            [CallResult(keys[i], calls[i], False, cancelled=True, attempts=0) for i in revoked],
        )
        live = [i for i in range(len(calls)) if i not in revoked]
        if not live:
            return []
        return await self._attempt(batch, [calls[i] for i in live], [keys[i] for i in live])

    def _report(self, batch: Batch, results: list[CallResult]) -> None:
        """Results of some of a batch's calls, before the rest of it finishes."""
        self._metrics.calls_in_flight.dec(len(results))
        batch.reported.update(id(result.call) for result in results)
        self._done.put(BatchDone(batch, results))
        self._wake.set()

    async def _run(self, batch: Batch) -> None:
        done = BatchDone(batch)
        try:
            done.results = await self._attempt(
                batch, [c for _, c in batch.calls], [k for k, _ in batch.calls]
            )
        except Exception as exc:
            logger.exception("dispatch failed unexpectedly")
            done.results = [
                CallResult(
                    k,
                    c,
                    False,
                    error_class="transient",
                    code="INTERNAL",
                    message=f"{type(exc).__name__}: {exc}"[:300],
                )
                for k, c in batch.calls
                if id(c) not in batch.reported
            ]
            if not isinstance(exc, asyncio.CancelledError):
                for r in done.results:
                    r.error_class = "exhausted"
        self._finish(done)

    async def _attempt(
        self, batch: Batch, calls: list[PendingCall], keys: list[str]
    ) -> list[CallResult]:
        assert self._client is not None
        method = batch.method
        attempts = 0
        backoff_spent = 0.0
        ambiguous = False
        limits = self._policies.of(batch.portal)
        budget, breaker, limiter = limits.budget, limits.breaker, limits.limiter
        # Renames and reads take no array: several go out as sub-calls of one REST `batch`
        # request, unless a value holds what `batch` would rewrite (`$result[...]`, ...).
        batched = (method == RENAME or method in READ_METHODS) and len(calls) > 1
        if batched and not all(batch_safe(c.element) for c in calls):
            return await self._one_by_one(batch, calls, keys)
        request_method = "batch" if batched else method
        slots = limits.slots

        def all_revoked() -> bool:
            return len(self._revoked_in(batch, calls)) == len(calls)

        while True:
            try:
                await self._policies.gate(batch.portal, method, all_revoked)
                async with slots:
                    if self._revoked_in(batch, calls):
                        raise Revoked
                    attempts += 1
                    started = time.monotonic()
                    async with request_span(batch.portal, request_method, calls):
                        if batched:
                            body = await self._client.batch(
                                batch.portal,
                                method,
                                [request_params(batch, [c.element]) for c in calls],
                            )
                        else:
                            body = await self._client.call(
                                batch.portal,
                                method,
                                request_params(batch, [c.element for c in calls]),
                            )
            except Revoked:
                return await self._without(batch, calls, keys, self._revoked_in(batch, calls))
            except Throttled as exc:
                self._count_request(request_method, exc.http_status, started)
                breaker.answered(time.monotonic())  # the portal is there: a probe is done
                attempts -= 1  # throttling never spends the retry budget
                if exc.code == "OPERATION_TIME_LIMIT" or exc.http_status == 429:
                    budget.exceeded(method, time.monotonic(), exc.retry_after)
                else:
                    limiter.saturated(time.monotonic())
                self._metrics.retries.labels(reason="throttled").inc()
                continue
            except AmbiguousError as exc:
                # A timeout or reset after sending, or (on a send) a 5xx, an unreadable
                # body or an unknown answer: some elements may have been applied.
                self._count_request(request_method, exc.http_status, started)
                breaker.record(False, time.monotonic())
                if method == SEND:
                    policy = "reconcile" if self._reconcile else self._policy
                    self._metrics.ambiguous_sends.labels(policy=policy).inc(len(calls))
                    if self._reconcile:  # looked up on the portal before anything is resent
                        return self._all_failed(
                            keys, calls, UNKNOWN_OUTCOME, exc, attempts, ambiguous
                        )
                    if self._policy == "dead-letter":
                        # A human decides; nothing is resent, so no `ambiguous_resent` record.
                        return self._all_failed(keys, calls, "ambiguous", exc, attempts, ambiguous)
                    ambiguous = True
                delay = await self._backoff(exc, attempts, backoff_spent)
                if delay is None:
                    return self._all_failed(keys, calls, "exhausted", exc, attempts, ambiguous)
                backoff_spent += delay
                continue
            except TransientError as exc:
                self._count_request(request_method, exc.http_status, started)
                breaker.record(False, time.monotonic())
                self._metrics.breaker_state.labels(portal=batch.portal).set(breaker.state)
                delay = await self._backoff(exc, attempts, backoff_spent)
                if delay is None:
                    return self._all_failed(keys, calls, "exhausted", exc, attempts, ambiguous)
                backoff_spent += delay
                continue
            except (PermanentError, CausalWait) as exc:
                self._count_request(request_method, exc.http_status, started)
                breaker.record(True, time.monotonic())
                if batched:
                    # The portal did not take the batch as such: each call on its own.
                    if method == RENAME:
                        self._note_batch_refusal(batch.portal, exc.code)
                    return await self._one_by_one(batch, calls, keys)
                if (
                    len(calls) > 1
                    and isinstance(exc, PermanentError)
                    and exc.code == "ERROR_ARGUMENT"
                ):
                    # One malformed element fails the whole request: isolate it. Safe to
                    # resend the others: the portal checks every element's structure before
                    # it runs any (`rest/customconnectors.php::sendMessages`), so none ran.
                    results: list[CallResult] = []
                    for key, call in zip(keys, calls, strict=True):
                        results.extend(await self._attempt(batch, [call], [key]))
                    for result in results:
                        result.ambiguous = result.ambiguous or ambiguous
                    return results
                return self._all_failed(keys, calls, exc.error_class, exc, attempts, ambiguous)
            except BitrixError as exc:  # AuthFailed and anything else: permanent
                self._count_request(request_method, exc.http_status, started)
                breaker.answered(time.monotonic())
                return self._all_failed(keys, calls, exc.error_class, exc, attempts, ambiguous)
            except ConfigError as exc:
                return [
                    CallResult(
                        k,
                        c,
                        False,
                        error_class="permanent",
                        code="NO_PORTAL",
                        message=str(exc),
                        attempts=attempts,
                    )
                    for k, c in zip(keys, calls, strict=True)
                ]
            self._count_request(request_method, 200, started)
            breaker.record(True, time.monotonic())
            limiter.went_through()
            self._metrics.breaker_state.labels(portal=batch.portal).set(breaker.state)
            self._metrics.api_batch_size.labels(method=method).observe(len(calls))
            if batched:
                return await self._batch_outcomes(batch, body, calls, keys, attempts)
            budget.observe(method, body.get("time"), time.time(), time.monotonic())
            if method in READ_METHODS:  # the read's answer goes back whole
                answer = body.get("result")
                data = answer if isinstance(answer, dict) else None
                return [CallResult(keys[0], calls[0], True, data, attempts=attempts)]
            per_element = element_results(body, len(calls))
            out: list[CallResult] = []
            for index, (key, call, (ok, code, error)) in enumerate(
                zip(keys, calls, per_element, strict=True)
            ):
                if ok:
                    out.append(
                        CallResult(
                            key,
                            call,
                            True,
                            element_result_data(body, index),
                            attempts=attempts,
                            ambiguous=ambiguous,
                        )
                    )
                else:
                    out.append(
                        CallResult(
                            key,
                            call,
                            False,
                            error_class="permanent",
                            code=code,
                            message=error,
                            http_status=200,
                            attempts=attempts,
                            ambiguous=ambiguous,
                        )
                    )
            return out

    async def _batch_outcomes(
        self,
        batch: Batch,
        body: dict[str, Any],
        calls: list[PendingCall],
        keys: list[str],
        attempts: int,
    ) -> list[CallResult]:
        """Results of a REST `batch` of renames or reads; a failed sub-call is re-run on
        its own (a read the portal refused is final at once).

        Renames and reads are idempotent, so the re-run is safe, and it goes through the
        same classification, retries and causal wait as any single call. A read's result
        is its sub-call's `result`.
        """
        subs = batch_results(body, len(calls))
        result = body.get("result")
        times = result.get("result_time") if isinstance(result, dict) else None
        if isinstance(times, dict) and times:  # each sub-call counts against its method
            budget = self._policies.of(batch.portal).budget
            last = list(times.values())[-1]
            budget.observe(batch.method, last, time.time(), time.monotonic())
        reads = batch.method in READ_METHODS
        answers = result.get("result") if isinstance(result, dict) else None
        out: list[CallResult] = []
        for index, (key, call, (ok, code, text)) in enumerate(zip(keys, calls, subs, strict=True)):
            if ok:
                answer = answers.get(f"c{index}") if reads and isinstance(answers, dict) else None
                data = answer if isinstance(answer, dict) else None
                out.append(CallResult(key, call, True, data, attempts=attempts))
                continue
            if reads and code not in RETRIED_IN_BATCH:
                # A refusal (ACCESS_DENIED, no such method or session): final for a read.
                out.append(
                    CallResult(
                        key,
                        call,
                        False,
                        error_class="permanent",
                        code=code,
                        message=text,
                        http_status=200,
                        attempts=attempts,
                    )
                )
                continue
            if not reads:
                self._note_batch_refusal(batch.portal, code)
            out.extend(await self._attempt(batch, [call], [key]))
        return out

    async def _one_by_one(
        self, batch: Batch, calls: list[PendingCall], keys: list[str]
    ) -> list[CallResult]:
        results: list[CallResult] = []
        for key, call in zip(keys, calls, strict=True):
            results.extend(await self._attempt(batch, [call], [key]))
        return results

    def _note_batch_refusal(self, portal: str, code: str | None) -> None:
        if code not in BATCH_REFUSED or portal in self._batch_refused:
            return
        self._batch_refused.add(portal)
        logger.warning(
            "portal %s refused imconnector.chat.name.set inside `batch` (%s): renames go "
            "one per request from now on (IMCONNECTOR_ENGINE__BATCH_RENAMES=false skips "
            "the attempt)",
            portal,
            code,
        )

    async def _backoff(self, exc: BitrixError, attempts: int, spent: float) -> float | None:
        """Sleep before the next try and return the delay; None when the budget is used up."""
        retry = self._retry
        if attempts >= retry.max_attempts or spent >= retry.max_elapsed_s:
            return None
        ceiling = min(retry.max_delay_s, retry.base_delay_s * (2 ** (attempts - 1)))
        delay = random.uniform(0, ceiling)  # full jitter
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        self._metrics.retries.labels(reason=exc.error_class).inc()
        await asyncio.sleep(delay)
        return delay

    def _count_request(self, method: str, status: int | None, started: float) -> None:
        status_class = "transport" if status is None else f"{status // 100}xx"
        self._metrics.api_requests.labels(method=method, status_class=status_class).inc()
        self._metrics.api_duration.labels(method=method).observe(time.monotonic() - started)

    @staticmethod
    def _all_failed(
        keys: list[str],
        calls: list[PendingCall],
        error_class: str,
        exc: BitrixError,
        attempts: int,
        ambiguous: bool,
    ) -> list[CallResult]:
        return [
            CallResult(
                k,
                c,
                False,
                error_class=error_class,
                code=exc.code,
                message=str(exc)[:500],
                http_status=exc.http_status,
                attempts=attempts,
                ambiguous=ambiguous,
            )
            for k, c in zip(keys, calls, strict=True)
        ]
