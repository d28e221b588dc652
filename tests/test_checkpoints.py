"""Every public async call is a checkpoint, on every path, as Trio's own are.

A device that never awaits anything is the hard case: whatever path a call
takes (a new flight, a join, a worker, a direct execution for recursion), the
call must still let other tasks run and notice cancellation.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from trio.testing import assert_checkpoints

import trio_persist
from trio_persist.testing import RecordingDevice


async def instant(base: Any, request: Any) -> Any:
    return (base, request)


async def test_resolve_checkpoints_when_it_starts_a_flight() -> None:
    async with trio_persist.open_persist(instant) as persist:
        with assert_checkpoints():
            await persist.resolve("base", "request")


async def test_resolve_checkpoints_when_it_joins_a_flight() -> None:
    release = trio.Event()

    async def held(base: Any, request: Any) -> Any:
        await release.wait()
        return request

    async with trio_persist.open_persist(held) as persist, trio.open_nursery() as nursery:
        nursery.start_soon(persist.resolve, "base", "request")
        await trio.testing.wait_all_tasks_blocked()

        async def set_release() -> None:
            release.set()

        nursery.start_soon(set_release)
        with assert_checkpoints():
            await persist.resolve("base", "request")


async def test_resolve_checkpoints_without_deduplication() -> None:
    async with trio_persist.open_persist(instant, await_inprogress=False) as persist:
        with assert_checkpoints():
            await persist.resolve("base", "request")


async def test_resolve_checkpoints_at_a_worker() -> None:
    async with trio_persist.open_persist(instant) as persist:
        await persist.start_worker("state")
        with assert_checkpoints():
            await persist.resolve("state", "request")


async def test_a_recursive_resolve_executed_directly_checkpoints() -> None:
    class Recursive:
        async def resolve(self, base: Any, request: Any) -> Any:
            if request == "outer":
                with assert_checkpoints():
                    return await persist.resolve(base, "outer-again")
            return "inner"

        def group(self, base: Any, request: Any) -> Any:
            return base

    async with trio_persist.open_persist(Recursive(), allow_infinite=True) as persist:
        assert await persist.resolve("base", "outer") == "inner"


async def test_a_worker_resolving_its_own_group_directly_checkpoints() -> None:
    class Nested:
        async def resolve(self, base: Any, request: Any) -> Any:
            if request == "outer":
                with assert_checkpoints():
                    return await persist.resolve(base, "inner")
            return "inner"

        def group(self, base: Any, request: Any) -> Any:
            return "one"

    async with trio_persist.open_persist(Nested()) as persist:
        await persist.start_worker("state")
        assert await persist.resolve("state", "outer") == "inner"


async def test_start_worker_checkpoints_whether_it_starts_one_or_finds_one() -> None:
    async with trio_persist.open_persist(instant) as persist:
        with assert_checkpoints():
            worker = await persist.start_worker("state")
        with assert_checkpoints():
            assert await persist.start_worker("state") is worker


async def test_stopping_and_waiting_for_a_worker_checkpoint_even_once_it_ended() -> None:
    async with trio_persist.open_persist(instant) as persist:
        worker = await persist.start_worker("state")
        with assert_checkpoints():
            await worker.stop()
        with assert_checkpoints():
            await worker.wait_stopped()
        with assert_checkpoints():
            await worker.stop()


async def test_a_custom_loop_receive_and_execute_checkpoint_even_with_work_queued(
    autojump_clock: object,
) -> None:
    seen: list[Any] = []

    class Batching:
        async def resolve(self, base: Any, request: Any) -> Any:
            return request

        async def serve(self, worker: trio_persist.Worker) -> None:
            await trio.sleep(1)  # let requests queue up first
            while True:
                with assert_checkpoints():
                    taken = await worker.receive()
                if taken is None:
                    return
                with assert_checkpoints():
                    seen.append(await worker.execute(taken))

    async with trio_persist.open_persist(Batching(), worker_timeout=5) as persist:
        await persist.start_worker("state", static=True)
        async with trio.open_nursery() as nursery:
            for request in ("a", "b"):
                nursery.start_soon(persist.resolve, "state", request)
    assert sorted(seen) == ["a", "b"]


async def test_a_custom_loop_receive_checkpoints_when_the_worker_was_asked_to_stop() -> None:
    received: list[Any] = []

    class Stopping:
        async def resolve(self, base: Any, request: Any) -> Any:
            return request

        async def serve(self, worker: trio_persist.Worker) -> None:
            worker.stop_nowait()
            with assert_checkpoints():
                received.append(await worker.receive())

    async with trio_persist.open_persist(Stopping()) as persist:
        worker = await persist.start_worker("state")
        await worker.wait_stopped()
    assert received == [None]
    assert worker.statistics().stop_reason == "stopped"  # not "crashed" by the assert


async def test_the_recording_device_checkpoints_when_it_does_not_block() -> None:
    device = RecordingDevice()
    with assert_checkpoints():
        assert await device.resolve("base", "request") == ("base", "request")
