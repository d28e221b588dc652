"""Prometheus metrics for a persist: ``pip install trio-persist[prometheus]``.

Register a collector for each persist; it reads
`trio_persist.Persist.statistics` and `trio_persist.Persist.durations` when
Prometheus scrapes, so it costs nothing between
scrapes and nothing at all on the hot path::

    from prometheus_client import REGISTRY, start_http_server
    from trio_persist.prometheus import PersistCollector

    REGISTRY.register(PersistCollector(persist))
    start_http_server(9100)

Exported (with the prefix ``trio_persist_`` and a ``device`` label):

* counters: ``requests``, ``executions``, ``deduplicated``, ``failures``,
  ``crashes``, ``abandoned``, ``worker_timeouts``, ``hook_failures``,
  ``evictions``, ``workers_started`` (each ``..._total``);
* gauges: ``in_flight``, ``waiters``, ``workers``, ``groups``;
* histograms: ``execution_seconds`` and ``wait_seconds``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ._stats import DurationHistogram, PersistDurations, PersistStatistics

__all__ = ["PersistCollector"]

_COUNTERS = {
    "requests": "Calls to resolve that got past argument checks.",
    "executions": "Device calls started.",
    "deduplicated": "Calls answered by an execution another call started.",
    "failures": "Executions that ended with an exception.",
    "crashes": "Executions that crashed with a BaseException.",
    "abandoned": "Executions cancelled because every caller left.",
    "worker_timeouts": "Workers stopped after their idle timeout.",
    "hook_failures": "Device hooks that raised.",
    "evictions": "Idle workers stopped to make room under max_workers.",
    "workers_started": "Workers started.",
}
_GAUGES = {
    "in_flight": "Flights running now.",
    "waiters": "Callers waiting now.",
    "workers": "Workers alive now.",
    "groups": "Groups registered now.",
}


class _Source(Protocol):
    """What the collector reads: a persist (its name, statistics and durations)."""

    @property
    def name(self) -> str: ...

    def statistics(self) -> PersistStatistics: ...

    def durations(self) -> PersistDurations: ...


class PersistCollector(Collector):
    """A Prometheus collector for one persist (register one per persist).

    Args:
        persist: The `trio_persist.Persist` to read at each scrape.
        prefix: The metrics' name prefix.
    """

    def __init__(self, persist: Any, *, prefix: str = "trio_persist") -> None:
        self._persist: _Source = persist
        self._prefix = prefix

    def describe(self) -> Iterator[Metric]:
        """Nothing up front: metrics are described when collected."""
        return iter(())

    def collect(self) -> Iterator[Metric]:
        """The persist's metrics now (called by the registry at each scrape)."""
        persist = self._persist
        labels = {"device": persist.name}
        stats = persist.statistics()
        for name, doc in _COUNTERS.items():
            counter = CounterMetricFamily(f"{self._prefix}_{name}", doc, labels=list(labels))
            counter.add_metric(list(labels.values()), getattr(stats, name))
            yield counter
        for name, doc in _GAUGES.items():
            gauge = GaugeMetricFamily(f"{self._prefix}_{name}", doc, labels=list(labels))
            gauge.add_metric(list(labels.values()), getattr(stats, name))
            yield gauge
        durations = persist.durations()
        yield self._histogram(
            "execution_seconds", "Device call durations.", durations.execution, labels
        )
        yield self._histogram(
            "wait_seconds", "Caller waits, from arrival to answer.", durations.wait, labels
        )

    def _histogram(
        self, name: str, doc: str, histogram: DurationHistogram, labels: dict[str, str]
    ) -> Metric:
        family = HistogramMetricFamily(f"{self._prefix}_{name}", doc, labels=list(labels))
        buckets = [(repr(le), count) for le, count in histogram.buckets]
        buckets.append(("+Inf", histogram.count))
        family.add_metric(list(labels.values()), buckets, sum_value=histogram.sum)
        return family
