"""Custom serve loops: a device's ``serve(worker)`` hook receives, executes, replies,
fails and publishes requests itself; what it leaves unanswered is re-routed."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_persist
from conftest import Sleeper


async def test_requests_left_unanswered_by_a_custom_loop_are_rerouted(
    autojump_clock: object,
) -> None:
    class Quitter(Sleeper):
        async def serve(self, worker: trio_persist.Worker) -> None:
            await worker.receive()  # takes one request, then gives up without answering

    device = Quitter()
    async with trio_persist.open_persist(device) as persist:
        await persist.start_worker("s")
        assert await persist.resolve("s", 1) == 1  # re-routed to a fresh flight
        assert persist.workers() == ()


async def test_a_custom_loop_that_raises_is_a_crash_of_that_worker_only() -> None:
    class Broken(Sleeper):
        async def serve(self, worker: trio_persist.Worker) -> None:
            request = await worker.receive()
            assert request is not None
            raise RuntimeError("bug in the loop")

    async with trio_persist.open_persist(Broken()) as persist:
        worker = await persist.start_worker("s")
        assert await persist.resolve("s", 0) == 0  # re-routed
        await worker.wait_stopped()
        assert worker.statistics().stop_reason == "crashed"


async def test_a_custom_loop_can_answer_with_errors_and_publish_results(
    autojump_clock: object,
) -> None:
    class Publisher(Sleeper):
        async def serve(self, worker: trio_persist.Worker) -> None:
            while (request := await worker.receive()) is not None:
                if request.request == "bad":
                    request.fail(ValueError("refused"))
                    continue
                result = await worker.execute(request)
                assert request.answered
                worker.publish(request.request, result)

    async with trio_persist.open_persist(Publisher(), static_worker=True) as persist:
        worker = await persist.start_worker("s", timeout=10)
        with pytest.raises(ValueError, match="refused"):
            await persist.resolve("s", "bad")
        assert await persist.resolve("s", 1) == 1
        await worker.wait_stopped()
        assert worker.statistics().stop_reason == "timeout"
        assert trio.current_time() == 11
        with pytest.raises(trio.WouldBlock):
            worker.receive_nowait()


async def test_a_custom_loop_request_abandoned_mid_execution_is_cancelled(
    autojump_clock: object,
) -> None:
    class Looper(Sleeper):
        async def serve(self, worker: trio_persist.Worker) -> None:
            while (request := await worker.receive()) is not None:
                await worker.execute(request)

    async with trio_persist.open_persist(Looper(), static_worker=True) as persist:
        await persist.start_worker("s")
        with trio.move_on_after(1):
            await persist.resolve("s", 5)
        assert await persist.resolve("s", 1) == 1
        assert trio.current_time() == 2


async def test_stopping_a_custom_loop_waiting_for_work_ends_it_at_once() -> None:
    class Looper(Sleeper):
        async def serve(self, worker: trio_persist.Worker) -> None:
            while (request := await worker.receive()) is not None:
                await worker.execute(request)  # pragma: no cover

    async with trio_persist.open_persist(Looper(), worker_timeout=None) as persist:
        worker = await persist.start_worker("s")
        await trio.testing.wait_all_tasks_blocked()
        await worker.stop()
        assert worker.statistics().stop_reason == "stopped"
