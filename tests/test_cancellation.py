"""Cancellation: a caller leaving never hurts the others; the last one out stops the work.

The work runs in a task of the persist, not in any caller, and each execution
counts its listeners.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trio_persist
from conftest import Counting, OneGroup, Sleeper


async def test_cancelling_one_follower_leaves_the_others_their_result(counting: Counting) -> None:
    counting.hold = True
    results: list[Any] = []
    async with trio_persist.open_persist(counting) as persist:

        async def call() -> None:
            results.append(await persist.resolve("base", "req"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            async with trio.open_nursery() as doomed:
                doomed.start_soon(call)
                await trio.testing.wait_all_tasks_blocked()
                assert persist.statistics().waiters == 2
                doomed.cancel_scope.cancel()
            assert persist.statistics().waiters == 1
            counting.release.set()
    assert counting.calls == 1
    assert len(results) == 1


async def test_cancelling_the_first_caller_spares_the_work_for_the_others(
    autojump_clock: object, counting: Counting
) -> None:
    results: list[Any] = []
    async with trio_persist.open_persist(counting) as persist:

        async def call() -> None:
            results.append(await persist.resolve("base", "req"))

        async with trio.open_nursery() as nursery:
            with trio.move_on_after(0.5):
                nursery.start_soon(call)
                await trio.testing.wait_all_tasks_blocked()
                await persist.resolve("base", "req")  # the first caller, cancelled at 0.5
            assert trio.current_time() == 0.5
    assert trio.current_time() == 1.0
    assert counting.calls == 1
    assert results == [("base", "req", 1)]


async def test_cancelling_every_caller_cancels_the_work_and_frees_the_group(
    counting: Counting,
) -> None:
    counting.hold = True
    cancelled = trio.Event()

    async def device(base: Any, request: Any) -> Any:
        try:
            return await counting(base, request)
        except trio.Cancelled:
            cancelled.set()
            raise

    async with trio_persist.open_persist(device) as persist:
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(persist.resolve, "base", "req")
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        await cancelled.wait()
        assert len(persist.registry) == 0
        stats = persist.statistics()
        assert (stats.abandoned, stats.waiters, stats.in_flight) == (1, 0, 0)


async def test_a_caller_arriving_after_everyone_left_gets_a_fresh_execution(
    counting: Counting,
) -> None:
    counting.hold = True
    async with trio_persist.open_persist(counting) as persist:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(persist.resolve, "base", "req")
            await trio.testing.wait_all_tasks_blocked()
            assert counting.calls == 1
            nursery.cancel_scope.cancel()
        counting.release.set()
        assert await persist.resolve("base", "req") == ("base", "req", 2)


async def test_a_caller_cancelled_before_it_waits_leaves_no_execution_behind() -> None:
    completed = []

    async def device(base: Any, request: Any) -> Any:
        await trio.sleep_forever()
        completed.append(request)  # pragma: no cover

    async with trio_persist.open_persist(device) as persist:
        with trio.CancelScope() as scope:
            scope.cancel()
            await persist.resolve("base", "req")
        await trio.testing.wait_all_tasks_blocked()
        assert completed == []
        assert len(persist.registry) == 0
        assert persist.statistics().in_flight == 0


async def test_abandoning_the_running_request_lets_the_queue_behind_it_go_on(
    autojump_clock: object, one_group: OneGroup
) -> None:
    async with trio_persist.open_persist(one_group) as persist:
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(0.5):
                nursery.start_soon(persist.resolve, None, "second")
                await persist.resolve(None, "first")
        assert one_group.executed == ["first", "second"]
        assert trio.current_time() == 1.5
        assert persist.statistics().abandoned == 1


async def test_a_queued_request_whose_callers_left_is_skipped(
    autojump_clock: object, one_group: OneGroup
) -> None:
    async with trio_persist.open_persist(one_group) as persist:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(persist.resolve, None, "first")
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(0.5):
                await persist.resolve(None, "skipped")
            nursery.start_soon(persist.resolve, None, "third")
        assert one_group.executed == ["first", "third"]
        assert trio.current_time() == 2


async def test_a_device_that_swallows_its_cancellation_does_not_wedge_the_group(
    autojump_clock: object,
) -> None:
    class Stubborn:
        def group(self, base: Any, request: Any) -> Any:
            return "one"

        async def resolve(self, base: Any, request: Any) -> Any:
            if request == "stubborn":
                try:
                    await trio.sleep(10)
                except trio.Cancelled:
                    return "swallowed"  # never do this; the persist copes anyway
            await trio.sleep(1)
            return request

    async with trio_persist.open_persist(Stubborn()) as persist:
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(0.5):
                nursery.start_soon(persist.resolve, None, "after")
                await persist.resolve(None, "stubborn")
        assert await persist.resolve(None, "later") == "later"
        assert persist.statistics().in_flight == 0


async def test_closing_the_persist_mid_flight_gives_outside_callers_leader_died(
    counting: Counting,
) -> None:
    counting.hold = True
    outcome: list[BaseException] = []

    async def outside_caller(persist: trio_persist.Persist) -> None:
        try:
            await persist.resolve("base", "req")
        except trio_persist.LeaderDied as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery, trio_persist.open_persist(counting) as persist:
        nursery.start_soon(outside_caller, persist)
        await trio.testing.wait_all_tasks_blocked()
    assert len(outcome) == 1
    assert "the persist closed" in str(outcome[0])
    assert persist.statistics().in_flight == 0
    assert len(persist.registry) == 0


async def test_after_the_block_resolve_raises_persist_closed(counting: Counting) -> None:
    async with trio_persist.open_persist(counting) as persist:
        pass
    assert persist.closed
    with pytest.raises(trio_persist.PersistClosed, match="closed"):
        await persist.resolve("base", "req")
    with pytest.raises(trio.ClosedResourceError):
        await persist.start_worker("base")


async def test_an_error_in_the_block_propagates_unwrapped_and_ends_every_flight(
    counting: Counting,
) -> None:
    counting.hold = True
    with pytest.raises(KeyError, match="from the body"):
        async with trio_persist.open_persist(counting) as persist:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(persist.resolve, "base", "req")
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
            raise KeyError("from the body")
    assert persist.statistics().in_flight == 0


async def test_cancelling_the_scope_around_the_block_ends_it_cleanly(counting: Counting) -> None:
    counting.hold = True
    with trio.move_on_after(1) as scope:
        async with trio_persist.open_persist(counting) as persist:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(persist.resolve, "base", "req")
                await trio.sleep_forever()
    assert scope.cancelled_caught
    assert persist.statistics().in_flight == 0


async def test_a_caller_arriving_while_an_abandoned_execution_unwinds_gets_a_fresh_one(
    autojump_clock: object,
) -> None:
    executions = 0

    async def device(base: Any, request: Any) -> Any:
        nonlocal executions
        executions += 1
        try:
            await trio.sleep(5)
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await trio.sleep(1)  # a slow clean-up: the group stays busy meanwhile
            raise
        return executions

    async with trio_persist.open_persist(device) as persist:
        with trio.move_on_after(1):
            await persist.resolve("base", "req")
        await trio.sleep(0.5)  # the abandoned execution is still cleaning up
        assert await persist.resolve("base", "req") == 2
        assert trio.current_time() == 1 + 1 + 5  # it waited for the clean-up: one at a time


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


async def test_a_worker_request_whose_callers_all_left_is_cancelled_and_the_worker_goes_on(
    autojump_clock: object,
) -> None:
    device = Sleeper()
    async with trio_persist.open_persist(device, static_worker=True) as persist:
        worker = await persist.start_worker("s")
        with trio.move_on_after(1):
            await persist.resolve("s", 5)
        assert await persist.resolve("s", 2) == 2
        assert trio.current_time() == 3
        assert persist.statistics().abandoned == 1
        assert not worker.statistics().stopped


async def test_a_queued_worker_request_whose_callers_left_is_skipped(
    autojump_clock: object,
) -> None:
    device = Sleeper()
    async with trio_persist.open_persist(device, static_worker=True) as persist:
        await persist.start_worker("s")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(persist.resolve, "s", 1)
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(0.5):
                await persist.resolve("s", 7)
        assert device.executed == [1]
        assert trio.current_time() == 1
