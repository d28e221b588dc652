"""Durations in bounded memory: a log-scaled histogram with exact count and maximum.

Each power of two is split into `SUBBUCKETS` buckets, so a quantile is known to
within about 3% of its value, from a microsecond to days, in a few hundred
integers at most whatever the number of samples. Recording is a `math.frexp`
and a dict update: cheap enough for every execution and every caller.
"""

from __future__ import annotations

import math

__all__ = ["Histogram", "recent_quantiles"]

SUBBUCKETS = 16
_LOWEST_EXPONENT = -30  # 2**-30 s, about a nanosecond: below that, bucket 0


class Histogram:
    """Durations in seconds, and their quantiles. Not thread-safe (Trio needs none)."""

    __slots__ = ("_buckets", "count", "maximum", "total")

    def __init__(self) -> None:
        self._buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.maximum = 0.0

    def record(self, seconds: float) -> None:
        """Add one duration (negative ones count as zero)."""
        self.count += 1
        if seconds <= 0:
            index = 0
        else:
            self.total += seconds
            if seconds > self.maximum:
                self.maximum = seconds
            mantissa, exponent = math.frexp(seconds)  # seconds = mantissa * 2**exponent
            index = max(
                0,
                (exponent - _LOWEST_EXPONENT) * SUBBUCKETS + int((mantissa - 0.5) * 2 * SUBBUCKETS),
            )
        buckets = self._buckets
        buckets[index] = buckets.get(index, 0) + 1

    def quantile(self, q: float) -> float:
        """The *q*-quantile (0 to 1) within a bucket's width; 0.0 with no samples."""
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen >= rank:
                return min(_upper_bound(index), self.maximum)
        return self.maximum  # pragma: no cover - the loop always reaches the rank

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


def _upper_bound(index: int) -> float:
    if index == 0:
        return 0.0
    exponent, sub = divmod(index, SUBBUCKETS)
    return math.ldexp(0.5 + (sub + 1) / (2 * SUBBUCKETS), exponent + _LOWEST_EXPONENT)


def recent_quantiles(samples: list[float] | tuple[float, ...]) -> tuple[float, float]:
    """``(p50, p99)`` of a few recent samples, exactly; ``(0.0, 0.0)`` with none."""
    if not samples:
        return 0.0, 0.0
    ordered = sorted(samples)
    last = len(ordered) - 1
    return ordered[round(0.5 * last)], ordered[round(0.99 * last)]
