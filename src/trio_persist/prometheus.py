"""Prometheus metrics for a persist: ``pip install trio-persist[prometheus]``.

Register a collector for each persist, created inside the persist's Trio run
(right after `trio_persist.open_persist`, say)::

    from prometheus_client import REGISTRY, start_http_server
    from trio_persist.prometheus import PersistCollector

    REGISTRY.register(PersistCollector(persist))
    start_http_server(9100)

It costs nothing between scrapes and nothing at all on the hot path. A scrape
runs in Prometheus's HTTP thread, which never reads the persist itself: it
asks the persist's Trio thread for a frozen reading (statistics, durations
and the backend's counters, all from one instant) and waits for it at most two
seconds, after which (the loop is stuck, or the run has ended) it gets the last
reading taken.

Exported (with the prefix ``trio_persist_``), each series labelled ``device``
with the persist's name (`trio_persist.Persist.name`): a bounded set of names,
never groups or requests.

* counters: ``requests``, ``executions``, ``remote``, ``deduplicated``,
  ``failures``, ``crashes``, ``abandoned``, ``worker_timeouts``,
  ``hook_failures``, ``evictions``, ``workers_started`` (each ``..._total``);
* gauges: ``in_flight``, ``waiters``, ``workers``, ``groups``;
* histograms: ``execution_seconds`` and ``wait_seconds``;
* with a backend that has ``statistics()`` (`trio_persist.redis.RedisBackend`):
  each of its counters as ``backend_<name>_total`` (``backend_led_total``,
  ``backend_followed_total``, ``backend_takeovers_total``, ...) and its gauges
  ``backend_leading``, ``backend_following`` and ``backend_subscribed`` (1 or 0);
* for each wrapped function (`trio_persist.Persist.wrap`,
  `trio_persist.deduplicated`), series of its own labelled ``function`` too,
  with its name (its module and qualified name, or the ``name=`` it was given:
  names again, never arguments): the counters ``function_requests``,
  ``function_executions``, ``function_remote``, ``function_deduplicated``,
  ``function_failures``, ``function_crashes`` and ``function_abandoned`` (each
  ``..._total``) and the histogram ``function_execution_seconds``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ._handoff import Handoff, Reading, take_reading
from ._stats import DurationHistogram

__all__ = ["PersistCollector"]

_COUNTERS = {
    "requests": "Calls to resolve or ask that got past argument checks.",
    "executions": "Device calls started.",
    "remote": "Executions another process answered through the backend.",
    "deduplicated": "Calls answered by an execution another call started.",
    "failures": "Executions that ended with an exception.",
    "crashes": "Executions that crashed with a BaseException.",
    "abandoned": "Executions cancelled because every caller left.",
    "worker_timeouts": "Workers stopped after their idle timeout.",
    "hook_failures": "Device hooks that raised.",
    "evictions": "Idle workers stopped to make room under max_workers.",
    "workers_started": "Workers started.",
    "activations": "Workers activated with a state loaded from the store, restore or default.",
    "activation_failures": "Activations that failed (ActivationFailed).",
    "handovers": "Workers that took over a stopping worker's live state and queue.",
    "saves": "States saved through the store.",
    "save_failures": "Saves through the store that failed.",
    "checkpoints": "Saves made on checkpoint_interval while a worker lived.",
}
_GAUGES = {
    "in_flight": "Flights running now.",
    "waiters": "Callers waiting now.",
    "workers": "Workers alive now.",
    "groups": "Groups registered now.",
}
_FUNCTION_COUNTERS = {
    "requests": "Calls of a wrapped function that got past argument checks.",
    "executions": "Calls of a wrapped function started here.",
    "remote": "Executions of a wrapped function another process answered.",
    "deduplicated": "Calls of a wrapped function answered by another call's execution.",
    "failures": "Executions of a wrapped function that ended with an exception.",
    "crashes": "Executions of a wrapped function that crashed with a BaseException.",
    "abandoned": "Executions of a wrapped function cancelled because every caller left.",
}
# The backend's figures that say what is true now; its other fields only grow.
_BACKEND_GAUGES = frozenset({"leading", "following", "subscribed"})
_Simple = type[CounterMetricFamily] | type[GaugeMetricFamily]


class PersistCollector(Collector):
    """A Prometheus collector for one persist (register one per persist).

    Create it inside the persist's Trio run: scrapes from any thread then
    read a frozen reading taken on that run's thread.

    Args:
        persist: The `trio_persist.Persist` to read at each scrape.
        prefix: The metrics' name prefix.

    Raises:
        RuntimeError: created outside a Trio run.
    """

    def __init__(self, persist: Any, *, prefix: str = "trio_persist") -> None:
        self._handoff = Handoff(lambda: take_reading(persist))
        self._prefix = prefix

    def describe(self) -> Iterator[Metric]:
        """Nothing up front: metrics are described when collected."""
        return iter(())

    def collect(self) -> Iterator[Metric]:
        """The persist's metrics (called by the registry at each scrape, in any thread).

        Nothing if the persist's run ended before the first scrape.
        """
        reading = self._handoff.read()
        if reading is not None:
            yield from self._metrics(reading)

    def _metrics(self, reading: Reading) -> Iterator[Metric]:
        labels = {"device": reading.name}
        stats = reading.statistics
        for name, doc in _COUNTERS.items():
            yield self._family(CounterMetricFamily, name, doc, labels, getattr(stats, name))
        for name, doc in _GAUGES.items():
            yield self._family(GaugeMetricFamily, name, doc, labels, getattr(stats, name))
        durations = reading.durations
        yield self._histogram(
            "execution_seconds", "Device call durations.", durations.execution, labels
        )
        yield self._histogram(
            "wait_seconds", "Caller waits, from arrival to answer.", durations.wait, labels
        )
        if attrs.has(type(reading.backend)):
            yield from self._backend(reading.backend, labels)
        if reading.functions:
            yield from self._functions(reading)

    def _functions(self, reading: Reading) -> Iterator[Metric]:
        names = ["device", "function"]
        for name, doc in _FUNCTION_COUNTERS.items():
            family = CounterMetricFamily(f"{self._prefix}_function_{name}", doc, labels=names)
            for function in reading.functions:
                family.add_metric([reading.name, function.name], getattr(function, name))
            yield family
        histogram = HistogramMetricFamily(
            f"{self._prefix}_function_execution_seconds",
            "Wrapped function call durations.",
            labels=names,
        )
        for function in reading.functions:
            histogram.add_metric(
                [reading.name, function.name],
                _buckets(function.execution),
                sum_value=function.execution.sum,
            )
        yield histogram

    def _backend(self, record: Any, labels: dict[str, str]) -> Iterator[Metric]:
        for field in attrs.fields(type(record)):
            value = getattr(record, field.name)
            if not isinstance(value, (int, float)):
                continue
            doc = f"The backend's {field.name} (see its statistics())."
            kind = GaugeMetricFamily if field.name in _BACKEND_GAUGES else CounterMetricFamily
            yield self._family(kind, f"backend_{field.name}", doc, labels, float(value))

    def _family(
        self, kind: _Simple, name: str, doc: str, labels: dict[str, str], value: float
    ) -> Metric:
        family = kind(f"{self._prefix}_{name}", doc, labels=list(labels))
        family.add_metric(list(labels.values()), value)
        return family

    def _histogram(
        self, name: str, doc: str, histogram: DurationHistogram, labels: dict[str, str]
    ) -> Metric:
        family = HistogramMetricFamily(f"{self._prefix}_{name}", doc, labels=list(labels))
        family.add_metric(list(labels.values()), _buckets(histogram), sum_value=histogram.sum)
        return family


def _buckets(histogram: DurationHistogram) -> list[tuple[str, float]]:
    """A histogram's cumulative buckets as Prometheus writes them, ``+Inf`` last."""
    buckets: list[tuple[str, float]] = [(repr(le), count) for le, count in histogram.buckets]
    buckets.append(("+Inf", histogram.count))
    return buckets
