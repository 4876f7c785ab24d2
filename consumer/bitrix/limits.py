"""Staying inside a portal's limits: leaky bucket, per-method operating budget, breaker.

All three take the clock as an argument so they are tested without sleeping; the client
awaits the delays they return.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class PortalRateLimiter:
    """Mirror of Bitrix24's leaky bucket (+1 per request, drains `drain`/s, limit `burst`).

    `share` is this replica's part of the portal's budget. On `QUERY_LIMIT_EXCEEDED`
    the bucket is taken as full, so the next requests wait for a real drain.
    """

    drain: float = 2.0
    burst: int = 50
    share: float = 1.0
    level: float = 0.0
    updated: float = 0.0

    def _leak(self, now: float) -> None:
        if self.updated:
            self.level = max(0.0, self.level - (now - self.updated) * self.drain * self.share)
        self.updated = now

    def reserve(self, now: float) -> float:
        """Take one request slot; return how long to wait before sending it."""
        self._leak(now)
        capacity = max(1.0, self.burst * self.share)
        self.level += 1.0
        excess = self.level - capacity
        return 0.0 if excess <= 0 else excess / (self.drain * self.share)

    def saturated(self, now: float) -> None:
        """The portal said QUERY_LIMIT_EXCEEDED: our estimate was low; assume a full bucket."""
        self._leak(now)
        self.level = max(self.level, self.burst * self.share)


@dataclass(slots=True)
class OperatingBudget:
    """Per-method execution-time budget from `time.operating` / `operating_reset_at`.

    When the reported `operating` reaches `limit * headroom`, that method pauses until
    `operating_reset_at`, before the portal answers `OPERATION_TIME_LIMIT`.
    """

    limit: float = 480.0
    headroom: float = 0.9
    paused_until: dict[str, float] = field(default_factory=dict)

    def observe(self, method: str, time_block: object, wall_now: float, now: float) -> None:
        """Read the `time` block of a successful response."""
        if not isinstance(time_block, dict):
            return
        operating = time_block.get("operating")
        reset_at = time_block.get("operating_reset_at")
        if not isinstance(operating, int | float) or not isinstance(reset_at, int | float):
            return
        if operating >= self.limit * self.headroom:
            self.paused_until[method] = now + max(0.0, float(reset_at) - wall_now)

    def exceeded(self, method: str, now: float, retry_after: float | None) -> None:
        """The portal answered OPERATION_TIME_LIMIT for `method`."""
        wait = retry_after if retry_after is not None else 60.0
        self.paused_until[method] = max(self.paused_until.get(method, 0.0), now + wait)

    def wait(self, method: str, now: float) -> float:
        """Seconds `method` must still wait (0 when it may run)."""
        until = self.paused_until.get(method)
        if until is None:
            return 0.0
        if until <= now:
            del self.paused_until[method]
            return 0.0
        return until - now


CLOSED, HALF_OPEN, OPEN = 0, 1, 2


@dataclass(slots=True)
class CircuitBreaker:
    """Per-portal breaker over the last `window` calls.

    Opens when at least `min_calls` were seen and `failure_ratio` of them failed
    transiently; after `cooldown` (doubling up to `max_cooldown` while probes fail)
    one probe goes through (half-open); its success closes the breaker, and so does any
    answer that shows the portal is there (throttling, an auth error: `answered`). A probe
    that never reports (cancelled) lets another go after `probe_timeout`.
    """

    window: int = 20
    min_calls: int = 10
    failure_ratio: float = 0.5
    cooldown: float = 2.0
    max_cooldown: float = 60.0
    probe_timeout: float = 90.0
    state: int = CLOSED
    opened_at: float = 0.0
    current_cooldown: float = 0.0
    probing: bool = False
    probe_started: float = 0.0
    results: deque[bool] = field(default_factory=deque)

    def wait(self, now: float) -> float:
        """Seconds to wait before a call may go (0 = go; a half-open probe also goes)."""
        if self.state == CLOSED:
            return 0.0
        if self.state == OPEN:
            remaining = self.opened_at + self.current_cooldown - now
            if remaining > 0:
                return remaining
            self.state = HALF_OPEN
            self.probing = False
        if self.probing and now - self.probe_started < self.probe_timeout:
            return min(1.0, self.current_cooldown)
        self.probing = True
        self.probe_started = now
        return 0.0

    def answered(self, now: float) -> None:
        """The portal answered, neither a success nor a transient failure (throttled, an
        auth error): it is reachable, so a half-open probe closes the breaker."""
        if self.state == HALF_OPEN:
            self.record(True, now)

    def record(self, ok: bool, now: float) -> None:
        """Count one call's result (transient failures only; permanent ones are fine)."""
        if self.state == HALF_OPEN:
            self.probing = False
            if ok:
                self.state = CLOSED
                self.results.clear()
                self.current_cooldown = 0.0
            else:
                self.state = OPEN
                self.opened_at = now
                self.current_cooldown = min(self.max_cooldown, self.current_cooldown * 2)
            return
        self.results.append(ok)
        if len(self.results) > self.window:
            self.results.popleft()
        failures = sum(1 for r in self.results if not r)
        if (
            self.state == CLOSED
            and len(self.results) >= self.min_calls
            and failures >= self.failure_ratio * len(self.results)
        ):
            self.state = OPEN
            self.opened_at = now
            self.current_cooldown = self.cooldown
