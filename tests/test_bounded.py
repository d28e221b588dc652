"""Nothing grows without bound: what callers abandon, forget or leave behind is freed."""

from __future__ import annotations

import dataclasses
import gc
import weakref
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

import trio_persist
from trio_persist._core import _supervisor


class Request:
    """A request that can be watched for being freed."""

    def __init__(self, n: int) -> None:
        self.n = n


class OneGroup:
    def group(self, base: Any, request: Any) -> Any:
        return "one"

    async def resolve(self, base: Any, request: Any) -> Any:
        await trio.sleep(3600)
        return request


async def test_callers_that_give_up_while_queued_are_dropped_at_once(
    autojump_clock: object,
) -> None:
    refs: list[weakref.ref[Request]] = []
    async with trio_persist.open_persist(OneGroup()) as persist, trio.open_nursery() as nursery:
        nursery.start_soon(persist.resolve, "b", Request(-1))  # a long execution
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as callers:
            async with trio.open_nursery() as queue:
                for n in range(1000):
                    request = Request(n)
                    refs.append(weakref.ref(request))
                    queue.start_soon(persist.resolve, "b", request)
                await trio.testing.wait_all_tasks_blocked()
                assert persist.snapshot()[0].queued == 1000
                callers.cancel()  # all give up; the execution still runs
        gc.collect()
        alive = sum(ref() is not None for ref in refs)
        assert alive <= 16  # the rest are freed while the execution goes on
        assert persist.snapshot()[0].queued == 0
        assert trio.current_time() < 3600
        nursery.cancel_scope.cancel()


@dataclasses.dataclass(frozen=True)
class Numbered:
    """A request the default grouper can name, and that can be watched for being freed."""

    n: int


class ByNumber:
    def group(self, base: Any, request: Numbered) -> Any:
        return request.n

    async def resolve(self, base: Any, request: Numbered) -> int:
        return request.n


async def test_a_finished_call_is_freed_by_reference_counting_alone() -> None:
    # Nothing of a finished call is left in a reference cycle: under load each
    # call's objects go as it ends, not at the cyclic collector's next pass.
    async with trio_persist.open_persist(ByNumber()) as persist:
        wrapped = persist.wrap(ByNumber().resolve)
        gc.collect()
        gc.disable()
        try:
            for call in (persist.resolve, wrapped):
                request = Numbered(1)
                ref = weakref.ref(request)
                assert await call(None, request) == 1
                del request
                assert ref() is None
        finally:
            gc.enable()


async def test_a_subscription_nobody_holds_costs_nothing(counting: Any) -> None:
    async with trio_persist.open_persist(counting) as persist:
        counting.wait = 0
        refs = []
        for _ in range(100):
            subscription = persist.subscribe()  # never closed, then dropped
            refs.append(weakref.ref(subscription))
        del subscription
        gc.collect()
        assert all(ref() is None for ref in refs)
        await persist.resolve("b", "r")  # nobody left to offer events to
        with persist.subscribe() as live:
            await persist.resolve("b", "r2")
            assert live.receive_nowait().kind == "flight.started"


async def test_a_full_subscription_drops_events_at_constant_cost(counting: Any) -> None:
    async with trio_persist.open_persist(counting) as persist:
        counting.wait = 0
        with persist.subscribe(max_buffer=1) as slow:
            for i in range(2000):
                await persist.resolve("b", i)
            assert slow.dropped == 2 * 2000 - 1
            assert slow.receive_nowait().kind == "flight.started"


async def test_a_group_whose_hash_changes_does_not_leak_its_registration() -> None:
    class Shifty:
        """A group whose hash changes after it was registered."""

        def __init__(self) -> None:
            self.salt = 0

        def __hash__(self) -> int:
            return hash(("shifty", self.salt))

        def __eq__(self, other: object) -> bool:
            return self is other

    shifty = Shifty()

    class Device:
        def group(self, base: Any, request: Any) -> Any:
            return shifty

        async def resolve(self, base: Any, request: Any) -> Any:
            shifty.salt += 1  # while registered under the old hash
            await trio.lowlevel.checkpoint()
            return request

    async with trio_persist.open_persist(Device()) as persist:
        assert await persist.resolve("b", "r") == "r"
        assert len(persist.registry) == 0
        assert persist.snapshot() == ()
        assert persist.registry.statistics().groups == 0


async def test_groups_remembered_for_restore_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    # Reaching in: the cap is 65,536; shrunk here so the test stays small.
    monkeypatch.setattr(_supervisor, "RETIRED_LIMIT", 3)
    restored: list[Any] = []

    class Sessions:
        def group(self, base: Any, request: Any) -> Any:
            return base

        async def resolve(self, base: Any, request: Any) -> Any:
            return base

        async def restore(self, group: Any) -> Any:
            restored.append(group)
            return group

    async with trio_persist.open_persist(Sessions()) as persist:
        for user in range(5):
            await (await persist.start_worker(user)).stop()
        await persist.resolve(0, "visit")  # forgotten: the oldest beyond the cap
        await persist.resolve(4, "visit")  # remembered: restored
    assert restored == [4]


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
