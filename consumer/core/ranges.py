"""A set of integers kept as sorted, disjoint, inclusive ranges: a chat's dead-lettered
sequences and the gaps it gave up on.

Both grow by runs (a parked chat dead-letters every later event in order; a gap is a range),
so a thousand dead letters usually cost one range. The number of ranges is bounded: past
`limit` the oldest (lowest) go, which only matters for a chat with thousands of scattered
failures (a redrive of the forgotten ones then counts as duplicates, and says so in a log).
"""

from __future__ import annotations

from bisect import bisect_right

LIMIT = 4096


def _low(r: list[int]) -> int:
    return r[0]


class RangeSet:
    """Sorted disjoint `[lo, hi]` ranges (inclusive), as JSON-ready lists."""

    __slots__ = ("ranges",)

    def __init__(self, ranges: list[list[int]] | None = None) -> None:
        self.ranges: list[list[int]] = ranges if ranges is not None else []

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and self.ranges == other.ranges

    def __repr__(self) -> str:
        return f"RangeSet({self.ranges!r})"

    def __contains__(self, value: int) -> bool:
        index = bisect_right(self.ranges, value, key=_low) - 1
        return index >= 0 and self.ranges[index][0] <= value <= self.ranges[index][1]

    def count(self) -> int:
        """How many integers the set holds."""
        return sum(hi - lo + 1 for lo, hi in self.ranges)

    def add(self, lo: int, hi: int | None = None, limit: int = LIMIT) -> None:
        """Add `lo..hi` (just `lo` without `hi`), merging touching or overlapping ranges."""
        hi = lo if hi is None else hi
        ranges = self.ranges
        index = bisect_right(ranges, lo, key=_low)
        if index > 0 and ranges[index - 1][1] >= lo - 1:
            index -= 1
            lo = min(lo, ranges[index][0])
        end = index
        while end < len(ranges) and ranges[end][0] <= hi + 1:
            hi = max(hi, ranges[end][1])
            end += 1
        ranges[index:end] = [[lo, hi]]
        if len(ranges) > limit:
            del ranges[: len(ranges) - limit]

    def discard(self, value: int) -> None:
        """Remove `value` if present (splitting its range)."""
        ranges = self.ranges
        index = bisect_right(ranges, value, key=_low) - 1
        if index < 0 or not ranges[index][0] <= value <= ranges[index][1]:
            return
        lo, hi = ranges[index]
        parts = [[lo, value - 1]] if lo < value else []
        if value < hi:
            parts.append([value + 1, hi])
        ranges[index : index + 1] = parts
