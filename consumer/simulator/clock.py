"""The simulator's time source: unix seconds, injectable so tests step time instead of sleeping."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

Clock = Callable[[], float]
"""Returns the current time as unix seconds (fractional)."""


def system_clock() -> float:
    """The real wall clock."""
    return time.time()


class ManualClock:
    """A clock that only moves when told to; thread-safe so server threads may read it."""

    def __init__(self, start: float = 1_773_266_593.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward by `seconds` and return the new time."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        with self._lock:
            self._now += seconds
            return self._now
