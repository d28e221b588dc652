"""Behaviours a sampled mutation run found unpinned (issue 14), now pinned down.

Each test here failed on a mutant that every other test let through: a record
of nested calls never cleared, a gauge never brought back to zero, a closing
step skipped on cancellation, an off-by-one in the parked-runner limit.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

import trio_persist


async def test_a_nested_call_is_forgotten_once_it_returned(autojump_clock: object) -> None:
    # Worker a resolves b and gets its answer; later worker b resolves a. That is
    # no cycle: a stopped waiting for b long ago.
    class Two:
        def group(self, base: Any, request: Any) -> Any:
            return base

        async def resolve(self, state: Any, request: Any) -> Any:
            if request == "leaf":
                return f"leaf of {state}"
            return await persist.resolve(request, "leaf")

    async with trio_persist.open_persist(Two(), static_worker=True) as persist:
        await persist.start_worker("a")
        await persist.start_worker("b")
        assert await persist.resolve("a", "b") == "leaf of b"
        assert await persist.resolve("b", "a") == "leaf of a"  # not InfiniteRecursion


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


async def test_cancelling_the_block_with_a_worker_alive_still_closes_the_event_stream(
    autojump_clock: object,
) -> None:
    ended = trio.Event()

    async def instant(state: Any, request: Any) -> Any:
        return state

    async with trio.open_nursery() as outside:
        with trio.CancelScope() as block:
            async with trio_persist.open_persist(instant) as persist:
                events = persist.subscribe()

                async def read() -> None:
                    async for _ in events:
                        pass
                    ended.set()

                outside.start_soon(read)
                await persist.start_worker("state")
                block.cancel()
                await trio.sleep_forever()
        with trio.fail_after(5):
            await ended.wait()  # the subscriber outside saw the stream end
    assert block.cancelled_caught
    assert persist.closed


async def test_at_most_64_runners_stay_parked(autojump_clock: object) -> None:
    async def slow(base: Any, request: Any) -> Any:
        await trio.sleep(1)

    async with trio_persist.open_persist(slow) as persist:
        async with trio.open_nursery() as nursery:
            for n in range(100):
                nursery.start_soon(persist.resolve, "b", n)
        await trio.testing.wait_all_tasks_blocked()
        # Reaching in: the pool's size is not public; 64 is its documented limit.
        assert persist._runners.idle == 64
        assert len(persist._core.nursery.child_tasks) == 64


async def eventually(predicate: Any) -> None:
    """Wait (on the real clock, in small steps) until *predicate* holds."""
    while True:
        if predicate():
            return
        await trio.sleep(0.01)


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


def test_a_test_that_would_wait_for_ever_fails_at_once_under_the_autojump_clock() -> None:
    from conftest import VIRTUAL_BOUND, bounded

    async def hangs() -> None:
        await trio.sleep_forever()

    clock = trio.testing.MockClock(autojump_threshold=0)
    with pytest.raises(trio.TooSlowError):
        trio.run(bounded(hangs), clock=clock)
    assert clock.current_time() == VIRTUAL_BOUND


async def test_every_async_test_runs_under_a_deadline() -> None:
    assert trio.current_effective_deadline() < float("inf")


async def test_a_spawned_result_whose_group_is_taken_keeps_the_owner_there() -> None:
    async def device(base: Any, request: Any) -> Any:
        return {"state": "shared"}

    async with trio_persist.open_persist(device, static_worker=True) as persist:
        group = persist.group({"state": "shared"}, None)
        owner = await persist.start_worker({"state": "shared"}, group)
        assert await persist.resolve("db", "load", spawn_worker=True) == {"state": "shared"}
        assert persist.workers() == (owner,)  # not replaced, not doubled
        assert persist.statistics().workers_started == 1


async def test_a_caller_leaving_as_the_block_closes_is_cancelled_and_nothing_stays() -> None:
    started = trio.Event()

    async def device(base: Any, request: Any) -> Any:
        started.set()
        await trio.sleep_forever()

    leaving = trio.CancelScope()
    async with trio.open_nursery() as outside:
        async with trio_persist.open_persist(device) as persist:

            async def caller() -> None:
                with leaving:
                    await persist.resolve("base", "r")

            outside.start_soon(caller)
            await started.wait()
            leaving.cancel()  # the caller leaves, and the block closes, in one step
    assert leaving.cancelled_caught
    stats = persist.statistics()
    assert (stats.waiters, stats.in_flight, stats.groups) == (0, 0, 0)


async def test_a_spawn_whose_group_a_started_worker_claimed_first_leaves_that_worker(
    autojump_clock: object,
) -> None:
    class Device:
        def group(self, base: Any, request: Any) -> Any:
            return "g"

        async def resolve(self, base: Any, request: Any) -> Any:
            await trio.sleep(1)
            return {"from": request}

    async with trio_persist.open_persist(Device(), static_worker=True) as persist:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(persist.resolve, "b", "spawn", spawn_worker=True))
            await trio.testing.wait_all_tasks_blocked()
            claimed = await persist.start_worker({"explicit": 1}, "g")  # takes over after it
        assert persist.workers() == (claimed,)
        assert claimed.state == {"explicit": 1}
        assert persist.statistics().workers_started == 1


async def test_requests_queued_behind_a_spawn_are_served_once_by_the_new_worker(
    autojump_clock: object,
) -> None:
    class Device:
        def __init__(self) -> None:
            self.executed: list[Any] = []

        def group(self, base: Any, request: Any) -> Any:
            return "g"

        async def resolve(self, base: Any, request: Any) -> Any:
            self.executed.append(request)
            await trio.sleep(1)
            return {"after": request}

    device = Device()
    async with trio_persist.open_persist(device, static_worker=True) as persist:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(persist.resolve, "b", "spawn", spawn_worker=True))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(persist.resolve, "b", "queued")  # behind it, in the flight
        [worker] = persist.workers()
        assert worker.statistics().served == 1  # the queued one, handed over
    assert device.executed == ["spawn", "queued"]  # once each


@pytest.mark.parametrize(("flags", "name"), [({"spawn_worker": 0}, "spawn_worker"),
                                             ({"share": 1}, "share")])  # fmt: skip
async def test_flags_must_be_true_or_false_not_merely_falsy_or_truthy(
    flags: dict[str, Any], name: str
) -> None:
    async def device(base: Any, request: Any) -> Any:
        return request  # pragma: no cover

    async with trio_persist.open_persist(device) as persist:
        with pytest.raises(TypeError, match=f"{name} must be True or False"):
            await persist.resolve("base", "r", **flags)


async def test_a_wrapped_functions_result_lingers_too(autojump_clock: object) -> None:
    calls = 0

    async def fetch(page: int) -> str:
        nonlocal calls
        calls += 1
        return f"page {page}"

    async def device(base: Any, request: Any) -> Any:
        return request  # pragma: no cover - only the wrapped function runs

    async with trio_persist.open_persist(device, linger=10) as persist:
        cached = persist.wrap(fetch)
        assert await cached(1) == "page 1"
        await trio.sleep(5)
        assert await cached(1) == "page 1"  # within its window: no second call
    assert calls == 1


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


async def test_a_worker_reports_the_times_of_its_last_sixty_four_requests(
    autojump_clock: object,
) -> None:
    async def device(state: Any, seconds: float) -> Any:
        await trio.sleep(seconds)
        return state

    async with trio_persist.open_persist(device, static_worker=True) as persist:
        await persist.start_worker("s")
        for _ in range(100):  # slow ones first: they roll out of the window
            await persist.resolve("s", 5)
        for _ in range(64):
            await persist.resolve("s", 1)
        [record] = persist.snapshot()
    assert (record.execution_p50, record.execution_p99) == (1, 1)


async def test_identical_requests_to_a_static_worker_share_one_execution(
    autojump_clock: object,
) -> None:
    executed: list[Any] = []

    async def device(state: Any, request: Any) -> Any:
        executed.append(request)
        await trio.sleep(1)
        return {"for": request}

    async with trio_persist.open_persist(device, static_worker=True) as persist:
        await persist.start_worker("s")
        got: list[Any] = []
        async with trio.open_nursery() as nursery:
            for request in ({"page": 1}, {"page": 1}, {"page": 2}, {"page": 2}):
                nursery.start_soon(lambda r=request: _append(got, persist.resolve("s", r)))
    assert sorted(executed, key=str) == [{"page": 1}, {"page": 2}]  # each once: twins joined
    assert sorted(got, key=str) == [{"for": {"page": 1}}] * 2 + [{"for": {"page": 2}}] * 2


async def _append(into: list[Any], call: Any) -> None:
    into.append(await call)


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
