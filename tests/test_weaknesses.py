"""Upstream's weaknesses W1-W7 (section 10 of the behavioural reading): none happens here.

The worker weaknesses (W4, W9-W12) are in ``test_worker_weaknesses.py``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import trio
import trio.testing

import trio_persist
from conftest import Counting


async def test_w1_distinct_requests_never_share_a_group_or_a_result() -> None:
    # Upstream's 27-bit phash2 collides after ~10^4 live groups, and then a
    # follower returns a result computed for a different base.
    groups = {trio_persist.default_group({"base": i}, {"path": "same"}) for i in range(20_000)}
    assert len(groups) == 20_000

    async def device(base: Any, request: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return base

    async with trio_persist.open_persist(device) as persist:
        results: dict[int, Any] = {}

        async def call(i: int) -> None:
            results[i] = await persist.resolve({"base": i}, {"path": "same"})

        async with trio.open_nursery() as nursery:
            for i in range(2000):
                nursery.start_soon(call, i)
    assert all(results[i] == {"base": i} for i in range(2000))


async def test_w2_of_many_concurrent_first_callers_exactly_one_executes(
    counting: Counting,
) -> None:
    # Upstream looks up, then registers and ignores the result: two leaders.
    counting.hold = True
    sequencer = trio.testing.Sequencer()
    async with trio_persist.open_persist(counting) as persist:

        async def first_caller(position: int) -> None:
            async with sequencer(position):
                pass
            await persist.resolve("base", "req")

        async with trio.open_nursery() as nursery:
            for position in range(10):
                nursery.start_soon(first_caller, position)
            await trio.testing.wait_all_tasks_blocked()
            counting.release.set()
    assert counting.calls == 1


async def test_w3_a_forgotten_flight_ending_late_never_removes_its_successor(
    autojump_clock: object,
) -> None:
    # Upstream deletes by key alone; Go singleflight once had the same bug with Forget.
    durations = iter([1.0, 2.0])

    async def device(base: Any, request: Any) -> Any:
        await trio.sleep(next(durations))
        return trio.current_time()

    async with trio_persist.open_persist(device) as persist:
        group = persist.group("base", "req")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(persist.resolve, "base", "req")  # the old flight, ends at 1
            await trio.testing.wait_all_tasks_blocked()
            old = persist.registry.lookup(group)
            persist.forget(group)
            nursery.start_soon(persist.resolve, "base", "req")  # the new one, ends at 2
            await trio.sleep(1.5)
            new = persist.registry.lookup(group)
            assert new is not None
            assert new is not old  # the old flight ended at 1 and left it alone
        assert len(persist.registry) == 0


async def test_w3_an_undeduplicated_call_never_touches_a_registration() -> None:
    # Upstream: a caller with await_inprogress=false deletes whoever owns its group.
    release = trio.Event()

    class Device:
        def group(self, base: Any, request: Any) -> Any:
            return "shared"

        async def resolve(self, base: Any, request: Any) -> Any:
            await release.wait()
            return request

    async with trio_persist.open_persist(Device()) as deduplicating:
        async with trio_persist.open_persist(Device(), await_inprogress=False) as plain:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(deduplicating.resolve, None, "a")
                nursery.start_soon(plain.resolve, None, "b")
                await trio.testing.wait_all_tasks_blocked()
                release.set()
                await trio.testing.wait_all_tasks_blocked()
                assert len(plain.registry) == 0


async def test_w5_a_caller_arriving_as_a_flight_lands_is_answered(autojump_clock: object) -> None:
    # Upstream unregisters, then drains without blocking: a follower in between
    # waits forever. Here closing the group and collecting its listeners are one step.
    answered: list[float] = []

    async def device(base: Any, request: Any) -> Any:
        await trio.sleep(1)
        return trio.current_time()

    async with trio_persist.open_persist(device) as persist:

        async def caller(delay: float) -> None:
            await trio.sleep(delay)
            answered.append(await persist.resolve("base", "req"))

        async with trio.open_nursery() as nursery:
            for delay in (0, 0.5, 1, 1, 1, 1.5):
                nursery.start_soon(caller, delay)
    assert len(answered) == 6
    assert trio.current_time() <= 2.5


async def test_w6_a_group_is_freed_however_its_execution_ends() -> None:
    class Boom(BaseException):
        pass

    outcomes: dict[str, Any] = {
        "value": None,
        "error": ValueError("e"),
        "crash": Boom(),
        "group": ExceptionGroupLike(),
    }

    async def device(base: Any, request: Any) -> Any:
        await trio.lowlevel.checkpoint()
        outcome = outcomes[request]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async with trio_persist.open_persist(device) as persist:
        for request in outcomes:
            with contextlib.suppress(ValueError, trio_persist.LeaderDied, ExceptionGroupLike):
                await persist.resolve("base", request)
            assert len(persist.registry) == 0
        with trio.move_on_after(0):
            await persist.resolve("base", "value")
        await trio.testing.wait_all_tasks_blocked()
        assert len(persist.registry) == 0


class ExceptionGroupLike(Exception):
    """An error raised from deep inside a device (upstream's stage 7-10 failures)."""


async def test_w7_a_different_request_is_served_as_soon_as_the_first_finishes(
    autojump_clock: object, counting: Counting
) -> None:
    # Upstream answers only identical requests; the rest wait for the leader to die.
    class Device:
        def group(self, base: Any, request: Any) -> Any:
            return base

        async def resolve(self, base: Any, request: Any) -> Any:
            await trio.sleep(1)
            return request

    async with trio_persist.open_persist(Device()) as persist, trio.open_nursery() as nursery:
        nursery.start_soon(persist.resolve, "m", "first")
        await trio.testing.wait_all_tasks_blocked()
        assert await persist.resolve("m", "second") == "second"
        assert trio.current_time() == 2


async def test_w8_followers_raise_like_the_leader_instead_of_returning_error_tuples(
    counting: Counting,
) -> None:
    counting.hold = True
    async with trio_persist.open_persist(counting) as persist:
        raised = 0

        async def call() -> None:
            nonlocal raised
            try:
                await persist.resolve("base", "fail:same")
            except ValueError:
                raised += 1

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            counting.release.set()
    assert raised == 3
