"""OpenTelemetry: spans per execution, events for joiners, metrics (SDK in-memory exporters)."""

from __future__ import annotations

import re
import sys
import threading
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


class Users:
    """A device whose ``label`` hook names its groups for operators."""

    async def resolve(self, base: Any, request: Any) -> Any:
        return await lookup(base, request)

    def label(self, base: Any, request: Any) -> str:
        return f"user {request}"


def metric_values(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        metric.name: metric.data.data_points
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


async def test_each_execution_is_a_span_and_joiners_are_events_on_it(
    autojump_clock: object, providers: Any
) -> None:
    tracer_provider, exporter, meter_provider, reader = providers
    async with trio_persist.open_persist(Users()) as persist:
        with instrument(persist, tracer_provider=tracer_provider, meter_provider=meter_provider):
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(persist.resolve, "db", "ann")
                with pytest.raises(KeyError):
                    await persist.resolve("db", "bad")
            with trio.move_on_after(0.5):
                await persist.resolve("db", "gone")  # abandoned
            await persist.wait_quiet()
            metrics = metric_values(reader)
    spans = {span.attributes["trio_persist.label"]: span for span in exporter.get_finished_spans()}
    ann, bad, gone = spans["user ann"], spans["user bad"], spans["user gone"]
    assert ann.name == "trio_persist.execute"
    assert ann.attributes["trio_persist.outcome"] == "ok"
    assert ann.attributes["trio_persist.listeners"] == 3
    assert [event.name for event in ann.events] == ["trio_persist.joined"] * 2
    assert ann.end_time - ann.start_time > 0
    assert bad.attributes["trio_persist.outcome"] == "failed"
    assert bad.status.status_code is StatusCode.ERROR
    assert bad.status.description == "KeyError: 'no such user'"
    assert gone.attributes["trio_persist.outcome"] == "abandoned"
    assert ann.attributes["trio_persist.group"] == trio_persist.default_group("db", "ann")
    assert metrics["trio_persist.executions"][0].value == 3
    assert metrics["trio_persist.deduplicated"][0].value == 2
    durations = metrics["trio_persist.execution.duration"]
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


SECRET = {"user": "ann", "priv": {"api_key": "sk-live-0123"}}


def everything_said(exporter: InMemorySpanExporter) -> str:
    """Every span name, attribute value and event attribute value, as one text."""
    said = []
    for span in exporter.get_finished_spans():
        said.append(span.name)
        said += [str(value) for value in (span.attributes or {}).values()]
        for event in span.events:
            said += [str(value) for value in (event.attributes or {}).values()]
    return "\n".join(said)


async def test_spans_name_groups_by_digest_and_carry_nothing_of_the_request(
    autojump_clock: object, providers: Any
) -> None:
    class ByUser:
        """Readable groups: the user's name, which must not leave the process either."""

        def group(self, base: Any, request: Any) -> Any:
            return f"user/{request['user']}"

        async def resolve(self, base: Any, request: Any) -> Any:
            await trio.sleep(1)
            return request

    tracer_provider, exporter, meter_provider, _ = providers
    tracer = tracer_provider.get_tracer("app")
    for device in (lookup, ByUser()):
        async with trio_persist.open_persist(device) as persist:
            with instrument(
                persist, tracer_provider=tracer_provider, meter_provider=meter_provider
            ):

                async def handler() -> None:
                    with tracer.start_as_current_span("GET /me"):
                        await persist.resolve("db", SECRET)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(persist.resolve, "db", SECRET)
                    await trio.testing.wait_all_tasks_blocked()
                    nursery.start_soon(handler)
    said = everything_said(exporter)
    assert "sk-live" not in said
    assert "ann" not in said
    groups = {
        span.attributes["trio_persist.group"]
        for span in exporter.get_finished_spans()
        if span.name == "trio_persist.execute"
    }
    assert trio_persist.default_group("db", SECRET) in groups  # a default group is a digest
    assert len(groups) == 2
    assert all(re.fullmatch(r"[0-9a-f]{32}", group) for group in groups)
    assert not any(
        "trio_persist.label" in span.attributes for span in exporter.get_finished_spans()
    )


async def fetch_profile(user: str) -> dict[str, str]:
    await trio.sleep(1)
    return {"user": user}


async def test_a_wrapped_call_is_a_span_named_after_its_function(
    autojump_clock: object, providers: Any
) -> None:
    tracer_provider, exporter, meter_provider, _ = providers
    async with trio_persist.open_persist(lookup) as persist:
        with instrument(persist, tracer_provider=tracer_provider, meter_provider=meter_provider):
            fetch = persist.wrap(fetch_profile)
            named = persist.wrap(fetch_profile, name="profiles")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fetch, "alice")
                nursery.start_soon(fetch, "alice")
                nursery.start_soon(named, "bob")
    qualified = f"{fetch_profile.__module__}.fetch_profile"
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {qualified, "profiles"}
    assert spans[qualified].attributes["trio_persist.label"] == qualified
    assert spans[qualified].attributes["trio_persist.listeners"] == 2
    assert spans["profiles"].attributes["trio_persist.label"] == "profiles"
    said = everything_said(exporter)
    assert "alice" not in said
    assert "bob" not in said
    assert "{}" not in said


async def test_the_gauges_say_what_is_true_now(autojump_clock: object, providers: Any) -> None:
    tracer_provider, _, meter_provider, reader = providers
    async with trio_persist.open_persist(lookup) as persist, trio.open_nursery() as nursery:
        with instrument(persist, tracer_provider=tracer_provider, meter_provider=meter_provider):
            await persist.start_worker({"user": "bob"})
            for _ in range(3):
                nursery.start_soon(persist.resolve, "db", "ann")
            await trio.testing.wait_all_tasks_blocked()
            gauges = {
                name: metric_values(reader)[f"trio_persist.{name}"]
                for name in ("in_flight", "waiters", "workers", "groups")
            }
            nursery.cancel_scope.cancel()
    assert {name: points[0].value for name, points in gauges.items()} == {
        "in_flight": 1,
        "waiters": 3,
        "workers": 1,
        "groups": 2,
    }
    assert all(
        points[0].attributes == {"trio_persist.device": "lookup"} for points in gauges.values()
    )


async def instant(base: Any, request: Any) -> Any:
    return request


async def test_collections_from_the_readers_thread_never_harm_the_persist(providers: Any) -> None:
    # A periodic reader collects from a thread of its own: switching threads every
    # microsecond makes any read of live structures from there collide with Trio.
    tracer_provider, _, meter_provider, reader = providers
    collected: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        async with trio_persist.open_persist(instant) as persist:
            with instrument(
                persist, tracer_provider=tracer_provider, meter_provider=meter_provider
            ):

                def collect() -> None:
                    while not stop.is_set():
                        try:
                            collected.append(metric_values(reader))
                        except BaseException as exc:  # pragma: no cover - the test fails
                            errors.append(exc)
                            return

                thread = threading.Thread(target=collect)
                thread.start()
                try:
                    for i in range(2000):
                        await persist.resolve("db", i)
                        persist.statistics()  # the Trio thread reads too, as a monitor does
                finally:
                    stop.set()
                    await trio.to_thread.run_sync(thread.join)
            final = persist.durations()
    finally:
        sys.setswitchinterval(switch)
    assert errors == []
    assert final.execution.count == final.wait.count == 2000  # no sample lost
    assert collected
