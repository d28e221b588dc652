"""Recursion: a resolve that would wait for itself raises at once instead of deadlocking."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.lowlevel

import trio_persist


async def test_a_device_resolving_its_own_request_raises_infinite_recursion() -> None:
    async def device(base: Any, request: Any) -> Any:
        return await persist.resolve(base, request)

    async with trio_persist.open_persist(device) as persist:
        with pytest.raises(trio_persist.InfiniteRecursion, match="would wait for an execution"):
            await persist.resolve("base", "req")
        with pytest.raises(RecursionError):
            await persist.resolve("base", "req")
        assert len(persist.registry) == 0


async def test_recursion_through_another_request_of_the_same_group_is_caught() -> None:
    class Device:
        def group(self, base: Any, request: Any) -> Any:
            return base

        async def resolve(self, base: Any, request: Any) -> Any:
            if request == "outer":
                return await persist.resolve(base, "inner")
            return "inner result"  # pragma: no cover - never reached: it would deadlock

    async with trio_persist.open_persist(Device()) as persist:
        with pytest.raises(trio_persist.InfiniteRecursion):
            await persist.resolve("g", "outer")


async def test_a_cycle_of_groups_waiting_for_each_other_is_caught() -> None:
    # a waits for b, b for c, c for a: upstream would hang forever.
    chain = {"a": "b", "b": "c", "c": "a"}

    async def device(base: Any, request: Any) -> Any:
        return await persist.resolve(chain[base], request)

    async with trio_persist.open_persist(device) as persist:
        with pytest.raises(trio_persist.InfiniteRecursion):
            await persist.resolve("a", "req")
        assert persist.statistics().in_flight == 0


async def test_nested_resolves_of_other_groups_are_fine() -> None:
    async def device(base: Any, request: Any) -> Any:
        if request > 0:
            return 1 + await persist.resolve(base, request - 1)
        return 0

    async with trio_persist.open_persist(device) as persist:
        assert await persist.resolve("base", 5) == 5


async def test_allow_infinite_executes_the_recursive_call_directly() -> None:
    depth = 0

    async def device(base: Any, request: Any) -> Any:
        nonlocal depth
        depth += 1
        if depth < 3:
            return await persist.resolve(base, request)
        return depth

    async with trio_persist.open_persist(device, allow_infinite=True) as persist:
        assert await persist.resolve("base", "req") == 3
        assert persist.statistics().executions == 3


async def test_concurrent_callers_of_different_groups_never_see_false_recursion() -> None:
    async def device(base: Any, request: Any) -> Any:
        await trio.lowlevel.checkpoint()
        if base == "outer":
            return await persist.resolve("inner", request)
        return request

    async with trio_persist.open_persist(device) as persist, trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(persist.resolve, "outer", i % 2)
            nursery.start_soon(persist.resolve, "inner", i % 2)


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
