"""The Prometheus collector, tested by scraping the exposition text."""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Any

import attrs
import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest

import trio_persist
from trio_persist.prometheus import PersistCollector
from trio_persist.stores import MemoryStore


async def lookup(base: Any, request: Any) -> Any:
    await trio.sleep(request)
    if request == 3:
        raise ValueError("too slow")
    return request


async def test_a_scrape_exposes_counters_gauges_and_duration_histograms(
    autojump_clock: object,
) -> None:
    async with trio_persist.open_persist(lookup) as persist:
        registry = CollectorRegistry()
        registry.register(PersistCollector(persist))
        async with trio.open_nursery() as nursery:
            for seconds in (0.002, 0.002, 0.9, 3):
                nursery.start_soon(_quietly, persist, seconds)
        text = generate_latest(registry).decode()
    lines = set(text.splitlines())
    assert 'trio_persist_requests_total{device="lookup"} 4.0' in lines
    assert 'trio_persist_executions_total{device="lookup"} 3.0' in lines
    assert 'trio_persist_deduplicated_total{device="lookup"} 1.0' in lines
    assert 'trio_persist_failures_total{device="lookup"} 1.0' in lines
    assert 'trio_persist_in_flight{device="lookup"} 0.0' in lines
    assert 'trio_persist_execution_seconds_count{device="lookup"} 3.0' in lines
    assert 'trio_persist_execution_seconds_sum{device="lookup"} 3.902' in lines
    assert 'trio_persist_execution_seconds_bucket{device="lookup",le="0.0025"} 1.0' in lines
    assert 'trio_persist_execution_seconds_bucket{device="lookup",le="1.0"} 2.0' in lines
    assert 'trio_persist_execution_seconds_bucket{device="lookup",le="2.5"} 2.0' in lines
    assert 'trio_persist_execution_seconds_bucket{device="lookup",le="+Inf"} 3.0' in lines
    assert 'trio_persist_wait_seconds_count{device="lookup"} 4.0' in lines


async def test_virtual_workers_activations_and_saves_are_exported() -> None:
    async with trio_persist.open_persist(lookup, store=MemoryStore()) as persist:
        registry = CollectorRegistry()
        registry.register(PersistCollector(persist))
        await persist.ask("g", 0, default=int)
        await persist.workers()[0].stop()
        text = generate_latest(registry).decode()
    assert scraped(text, "trio_persist_activations_total") == 1
    assert scraped(text, "trio_persist_saves_total") == 1
    assert scraped(text, "trio_persist_save_failures_total") == 0


async def _quietly(persist: trio_persist.Persist[Any, Any, Any], seconds: float) -> None:
    with contextlib.suppress(ValueError):
        await persist.resolve("db", seconds)


async def instant(base: Any, request: Any) -> Any:
    return request


def scraped(text: str, name: str) -> float:
    [line] = [line for line in text.splitlines() if line.startswith(name + "{")]
    return float(line.rsplit(" ", 1)[1])


async def test_scrapes_from_another_thread_read_one_instant_and_never_harm_the_persist() -> None:
    # Prometheus scrapes from its HTTP thread. Switching threads every microsecond
    # makes any read of live structures from there collide with the Trio thread.
    scrapes: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        async with trio_persist.open_persist(instant) as persist:
            registry = CollectorRegistry()
            registry.register(PersistCollector(persist))

            def scrape() -> None:
                while not stop.is_set():
                    try:
                        scrapes.append(generate_latest(registry).decode())
                    except BaseException as exc:  # pragma: no cover - the test fails
                        errors.append(exc)
                        return

            thread = threading.Thread(target=scrape)
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
    assert scrapes
    for text in scrapes:  # each scrape is one instant: its figures agree
        executions = scraped(text, "trio_persist_executions_total")
        in_flight = scraped(text, "trio_persist_in_flight")
        timed = scraped(text, "trio_persist_execution_seconds_count")
        assert executions - in_flight <= timed <= executions  # timed when it ends
        assert scraped(text, "trio_persist_requests_total") - scraped(
            text, "trio_persist_waiters"
        ) == scraped(text, "trio_persist_wait_seconds_count")


