"""The cyclic garbage collector's thresholds for the service's processes.

The service keeps tens of thousands of long-lived objects (chat states, their waiting
calls, librdkafka's and httpx's structures) and makes a few short-lived ones per event.
With CPython's default thresholds (700, 10, 10), a 110k-event backlog cost the compiled
service's poll thread about 1,700 young, 155 middle and 14-15 full collections, 1.9-2.9 s
in all (interpreted, each full collection stopped the loop for 0.1 s). With (10_000, 20, 20): 80
young, 3-4 middle, no full collection, 0.65-1.1 s (README "Measured"). Most short-lived
objects are freed by reference counting before a collection ever sees them; the few
cycles wait a little longer for theirs."""

from __future__ import annotations

import gc

THRESHOLDS = (10_000, 20, 20)


def tune() -> tuple[int, int, int]:
    """Set this process's collector thresholds; return them as the collector has them."""
    gc.set_threshold(*THRESHOLDS)
    low, middle, high = gc.get_threshold()
    return low, middle, high
