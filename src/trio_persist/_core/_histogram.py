"""Durations in bounded memory: a log-scaled histogram with exact count and maximum.

Each power of two is split into `SUBBUCKETS` buckets, so a quantile is known to
within about 3% of its value, from a nanosecond to weeks, in a fixed list of
1,664 counters whatever the number of samples. Recording is a `math.frexp` and
a list update: cheap enough for every execution and every caller.
"""

from __future__ import annotations

import math
from bisect import bisect_right

__all__ = ["RECENT", "Histogram", "recent_quantiles", "remember"]

RECENT = 64
"""How many recent execution times each flight or worker keeps (for its snapshot)."""

SUBBUCKETS = 32
_LOWEST_EXPONENT = -30  # 2**-30 s, about a nanosecond: below that, bucket 0
_HIGHEST_EXPONENT = 22  # 2**22 s, about 48 days: above that, the last bucket
# Bucket i holds durations below _UPPERS[i] (and at or above the one before);
# bucket 0 holds zero and below; the last holds everything past the table.
_UPPERS = [0.0] + [
    math.ldexp(0.5 + (sub + 1) / (2 * SUBBUCKETS), exponent)
    for exponent in range(_LOWEST_EXPONENT, _HIGHEST_EXPONENT)
    for sub in range(SUBBUCKETS)
]
_BUCKETS = len(_UPPERS) + 1


class Histogram:
    """Durations in seconds, and their quantiles. Not thread-safe (Trio needs none).

    `add` only appends to a list (it *is* ``list.append``: the cheapest call
    Python has); samples are folded into the buckets in bulk by `settle` (which
    the persist calls every few hundred executions, so the list stays short) and before
    any reading: far less per sample than folding each on the hot path.
    `record` adds and settles, for callers off the hot path.
    """

    __slots__ = ("_counts", "_pending", "_total", "add", "maximum_")

    def __init__(self) -> None:
        self._counts = [0] * _BUCKETS  # a list: indexing is cheaper than a dict
        self._pending: list[float] = []
        self._total = 0.0
        self.maximum_ = 0.0
        self.add = self._pending.append

    def record(self, seconds: float) -> None:
        """Add one duration (negative ones count as zero)."""
        self.add(seconds)
        self.settle()

    def settle(self) -> None:
        """Fold the pending samples in (bounded memory)."""
        if self._pending:
            self._fold()

    def _fold(self) -> None:
        pending = self._pending
        if not pending:
            return
        # C loops (sum, max, bisect) do the work: a fraction of a microsecond each.
        self._total += sum(seconds for seconds in pending if seconds > 0)
        longest = max(pending)
        if longest > self.maximum_:
            self.maximum_ = longest
        counts = self._counts
        for seconds in pending:
            counts[bisect_right(_UPPERS, seconds)] += 1
        pending.clear()

    @property
    def pending(self) -> int:
        """Samples added and not folded in yet."""
        return len(self._pending)

    @property
    def count(self) -> int:
        """Samples recorded."""
        return sum(self._counts) + len(self._pending)

    @property
    def total(self) -> float:
        self._fold()
        return self._total

    @property
    def maximum(self) -> float:
        """The longest duration recorded (exact)."""
        self._fold()
        return self.maximum_

    def quantile(self, q: float) -> float:
        """The *q*-quantile (0 to 1) within a bucket's width; 0.0 with no samples."""
        self._fold()
        count = self.count
        if not count:
            return 0.0
        rank = q * count
        seen = 0
        for index, count in enumerate(self._counts):
            seen += count
            if count and seen >= rank:
                return min(_upper_bound(index), self.maximum_)
        return self.maximum_  # pragma: no cover - the loop always reaches the rank

    def cumulative(self, boundaries: tuple[float, ...]) -> tuple[tuple[float, int], ...]:
        """``(le, samples <= le)`` for each boundary (within a bucket's width)."""
        self._fold()
        counts = self._counts
        result = []
        for le in boundaries:
            # Buckets whose upper bound is at most *le* hold only samples below it.
            result.append((le, sum(counts[: bisect_right(_UPPERS, le)])))
        return tuple(result)

    @property
    def buckets(self) -> int:
        """Buckets in use (memory is bounded by `_BUCKETS` whatever the samples)."""
        return sum(1 for count in self._counts if count)

    @property
    def mean(self) -> float:
        count = self.count
        return self.total / count if count else 0.0


def _upper_bound(index: int) -> float:
    if index == 0:
        return 0.0
    return _UPPERS[index] if index < len(_UPPERS) else math.inf  # then the maximum


def remember(samples: list[float] | None, index: int, seconds: float) -> list[float]:
    """Keep *seconds*, the *index*-th sample (from 0), in a ring of the last `RECENT`.

    Returns the ring (made on the first sample: most idle workers have none).
    One index store per sample once the ring is full.
    """
    if samples is None:
        return [seconds]
    if len(samples) < RECENT:
        samples.append(seconds)
    else:
        samples[index % RECENT] = seconds
    return samples


def recent_quantiles(samples: list[float] | None) -> tuple[float, float]:
    """``(p50, p99)`` of a ring of recent samples, exactly; ``(0.0, 0.0)`` with none."""
    if not samples:
        return 0.0, 0.0
    ordered = sorted(samples)
    last = len(ordered) - 1
    return ordered[round(0.5 * last)], ordered[round(0.99 * last)]
