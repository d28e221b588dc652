"""Statistics and snapshots: frozen records of what a persist is doing."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trio_persist
from conftest import Counting


async def test_statistics_count_requests_executions_and_deduplication(counting: Counting) -> None:
    counting.hold = True
    async with trio_persist.open_persist(counting) as persist:
        async with trio.open_nursery() as nursery:
            for request in ("a", "a", "a", "b"):
                nursery.start_soon(persist.resolve, "base", request)
            await trio.testing.wait_all_tasks_blocked()
            live = persist.statistics()
            assert (live.requests, live.executions, live.deduplicated) == (4, 2, 2)
            assert (live.in_flight, live.waiters, live.groups, live.workers) == (2, 4, 2, 0)
            counting.release.set()
        quiet = persist.statistics()
        assert (quiet.in_flight, quiet.waiters, quiet.groups) == (0, 0, 0)
        assert quiet.failures == quiet.crashes == quiet.abandoned == 0


async def test_statistics_count_failures(counting: Counting) -> None:
    async with trio_persist.open_persist(counting) as persist:
        with pytest.raises(ValueError, match="x"):
            await persist.resolve("base", "fail:x")
        assert persist.statistics().failures == 1


async def test_statistics_are_frozen_values() -> None:
    async def device(base: Any, request: Any) -> Any:
        return request

    async with trio_persist.open_persist(device) as persist:
        stats = persist.statistics()
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            stats.executions = 5  # type: ignore[misc]
        assert stats.to_json()["executions"] == 0


async def test_a_snapshot_has_one_record_per_group(
    autojump_clock: object, counting: Counting
) -> None:
    async with trio_persist.open_persist(counting) as persist:
        assert persist.snapshot() == ()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(persist.resolve, "base", "a")
            nursery.start_soon(persist.resolve, "base", "a")
            await trio.sleep(0.5)
            [record] = persist.snapshot()
            assert record.group == persist.group("base", "a")
            assert record.kind == "flight"
            assert (record.listeners, record.queued, record.served) == (2, 0, 0)
            assert (record.started, record.last_active, record.busy) == (0, 0, True)
        assert persist.snapshot() == ()


async def test_a_snapshot_record_renders_its_group_as_text() -> None:
    record = trio_persist.GroupSnapshot(
        group=("tuple", 1), kind="flight", listeners=1, queued=0, served=0, started=0, last_active=0
    )
    assert record.to_json()["group"] == "('tuple', 1)"


async def test_a_snapshot_counts_queued_different_requests(autojump_clock: object) -> None:
    class Device:
        def group(self, base: Any, request: Any) -> Any:
            return "g"

        async def resolve(self, base: Any, request: Any) -> Any:
            await trio.sleep(1)
            return request

    async with trio_persist.open_persist(Device()) as persist:
        async with trio.open_nursery() as nursery:
            for request in ("a", "b", "c"):
                nursery.start_soon(persist.resolve, None, request)
                await trio.testing.wait_all_tasks_blocked()
            [record] = persist.snapshot()
            assert (record.group, record.listeners, record.queued) == ("g", 3, 2)
            await trio.sleep(1.5)
            [record] = persist.snapshot()
            assert (record.served, record.queued, record.last_active) == (1, 1, 1.0)


async def test_the_persist_and_registry_have_readable_reprs(counting: Counting) -> None:
    async with trio_persist.open_persist(counting) as persist:
        assert "Counting open groups=0" in repr(persist)
    assert "closed" in repr(persist)
