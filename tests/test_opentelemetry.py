"""OpenTelemetry: spans per execution, events for joiners, metrics (SDK in-memory exporters)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import trio_persist
from trio_persist.opentelemetry import instrument


@pytest.fixture
def providers() -> tuple[TracerProvider, InMemorySpanExporter, MeterProvider, InMemoryMetricReader]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    return tracer_provider, exporter, MeterProvider(metric_readers=[reader]), reader


async def lookup(base: Any, request: Any) -> Any:
    await trio.sleep(1)
    if request == "bad":
        raise KeyError("no such user")
    return request


async def test_each_execution_is_a_span_and_joiners_are_events_on_it(
    autojump_clock: object, providers: Any
) -> None:
    tracer_provider, exporter, meter_provider, reader = providers
    async with trio_persist.open_persist(lookup) as persist:
        with instrument(persist, tracer_provider=tracer_provider, meter_provider=meter_provider):
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(persist.resolve, "db", "ann")
                with pytest.raises(KeyError):
                    await persist.resolve("db", "bad")
            with trio.move_on_after(0.5):
                await persist.resolve("db", "gone")  # abandoned
            await persist.wait_quiet()
    spans = {span.attributes["trio_persist.label"]: span for span in exporter.get_finished_spans()}
    ann, bad, gone = spans["'ann'"], spans["'bad'"], spans["'gone'"]
    assert ann.name == "trio_persist.execute"
    assert ann.attributes["trio_persist.outcome"] == "ok"
    assert ann.attributes["trio_persist.listeners"] == 3
    assert [event.name for event in ann.events] == ["trio_persist.joined"] * 2
    assert ann.end_time - ann.start_time > 0
    assert bad.attributes["trio_persist.outcome"] == "failed"
    assert bad.status.status_code is StatusCode.ERROR
    assert bad.status.description == "KeyError: 'no such user'"
    assert gone.attributes["trio_persist.outcome"] == "abandoned"
    metrics = {
        metric.name: metric
        for resource in reader.get_metrics_data().resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert metrics["trio_persist.executions"].data.data_points[0].value == 3
    assert metrics["trio_persist.deduplicated"].data.data_points[0].value == 2
    durations = metrics["trio_persist.execution.duration"].data.data_points
    assert sum(point.count for point in durations) == 3


async def test_a_joining_callers_own_span_records_what_it_waited_for(
    autojump_clock: object, providers: Any
) -> None:
    tracer_provider, exporter, meter_provider, _ = providers
    tracer = tracer_provider.get_tracer("app")
    async with trio_persist.open_persist(lookup) as persist:
        with instrument(persist, tracer_provider=tracer_provider, meter_provider=meter_provider):

            async def request_handler() -> None:
                with tracer.start_as_current_span("GET /users/ann"):
                    await persist.resolve("db", "ann")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(persist.resolve, "db", "ann")
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(request_handler)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    execution, handler = spans["trio_persist.execute"], spans["GET /users/ann"]
    [event] = handler.events
    assert event.name == "trio_persist.joined_execution"
    assert event.attributes["trio_persist.span_id"] == format(execution.context.span_id, "016x")
    assert event.attributes["trio_persist.trace_id"] == format(execution.context.trace_id, "032x")


async def test_an_observer_that_raises_is_counted_and_harms_nothing() -> None:
    class Broken:
        def execution_started(self, *args: Any) -> None:
            raise RuntimeError("broken observer")

        def joined(self, *args: Any) -> None:
            pass  # pragma: no cover

        def execution_ended(self, *args: Any) -> None:
            pass

    async def instant(base: Any, request: Any) -> Any:
        return request

    async with trio_persist.open_persist(instant) as persist:
        persist.add_observer(Broken())
        assert await persist.resolve("b", "r") == "r"
        assert persist.statistics().hook_failures == 1
