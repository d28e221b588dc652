"""Statistics and snapshots: frozen records of what a persist is doing."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trio_persist
from conftest import Counting
from redis_helpers import eventually


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


async def test_callers_that_waited_for_room_leave_the_waiters_gauge_at_zero(
    autojump_clock: object,
) -> None:
    async def slow(state: Any, request: Any) -> Any:
        await trio.sleep(1)
        return state

    async with trio_persist.open_persist(slow, worker_inbox=1, static_worker=True) as persist:
        await persist.start_worker("state")
        async with trio.open_nursery() as nursery:
            for n in range(5):  # one executes, one fits in the inbox, three wait for room
                nursery.start_soon(persist.resolve, "state", n)
            await trio.testing.wait_all_tasks_blocked()
            assert persist.statistics().waiters == 5
        assert persist.statistics().waiters == 0
        assert trio.current_time() == 5


async def test_the_leading_and_following_gauges_return_to_zero(
    redis_url: str, namespace: str
) -> None:
    from trio_persist.redis import RedisBackend

    release = trio.Event()

    async def held(base: Any, request: Any) -> Any:
        await release.wait()
        return "done"

    first = RedisBackend(redis_url, namespace=namespace)
    second = RedisBackend(redis_url, namespace=namespace)
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(held, backend=first) as a,
            trio_persist.open_persist(held, backend=second) as b,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(a.resolve, "base", "r")
            await eventually(lambda: first.statistics().leading == 1)
            nursery.start_soon(b.resolve, "base", "r")
            await eventually(lambda: second.statistics().following == 1)
            release.set()
    assert (first.statistics().leading, first.statistics().led) == (0, 1)
    assert (second.statistics().following, second.statistics().followed) == (0, 1)


async def test_a_removed_observer_hears_nothing_more_and_removing_twice_is_harmless() -> None:
    heard: list[Any] = []

    class Ears:
        def execution_started(self, kind: str, group: Any, label: str, job: Any) -> None:
            heard.append(label)

        def joined(self, kind: str, group: Any, job: Any) -> None:
            pass  # pragma: no cover

        def execution_ended(self, *args: Any) -> None:
            pass

    async def device(base: Any, request: Any) -> Any:
        return request

    ears = Ears()
    async with trio_persist.open_persist(device) as persist:
        persist.add_observer(ears)
        await persist.resolve("base", 1)
        persist.remove_observer(ears)
        persist.remove_observer(ears)
        await persist.resolve("base", 2)
    assert len(heard) == 1


async def test_a_busy_workers_statistics_count_its_queue_and_listeners(
    autojump_clock: object,
) -> None:
    async def device(state: Any, request: Any) -> Any:
        await trio.sleep(1)
        return request

    async with trio_persist.open_persist(device, static_worker=True) as persist:
        worker = await persist.start_worker("s")
        async with trio.open_nursery() as nursery:
            for request in ("a", "b", "b", "c"):  # the two "b" callers share one request
                nursery.start_soon(persist.resolve, "s", request)
            await trio.testing.wait_all_tasks_blocked()
            stats = worker.statistics()
            assert (stats.busy, stats.queued, stats.listeners) == (True, 2, 4)
        [record] = persist.snapshot()
        assert (record.execution_p50, record.execution_p99) == (1, 1)


async def test_an_execution_another_process_answers_is_never_counted_here(
    redis_url: str, namespace: str
) -> None:
    # Counters only grow: a follower counts a remote answer, never an execution
    # taken back later.
    from trio_persist.redis import RedisBackend

    release = trio.Event()

    async def device(base: Any, request: Any) -> Any:
        await release.wait()
        return request

    first = RedisBackend(redis_url, namespace=namespace, lease_ttl=2)
    second = RedisBackend(redis_url, namespace=namespace, lease_ttl=2)
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(device, backend=first) as a,
            trio_persist.open_persist(device, backend=second) as b,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(a.resolve, "base", "request")
            await eventually(lambda: first.statistics().leading == 1)
            nursery.start_soon(b.resolve, "base", "request")
            await eventually(lambda: second.statistics().following == 1)
            assert (a.statistics().executions, b.statistics().executions) == (1, 0)
            release.set()
        assert (b.statistics().executions, b.statistics().remote) == (0, 1)


async def test_an_observer_that_raises_when_told_anything_is_counted_each_time_and_harms_nothing(
    autojump_clock: object,
) -> None:
    class Broken:
        def execution_started(self, *args: Any) -> None:
            raise RuntimeError("started")

        def joined(self, *args: Any) -> None:
            raise RuntimeError("joined")

        def execution_ended(self, *args: Any) -> None:
            raise RuntimeError("ended")

    async def slow(base: Any, request: Any) -> Any:
        await trio.sleep(1)
        return request

    answers: list[Any] = []

    async def call() -> None:
        answers.append(await persist.resolve("b", "r"))

    async with trio_persist.open_persist(slow) as persist, trio.open_nursery() as nursery:
        persist.add_observer(Broken())
        nursery.start_soon(call)
        nursery.start_soon(call)
    assert answers == ["r", "r"]
    statistics = persist.statistics()
    assert (statistics.executions, statistics.deduplicated) == (1, 1)
    assert statistics.hook_failures == 3  # its start, the join and its end
    assert trio.current_time() == 1