async def test_remote_answers_and_the_redis_backends_counters_are_exported(
    redis_url: str, namespace: str
) -> None:
    from redis_helpers import Recorder, open_pair
    from trio_persist.redis import RedisBackend, RedisBackendStatistics

    device = Recorder()
    with trio.fail_after(20):
        async with open_pair(
            RedisBackend(redis_url, namespace=namespace),
            RedisBackend(redis_url, namespace=namespace),
            device,
        ) as pair:
            registry = CollectorRegistry()
            registry.register(PersistCollector(pair.b))  # the follower
            await pair.lead()
            await pair.follow()
            following = generate_latest(registry).decode()
            device.release.set()
        done = generate_latest(registry).decode()  # the last reading, once closed
    assert scraped(following, "trio_persist_backend_following") == 1
    assert scraped(done, "trio_persist_remote_total") == 1
    assert scraped(done, "trio_persist_executions_total") == 0
    assert scraped(done, "trio_persist_backend_followed_total") == 1
    assert scraped(done, "trio_persist_backend_following") == 0
    assert 'trio_persist_backend_subscribed{device="Recorder"}' in done
    for field in attrs.fields(RedisBackendStatistics):  # every figure of the backend
        assert f"trio_persist_backend_{field.name}" in done, field.name


def test_a_scrape_after_the_run_ended_serves_the_last_reading() -> None:
    registry = CollectorRegistry()

    async def main() -> None:
        async with trio_persist.open_persist(instant) as persist:
            registry.register(PersistCollector(persist))
            await persist.resolve("db", 1)
            generate_latest(registry)  # a scrape while it runs

    trio.run(main)
    text = generate_latest(registry).decode()  # the run is over: nothing to ask
    assert scraped(text, "trio_persist_executions_total") == 1


def test_a_collector_is_made_inside_the_persists_run() -> None:
    with pytest.raises(RuntimeError, match=r"inside the persist's trio\.run"):
        PersistCollector(object())


async def test_a_reading_that_fails_fails_the_scrape_not_the_persist() -> None:
    from trio_persist._handoff import Handoff  # the mechanism both exporters share

    def broken() -> Any:
        raise ValueError("a broken backend's statistics()")

    handoff = Handoff(broken)
    with pytest.raises(ValueError, match="broken backend"):
        await trio.to_thread.run_sync(handoff.read)  # asked from another thread
    await trio.lowlevel.checkpoint()  # the run goes on


async def test_wrapped_functions_get_series_of_their_own_labelled_by_name(
    autojump_clock: object,
) -> None:
    async def fetch(page: int) -> int:
        await trio.sleep(0.02)
        if page < 0:
            raise ValueError(page)
        return page

    async with trio_persist.open_persist(lookup) as persist:
        registry = CollectorRegistry()
        registry.register(PersistCollector(persist))
        wrapped = persist.wrap(fetch, name="shop.fetch")
        async with trio.open_nursery() as nursery:
            for page in (1, 1, 2, -1):
                nursery.start_soon(_quietly_call, wrapped, page)
        await persist.resolve("db", 0.002)
        text = generate_latest(registry).decode()
    lines = set(text.splitlines())
    series = '{device="lookup",function="shop.fetch"}'
    assert f"trio_persist_function_requests_total{series} 4.0" in lines
    assert f"trio_persist_function_executions_total{series} 3.0" in lines
    assert f"trio_persist_function_deduplicated_total{series} 1.0" in lines
    assert f"trio_persist_function_failures_total{series} 1.0" in lines
    assert f"trio_persist_function_execution_seconds_count{series} 3.0" in lines
    bucket = '{device="lookup",function="shop.fetch",le="0.025"}'
    assert f"trio_persist_function_execution_seconds_bucket{bucket} 3.0" in lines
    assert 'trio_persist_executions_total{device="lookup"} 4.0' in lines  # the persist's own


async def _quietly_call(wrapped: Any, page: int) -> None:
    with contextlib.suppress(ValueError):
        await wrapped(page)


async def test_decorated_functions_are_exported_from_the_runs_persist(
    autojump_clock: object,
) -> None:
    @trio_persist.deduplicated
    async def report(n: int) -> int:
        return n

    registry = CollectorRegistry()
    registry.register(PersistCollector(await report.persist()))
    await report(1)
    text = generate_latest(registry).decode()
    series = f'{{device="functions",function="{__name__}.{report.__qualname__}"}}'
    assert f"trio_persist_function_executions_total{series} 1.0" in text
