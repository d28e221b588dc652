"""The registry: which owner holds each group; atomic, owner-checked, never stale.

The first tests are those of the original (HyperBEAM's ``hb_name``); the rest
pin down what it got wrong and what holds here instead (docs/guarantees.md).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trio_persist
from trio_persist import GroupTaken, Registry


@pytest.mark.parametrize("name", ["atom", ("term", 1732800000.0)])
def test_register_lookup_register_again_unregister(name: object) -> None:
    registry: Registry[str] = Registry()
    assert registry.register(name, "me") is True
    assert registry.lookup(name) == "me"
    assert registry.register(name, "me") is False
    assert registry.unregister(name, "me") is True
    assert registry.lookup(name) is None


async def test_of_ten_tasks_registering_one_name_at_once_exactly_one_wins() -> None:
    registry: Registry[int] = Registry()
    results: dict[int, bool] = {}

    async def contender(i: int) -> None:
        await trio.lowlevel.checkpoint()
        results[i] = registry.register("unique", i)

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(contender, i)
    winners = [i for i, won in results.items() if won]
    assert len(winners) == 1
    assert registry.lookup("unique") == winners[0]


async def test_a_name_held_by_a_task_is_gone_when_the_task_ends() -> None:
    registry: Registry[str] = Registry()

    async def holder() -> None:
        with registry.hold("name", "holder"):
            await trio.lowlevel.checkpoint()

    await holder()
    assert registry.lookup("name") is None
    assert len(registry) == 0


async def test_a_name_held_by_a_cancelled_task_is_gone_at_once() -> None:
    registry: Registry[str] = Registry()
    async with trio.open_nursery() as nursery:

        async def holder() -> None:
            with registry.hold("name", "holder"):
                await trio.sleep_forever()

        nursery.start_soon(holder)
        await trio.testing.wait_all_tasks_blocked()
        assert registry.lookup("name") == "holder"
        nursery.cancel_scope.cancel()
    assert registry.lookup("name") is None


async def test_a_name_held_by_a_crashing_task_is_gone_at_once() -> None:
    registry: Registry[str] = Registry()
    with pytest.raises(ZeroDivisionError), registry.hold("name", "holder"):
        1 / 0  # noqa: B018
    assert "name" not in registry


async def test_items_count_short_lived_holders_and_forget_them(autojump_clock: object) -> None:
    registry: Registry[str] = Registry()
    registry.register("test_name", "me")
    base = len(registry.items())

    async def short_lived(i: int) -> None:
        with registry.hold(f"random-{i}", f"task-{i}"):
            await trio.sleep(0.5)

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(short_lived, i)
        await trio.sleep(0.1)
        assert len(registry.items()) == base + 10
        await trio.sleep(1)
        assert len(registry.items()) == base
    assert registry.items() == (("test_name", "me"),)


def test_only_the_owner_can_remove_its_entry() -> None:
    registry: Registry[str] = Registry()
    registry.register("group", "owner")
    assert registry.unregister("group", "intruder") is False
    assert registry.lookup("group") == "owner"
    assert registry.unregister("nobody's", "intruder") is False
    assert registry.statistics().foreign_removals_refused == 1


def test_replace_hands_a_group_over_only_from_its_owner() -> None:
    registry: Registry[str] = Registry()
    registry.register("group", "flight")
    assert registry.replace("group", "someone", "worker") is False
    assert registry.replace("group", "flight", "worker") is True
    assert registry.lookup("group") == "worker"


def test_holding_a_taken_group_raises_and_changes_nothing() -> None:
    registry: Registry[str] = Registry()
    registry.register("group", "first")
    with (
        pytest.raises(GroupTaken, match="already registered to 'first'"),
        registry.hold("group", "second"),
    ):
        pass  # pragma: no cover
    assert registry.lookup("group") == "first"


def test_a_hold_handed_over_with_replace_is_not_removed_on_exit() -> None:
    registry: Registry[str] = Registry()
    with registry.hold("group", "flight"):
        registry.replace("group", "flight", "worker")
    assert registry.lookup("group") == "worker"


def test_statistics_count_registrations_and_refusals() -> None:
    registry: Registry[str] = Registry()
    registry.register("a", "x")
    registry.register("a", "y")
    registry.register("b", "y")
    stats = registry.statistics()
    assert (stats.groups, stats.registrations, stats.refused) == (2, 2, 1)
    assert "2 groups" in repr(registry)


async def test_a_forgotten_flight_ending_late_never_removes_its_successor(
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


async def test_an_undeduplicated_call_never_touches_a_registration() -> None:
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


async def test_registrations_belong_to_the_persist_not_to_a_task() -> None:
    # Upstream's registry table died with whichever process created it.
    async def device(base: Any, request: Any) -> Any:
        return base

    async with trio_persist.open_persist(device) as persist:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(persist.start_worker, "s")
        [worker] = persist.workers()  # the task that started it is gone; the worker is not
        assert persist.registry.lookup(worker.group) is worker
