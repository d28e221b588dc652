"""OpenTelemetry traces and metrics for a persist: ``pip install trio-persist[opentelemetry]``.

``instrument(persist)`` adds an observer to the persist (nothing is paid
without one) that makes:

* a span per execution, named ``trio_persist.execute`` (or, for a function
  wrapped with `trio_persist.Persist.wrap`, after the function: its module and
  qualified name, or the ``name=`` it was given), carrying the device's name,
  the group's digest, the execution's label (the device's ``label`` hook's
  text, or the wrapped function's name), its kind (flight or worker), the number
  of callers it answered and its outcome (``ok``, ``failed``, ``crashed`` or
  ``abandoned``; an error status for the last three). Nothing of a request
  goes into a span: a group is named by a 32-character digest (the same
  in every process), and labelled only by what a ``label`` hook chose;
* for each caller that joined an execution instead of starting one: an event
  ``trio_persist.joined`` on the execution's span, and an event
  ``trio_persist.joined_execution`` on the caller's own current span, carrying
  the execution span's trace and span ids, so a slow request's trace shows
  what it waited for (a log line in the spirit of CockroachDB's singleflight,
  as data);
* metrics: the histogram ``trio_persist.execution.duration`` (seconds, by
  kind and outcome, and by ``trio_persist.function`` for a wrapped function)
  and observable counters (``trio_persist.requests``, ``.executions``,
  ``.remote``, ``.deduplicated``, ``.failures``, ``.crashes``,
  ``.abandoned``) and gauges (``trio_persist.in_flight``,
  ``.waiters``, ``.workers``, ``.groups``), each with the attribute
  ``trio_persist.device``. The meter's reader collects them from a thread of
  its own, which never reads the persist: it asks the persist's Trio thread
  for a frozen reading (one for all of a collection's instruments) and waits
  for it at most two seconds. After the ``with`` block they observe nothing.

Uses the global tracer and meter providers unless given others::

    from trio_persist.opentelemetry import instrument

    async with open_persist(device) as persist:
        with instrument(persist):
            ...
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Hashable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Span, Status, StatusCode

from ._core._observer import Execution
from ._core._persist import Persist
from ._grouping import group_digest
from ._handoff import Handoff, Reading, take_reading
from ._text import describe

__all__ = ["instrument"]

_SCOPE = "trio_persist"
_EXECUTE = "trio_persist.execute"
_COUNTERS = (
    "requests", "executions", "remote", "deduplicated", "failures", "crashes", "abandoned"
)  # fmt: skip
_GAUGES = ("in_flight", "waiters", "workers", "groups")
_FRESH = 0.1
"""Seconds one reading serves the instruments of a collection (read one after another)."""


class _Readings:
    """Frozen readings of the persist for the meter's callbacks, whatever their thread."""

    def __init__(self, persist: Persist[Any, Any, Any]) -> None:
        self._handoff = Handoff(lambda: take_reading(persist))
        self._reading: Reading | None = None
        self._taken = -_FRESH
        self.closed = False

    def current(self) -> Reading | None:
        if self.closed:
            return None
        now = time.monotonic()
        if self._reading is None or now - self._taken >= _FRESH:
            self._reading, self._taken = self._handoff.read(), now
        return self._reading


def _group_attribute(group: Hashable | None) -> dict[str, str]:
    return {} if group is None else {"trio_persist.group": group_digest(group)}


class _Tracing:
    """The observer: spans per execution, events for joiners, a duration histogram."""

    def __init__(self, persist: Persist[Any, Any, Any], tracer: Any, meter: Any) -> None:
        self._tracer = tracer
        # Weakly keyed: a job dropped before it ran (all its callers left) takes
        # its span with it instead of leaking it.
        self.spans: weakref.WeakKeyDictionary[Execution, Span] = weakref.WeakKeyDictionary()
        self._device = persist.name
        self.readings = _Readings(persist)
        self._duration = meter.create_histogram(
            "trio_persist.execution.duration", unit="s", description="Device call durations"
        )
        for name in _COUNTERS:
            meter.create_observable_counter(f"trio_persist.{name}", callbacks=[self._reader(name)])
        for name in _GAUGES:
            meter.create_observable_gauge(f"trio_persist.{name}", callbacks=[self._reader(name)])

    def _reader(self, name: str) -> Any:
        def read(options: CallbackOptions) -> Iterable[Observation]:
            reading = self.readings.current()
            if reading is None:
                return []
            value = getattr(reading.statistics, name)
            return [Observation(value, {"trio_persist.device": reading.name})]

        return read

    def _span(self, kind: str, group: Hashable | None, execution: Execution) -> Span:
        span = self.spans.get(execution)
        if span is None:
            function = execution.function  # a wrapped function's name: its span's
            name = _EXECUTE if function is None else function
            attributes = {"trio_persist.device": self._device, "trio_persist.kind": kind}
            span = self.spans[execution] = self._tracer.start_span(
                name, attributes={**attributes, **_group_attribute(group)}
            )
        return span

    def execution_started(
        self, kind: str, group: Hashable | None, label: str, execution: Execution
    ) -> None:
        span = self._span(kind, group, execution)
        if label:  # a label hook's text or a wrapped function's name: chosen to be seen
            span.set_attribute("trio_persist.label", label)

    def joined(self, kind: str, group: Hashable | None, execution: Execution) -> None:
        # Callers may join before the execution has started: the span then
        # starts with the first join, and covers the time the execution waited.
        span = self._span(kind, group, execution)
        span.add_event("trio_persist.joined", {"trio_persist.listeners": execution.listeners + 1})
        context = span.get_span_context()
        trace.get_current_span().add_event(
            "trio_persist.joined_execution",
            {
                **_group_attribute(group),
                "trio_persist.trace_id": format(context.trace_id, "032x"),
                "trio_persist.span_id": format(context.span_id, "016x"),
            },
        )

    def execution_ended(
        self, kind: str, group: Hashable | None, execution: Execution, outcome: str, seconds: float
    ) -> None:
        attributes = {"trio_persist.device": self._device, "trio_persist.kind": kind,
                      "trio_persist.outcome": outcome}  # fmt: skip
        if execution.function is not None:  # a name: bounded, as devices' are
            attributes["trio_persist.function"] = execution.function
        self._duration.record(seconds, attributes)
        span = self.spans.pop(execution, None)
        if span is None:
            return
        span.set_attribute("trio_persist.listeners", execution.listeners)
        span.set_attribute("trio_persist.outcome", outcome)
        if outcome != "ok":
            error = execution.error
            span.set_status(Status(StatusCode.ERROR, describe(error) if error else outcome))
        span.end()


@contextmanager
def instrument(
    persist: Persist[Any, Any, Any],
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> Iterator[None]:
    """Trace and measure *persist*'s executions for the duration of a ``with`` block.

    Enter it on the persist's Trio thread. Spans still open when the block
    ends (executions still running) are ended then, with the outcome
    ``"unfinished"``; the metrics observe nothing from then on.
    """
    tracer = trace.get_tracer(_SCOPE, tracer_provider=tracer_provider)
    meter = metrics.get_meter(_SCOPE, meter_provider=meter_provider)
    observer = _Tracing(persist, tracer, meter)
    persist.add_observer(observer)
    try:
        yield
    finally:
        persist.remove_observer(observer)
        observer.readings.closed = True
        for span in observer.spans.values():
            span.set_attribute("trio_persist.outcome", "unfinished")
            span.end()
