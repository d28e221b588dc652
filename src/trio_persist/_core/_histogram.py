"""Durations in bounded memory: a log-scaled histogram with exact count and maximum.

Each power of two is split into `SUBBUCKETS` buckets of equal ratio (2**(1/32),
about 2.2%), so a quantile is known to within about 3% of its value, from a
nanosecond to weeks, in a fixed list of 1,666 counters whatever the number of
samples. Recording is a ``list.append``; samples are folded into the counters
in bulk: sorted, then counted a bucket at a time by bisection (durations
cluster in a few buckets), C code doing the work per sample, a tenth of a
microsecond or less a sample.
"""

from __future__ import annotations

import functools
import math
from bisect import bisect_left, bisect_right
from collections import Counter

__all__ = ["RECENT", "Histogram", "recent_quantiles", "remember"]

RECENT = 64
"""How many recent execution times each flight or worker keeps (for its snapshot)."""

SUBBUCKETS = 32
_LOWEST = -30 * SUBBUCKETS  # 2**-30 s, about a nanosecond: below that, bucket 0
_HIGHEST = 22 * SUBBUCKETS  # 2**22 s, about 48 days: past that, the last bucket
# Bucket i (1 to the last but one) holds the durations d at or above
# _UPPERS[i - 1] and below _UPPERS[i] (about floor(SUBBUCKETS * log2(d)) ==
# i - 1 + _LOWEST, without log2's rounding on a bound); bucket 0 holds zero,
# negatives and tiny ones; the last, everything past the table.
_UPPERS = [2.0 ** ((index + _LOWEST) / SUBBUCKETS) for index in range(_HIGHEST - _LOWEST + 1)]
_BUCKETS = len(_UPPERS) + 1
# A sample's bucket (a C callable, for map()).
_BUCKET = functools.partial(bisect_right, _UPPERS)
# `_count` walks at most one bucket per `_WALK` samples, then counts one by one.
_WALK = 8


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
        if pending:
            self.fold(pending)
            pending.clear()

    def fold(self, samples: list[float], *also: Histogram) -> None:
        """Fold *samples* in (here, and in each histogram of *also*: the
        buckets are counted once); the list is left as it is."""
        total = sum(samples)
        ordered = sorted(samples)  # C: a few comparisons a sample
        if ordered[0] <= 0:  # rare: a clock that did not move, or went back
            total = sum(seconds for seconds in samples if seconds > 0)
        found = _count(ordered)
        longest = ordered[-1]
        for histogram in (self, *also):
            histogram.maximum_ = max(histogram.maximum_, longest)
            histogram._total += total
            counts = histogram._counts
            for index, count in found:
                counts[index] += count

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


def _count(ordered: list[float]) -> list[tuple[int, int]]:
    """``(bucket, samples in it)`` for each bucket the sorted samples *ordered* fill.

    Durations cluster, so the sorted samples are walked a bucket at a time:
    two C bisections per bucket filled and no Python code per sample. Samples
    that fill many buckets (more than one in `_WALK` of them) are counted one
    by one past that point instead (a C loop too), which bounds the walk.
    """
    found: list[tuple[int, int]] = []
    uppers, last = _UPPERS, len(_UPPERS)
    end = len(ordered)
    start = 0
    for _ in range(1 + end // _WALK):
        if start == end:
            return found
        # Bucket i holds _UPPERS[i - 1] <= d < _UPPERS[i] (0: zero, negatives, tiny).
        index = bisect_right(uppers, ordered[start])
        stop = end if index == last else bisect_left(ordered, uppers[index], start)
        found.append((index, stop - start))
        start = stop
    if start < end:
        found.extend(Counter(map(_BUCKET, ordered[start:])).items())
    return found


def _upper_bound(index: int) -> float:
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
