"""OpenTelemetry traces and metrics for a persist: ``pip install trio-persist[opentelemetry]``.

``instrument(persist)`` adds an observer to the persist (nothing is paid
without one) that makes:

* a span ``trio_persist.execute`` per execution, with the group's label, its
  kind (flight or worker), the number of callers it answered and its outcome
  (``ok``, ``failed``, ``crashed`` or ``abandoned``; an error status for the
  last three);
* for each caller that joined an execution instead of starting one: an event
  ``trio_persist.joined`` on the execution's span, and an event
  ``trio_persist.joined_execution`` on the caller's own current span, carrying
  the execution span's trace and span ids, so a slow request's trace shows
  what it waited for (a log line in the spirit of CockroachDB's singleflight,
  as data);
* metrics: the histogram ``trio_persist.execution.duration`` (seconds, by
  kind and outcome) and observable counters and gauges read from
  `trio_persist.Persist.statistics` when the meter collects.

Uses the global tracer and meter providers unless given others::

    from trio_persist.opentelemetry import instrument

    async with open_persist(device) as persist:
        with instrument(persist):
            ...
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Span, Status, StatusCode

from ._core._job import Job, Outcome
from ._core._persist import Persist
from ._stats import group_label
from ._text import describe

__all__ = ["instrument"]

_SCOPE = "trio_persist"
_OUTCOMES = {
    Outcome.OK: "ok",
    Outcome.FAILED: "failed",
    Outcome.CRASHED: "crashed",
    None: "abandoned",
}
_COUNTERS = ("requests", "executions", "deduplicated", "failures", "crashes", "abandoned")
_GAUGES = ("in_flight", "waiters", "workers", "groups")


class _Tracing:
    """The observer: spans per execution, events for joiners, a duration histogram."""

    def __init__(self, persist: Persist[Any, Any, Any], tracer: Any, meter: Any) -> None:
        self._tracer = tracer
        # Weakly keyed: a job dropped before it ran (all its callers left) takes
        # its span with it instead of leaking it.
        self._spans: weakref.WeakKeyDictionary[Job, Span] = weakref.WeakKeyDictionary()
        self._device = persist.name
        self._duration = meter.create_histogram(
            "trio_persist.execution.duration", unit="s", description="Device call durations"
        )
        for name in _COUNTERS:
            meter.create_observable_counter(
                f"trio_persist.{name}", callbacks=[self._reader(persist, name)]
            )
        for name in _GAUGES:
            meter.create_observable_gauge(
                f"trio_persist.{name}", callbacks=[self._reader(persist, name)]
            )

    def _reader(self, persist: Persist[Any, Any, Any], name: str) -> Any:
        device = {"trio_persist.device": self._device}

        def read(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(getattr(persist.statistics(), name), device)]

        return read

    def _span(self, kind: str, group: Hashable | None, job: Job) -> Span:
        span = self._spans.get(job)
        if span is None:
            span = self._spans[job] = self._tracer.start_span(
                "trio_persist.execute",
                attributes={
                    "trio_persist.device": self._device,
                    "trio_persist.kind": kind,
                    "trio_persist.group": group_label(group),
                },
            )
        return span

    def execution_started(self, kind: str, group: Hashable | None, label: str, job: Job) -> None:
        self._span(kind, group, job).set_attribute("trio_persist.label", label)

    def joined(self, kind: str, group: Hashable | None, job: Job) -> None:
        # Callers may join before the execution has started: the span then
        # starts with the first join, and covers the time the execution waited.
        span = self._span(kind, group, job)
        span.add_event("trio_persist.joined", {"trio_persist.listeners": job.listeners + 1})
        context = span.get_span_context()
        trace.get_current_span().add_event(
            "trio_persist.joined_execution",
            {
                "trio_persist.group": group_label(group),
                "trio_persist.trace_id": format(context.trace_id, "032x"),
                "trio_persist.span_id": format(context.span_id, "016x"),
            },
        )

    def execution_ended(
        self, kind: str, group: Hashable | None, job: Job, outcome: Outcome | None, seconds: float
    ) -> None:
        name = _OUTCOMES[outcome]
        self._duration.record(
            seconds,
            {"trio_persist.device": self._device, "trio_persist.kind": kind,
             "trio_persist.outcome": name},
        )  # fmt: skip
        span = self._spans.pop(job, None)
        if span is None:
            return
        span.set_attribute("trio_persist.listeners", job.listeners)
        span.set_attribute("trio_persist.outcome", name)
        if outcome is not Outcome.OK:
            error = job.error
            span.set_status(Status(StatusCode.ERROR, describe(error) if error else name))
        span.end()


@contextmanager
def instrument(
    persist: Persist[Any, Any, Any],
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> Iterator[None]:
    """Trace and measure *persist*'s executions for the duration of a ``with`` block.

    Spans still open when the block ends (executions still running) are
    ended then, with the outcome ``"unfinished"``.
    """
    tracer = trace.get_tracer(_SCOPE, tracer_provider=tracer_provider)
    meter = metrics.get_meter(_SCOPE, meter_provider=meter_provider)
    observer = _Tracing(persist, tracer, meter)
    persist.add_observer(observer)
    try:
        yield
    finally:
        persist.remove_observer(observer)
        for span in observer._spans.values():
            span.set_attribute("trio_persist.outcome", "unfinished")
            span.end()
