"""Each portal's own limits, on the dispatcher's loop: its leaky bucket (this replica's share
of it), its per-method operating budget, its circuit breaker and its request slots.

A request waits at the gate until all three limits let it go; while it waits, the portal
counts as gated, and the engine lets that portal's calls pile up so the next request is a
full one. A portal's slots are its own: one whose requests hang never holds another's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from consumer.bitrix.limits import CircuitBreaker, OperatingBudget, PortalRateLimiter
from consumer.observability.metrics import Metrics
from consumer.settings import PortalSettings


class Revoked(Exception):
    """Every call of a request belongs to a revoked partition: it is not sent."""


@dataclass(slots=True)
class PortalLimits:
    """One portal's limits and request slots."""

    limiter: PortalRateLimiter
    budget: OperatingBudget
    breaker: CircuitBreaker
    slots: asyncio.Semaphore
    gated: int = 0  # requests waiting at the gate


class PortalPolicies:
    """The limits of every portal, made on first use (on the dispatcher's loop)."""

    def __init__(
        self,
        portals: Callable[[], dict[str, PortalSettings]],
        metrics: Metrics,
        *,
        slots: int,
        operating_limit: float,
    ) -> None:
        self._portals = portals
        self._metrics = metrics
        self._slots = slots
        self._operating_limit = operating_limit
        self._share = 1.0
        self._by_portal: dict[str, PortalLimits] = {}

    def of(self, portal: str) -> PortalLimits:
        """`portal`'s limits."""
        limits = self._by_portal.get(portal)
        if limits is None:
            cfg = self._portals().get(portal)
            if cfg is None:
                limiter = PortalRateLimiter(share=self._share)
            else:
                limiter = PortalRateLimiter(
                    cfg.rate_drain, cfg.rate_burst, cfg.rate_share or self._share
                )
            budget = OperatingBudget(
                limit=cfg.operating_limit if cfg is not None else self._operating_limit
            )
            limits = PortalLimits(limiter, budget, CircuitBreaker(), asyncio.Semaphore(self._slots))
            self._by_portal[portal] = limits
        return limits

    def has_capacity(self, portal: str) -> bool:
        """False while a request of `portal` waits at the gate."""
        limits = self._by_portal.get(portal)
        return limits is None or limits.gated == 0

    def breaker_states(self) -> dict[str, int]:
        """Portal -> breaker state (for metrics and tests)."""
        return {portal: limits.breaker.state for portal, limits in self._by_portal.items()}

    def set_share(self, share: float) -> None:
        """This replica's part of every portal's limit; a portal with a fixed `rate_share`
        keeps its own. Call on the loop."""
        self._share = share
        portals = self._portals()
        for portal, limits in self._by_portal.items():
            cfg = portals.get(portal)
            if cfg is None or cfg.rate_share is None:
                limits.limiter.share = share

    async def gate(self, portal: str, method: str, all_revoked: Callable[[], bool]) -> None:
        """Wait until breaker, operating budget and leaky bucket all let a request of
        `method` go; `Revoked` once `all_revoked()` says no call of it is wanted any more."""
        limits = self.of(portal)
        limits.gated += 1
        try:
            await self._wait(portal, method, limits, all_revoked)
        finally:
            limits.gated -= 1

    async def _wait(
        self, portal: str, method: str, limits: PortalLimits, all_revoked: Callable[[], bool]
    ) -> None:
        metrics = self._metrics
        while True:
            if all_revoked():
                raise Revoked
            now = time.monotonic()
            wait = limits.breaker.wait(now)
            metrics.breaker_state.labels(portal=portal).set(limits.breaker.state)
            if wait > 0:
                await asyncio.sleep(min(wait, 1.0))
                continue
            wait = limits.budget.wait(method, now)
            if wait > 0:
                metrics.throttle_waits.labels(reason="operating_budget").inc(wait)
                await asyncio.sleep(min(wait, 1.0))
                continue
            break
        wait = limits.limiter.reserve(time.monotonic())
        if wait > 0:
            metrics.throttle_waits.labels(reason="rate_limit").inc(wait)
            until = time.monotonic() + wait
            while (left := until - time.monotonic()) > 0:
                if all_revoked():
                    raise Revoked
                await asyncio.sleep(min(left, 1.0))
