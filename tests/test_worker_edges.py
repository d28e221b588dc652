"""Workers at their edges: full inboxes, abandoned requests, custom loops that misbehave,
and upstream's worker weaknesses (W4, W9-W12), none of which happens here."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

import trio_persist


class Sleeper:
    """One group; each request sleeps its own number of seconds."""

    def __init__(self) -> None:
        self.executed: list[Any] = []

    def group(self, base: Any, request: Any) -> Any:
        return "g"

    async def resolve(self, state: Any, request: Any) -> Any:
        self.executed.append(request)
        await trio.sleep(request)
        return request


async def test_a_full_inbox_makes_callers_wait_and_drops_nothing(autojump_clock: object) -> None:
    device = Sleeper()
    async with trio_persist.open_persist(device, static_worker=True, worker_inbox=1) as persist:
        worker = await persist.start_worker("s")
        async with trio.open_nursery() as nursery:
            for n in (1, 2, 3, 4):
                nursery.start_soon(persist.resolve, "s", n)
                await trio.testing.wait_all_tasks_blocked()
            assert worker.statistics().queued == 1  # one in the inbox, two waiting for room
            assert persist.statistics().waiters == 4
        assert sorted(device.executed) == [1, 2, 3, 4]
        assert trio.current_time() == 10


async def test_a_caller_waiting_for_room_is_rerouted_when_the_worker_stops(
    autojump_clock: object,
) -> None:
    device = Sleeper()
    async with trio_persist.open_persist(device, static_worker=True, worker_inbox=1) as persist:
        worker = await persist.start_worker("s")
        results = []
        async with trio.open_nursery() as nursery:
            for n in (1, 2, 3):

                async def call(n: int = n) -> None:
                    results.append(await persist.resolve("s", n))

                nursery.start_soon(call)
                await trio.testing.wait_all_tasks_blocked()
            worker.stop_nowait()
        assert sorted(results) == [1, 2, 3]


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


async def test_forget_stops_a_worker() -> None:
    async with trio_persist.open_persist(Sleeper()) as persist:
        worker = await persist.start_worker("s")
        assert persist.forget("g")
        await worker.wait_stopped()
        assert worker.statistics().stop_reason == "forgotten"
        await worker.wait_stopped()  # waiting again returns at once


async def test_w4_no_parallel_leader_appears_while_a_worker_serves(
    autojump_clock: object,
) -> None:
    # Upstream unregistered the worker during each request: a request arriving
    # then became an independent leader running against stale state.
    device = Sleeper()
    async with trio_persist.open_persist(device, static_worker=True) as persist:
        await persist.start_worker("s")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(persist.resolve, "s", 2)
            await trio.sleep(1)
            nursery.start_soon(persist.resolve, "s", 1)
            await trio.testing.wait_all_tasks_blocked()
            assert persist.statistics().in_flight == 0  # no flight: it queued at the worker
        assert trio.current_time() == 3


async def test_w9_only_the_flights_own_group_is_handed_to_its_worker(
    autojump_clock: object,
) -> None:
    # Upstream's forward_work moved every queued request of any group.
    class Device:
        def group(self, base: Any, request: Any) -> Any:
            return base

        async def resolve(self, base: Any, request: Any) -> Any:
            await trio.sleep(1)
            return base

    async with trio_persist.open_persist(Device(), static_worker=True) as persist:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(persist.resolve, "a", "spawn", spawn_worker=True))
            nursery.start_soon(persist.resolve, "b", "other")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(persist.resolve, "a", "queued")
        [worker] = persist.workers()
        assert worker.group == "a"
        assert worker.statistics().served == 1
        assert trio.current_time() == 2


async def test_w10_default_grouped_workers_register_under_a_real_group() -> None:
    # Upstream registered such workers as 'ungrouped_exec' (or crashed with badmap).
    async def device(base: Any, request: Any) -> Any:
        return {"state": base, "request": request}

    async with trio_persist.open_persist(device) as persist:
        state = await persist.resolve("base", "x", spawn_worker=True)
        [worker] = persist.workers()
        assert worker.group == trio_persist.default_group(state, None)


async def test_w11_a_bad_error_strategy_is_refused_up_front() -> None:
    async def device(base: Any, request: Any) -> Any:
        return base  # pragma: no cover

    with pytest.raises(ValueError, match="error_strategy"):
        async with trio_persist.open_persist(device, error_strategy="crash"):  # type: ignore[arg-type]
            pass  # pragma: no cover


async def test_w12_registrations_belong_to_the_persist_not_to_a_task() -> None:
    # Upstream's registry table died with whichever process created it.
    async def device(base: Any, request: Any) -> Any:
        return base

    async with trio_persist.open_persist(device) as persist:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(persist.start_worker, "s")
        [worker] = persist.workers()  # the task that started it is gone; the worker is not
        assert persist.registry.lookup(worker.group) is worker
