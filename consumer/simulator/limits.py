"""Bitrix24's two REST limits: per-portal leaky bucket (503), per-method operating budget (429)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

OPERATING_WINDOW = 600.0
"""The operating budget sums execution time over ten one-minute buckets (reference §6.2)."""
BUCKET_SPAN = 60.0


class LeakyBucket:
    """Each request adds 1; the level drains at `drain` per second; above `burst` requests fail."""

    def __init__(self, drain: float, burst: int, *, enabled: bool = True) -> None:
        self.drain = drain
        self.burst = burst
        self.enabled = enabled
        self._level = 0.0
        self._last: float | None = None

    def level(self, now: float) -> float:
        """The counter after draining up to `now`."""
        self._leak(now)
        return self._level

    def try_take(self, now: float) -> bool:
        """Count one request; False (and not counted) when it would exceed the burst."""
        if not self.enabled:
            return True
        self._leak(now)
        if self._level + 1 > self.burst:
            return False
        self._level += 1
        return True

    def reset(self) -> None:
        self._level = 0.0
        self._last = None

    def _leak(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self._level = max(0.0, self._level - (now - self._last) * self.drain)
        if self._last is None or now > self._last:
            self._last = now


@dataclass
class _Bucket:
    started: float
    seconds: float


@dataclass(frozen=True)
class OperatingReading:
    """What `time.operating` / `time.operating_reset_at` report for one method."""

    operating: float
    reset_at: float


class OperatingBudget:
    """Per-method execution seconds over a rolling 10 minutes, checked before each call.

    The call that pushes the sum over the limit still completes; the next call of
    that method is refused until expired buckets bring the sum back under it.
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._buckets: dict[str, deque[_Bucket]] = {}

    def allows(self, method: str, now: float) -> bool:
        return self.reading(method, now).operating < self.limit

    def spend(self, method: str, seconds: float, now: float) -> OperatingReading:
        """Add a finished call's execution time; a new bucket starts a minute after the last."""
        buckets = self._live(method, now)
        if buckets and now - buckets[-1].started < BUCKET_SPAN:
            buckets[-1].seconds += seconds
        else:
            buckets.append(_Bucket(started=now, seconds=seconds))
        return self.reading(method, now)

    def reading(self, method: str, now: float) -> OperatingReading:
        buckets = self._live(method, now)
        total = sum(bucket.seconds for bucket in buckets)
        reset_at = buckets[0].started + OPERATING_WINDOW if buckets else now + OPERATING_WINDOW
        return OperatingReading(operating=round(total, 6), reset_at=reset_at)

    def reset(self) -> None:
        self._buckets.clear()

    def _live(self, method: str, now: float) -> deque[_Bucket]:
        buckets = self._buckets.setdefault(method, deque())
        while buckets and buckets[0].started + OPERATING_WINDOW <= now:
            buckets.popleft()
        return buckets
