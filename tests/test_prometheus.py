"""The Prometheus collector, tested by scraping the exposition text."""

from __future__ import annotations

import contextlib
from typing import Any

import trio
from prometheus_client import CollectorRegistry, generate_latest

import trio_persist
from trio_persist.prometheus import PersistCollector


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


async def _quietly(persist: trio_persist.Persist[Any, Any, Any], seconds: float) -> None:
    with contextlib.suppress(ValueError):
        await persist.resolve("db", seconds)
