"""`trio_persist.testing`: helpers for users' own tests, tested as users would use them."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trio_persist
from trio_persist.testing import RecordingDevice, wait_quiet


async def test_a_blocked_device_shows_ten_callers_sharing_one_execution() -> None:
    device = RecordingDevice()
    async with trio_persist.open_persist(device) as persist, trio.open_nursery() as nursery:
        device.block()
        for _ in range(10):
            nursery.start_soon(persist.resolve, "db", "alice")
        await device.wait_running(1)
        assert persist.statistics().waiters == 10
        device.release()
    assert device.executions == 1
    assert device.calls == [("db", "alice")]


async def test_the_device_fails_and_crashes_on_cue() -> None:
    device = RecordingDevice(lambda base, request: f"{base}:{request}")
    async with trio_persist.open_persist(device) as persist:
        device.fail_next(KeyError("gone"))
        with pytest.raises(KeyError, match="gone"):
            await persist.resolve("db", "a")
        device.crash_next(GeneratorExit())
        with pytest.raises(trio_persist.LeaderDied) as info:
            await persist.resolve("db", "b")
        assert isinstance(info.value.__cause__, GeneratorExit)
        assert await persist.resolve("db", "c") == "db:c"
    assert device.executions == 3
    assert device.running == 0


async def test_wait_quiet_returns_once_every_flight_and_caller_is_done(
    autojump_clock: object,
) -> None:
    async def slow(base: Any, request: Any) -> Any:
        await trio.sleep(request)
        return request

    async with trio_persist.open_persist(slow) as persist, trio.open_nursery() as nursery:
        for seconds in (1, 3, 2):
            nursery.start_soon(persist.resolve, "b", seconds)
        await trio.testing.wait_all_tasks_blocked()
        await wait_quiet(persist)
        assert trio.current_time() == 3
        stats = persist.statistics()
        assert (stats.in_flight, stats.waiters) == (0, 0)
        with trio.testing.assert_checkpoints():
            await wait_quiet(persist)  # already quiet: returns at once, still a checkpoint


async def test_wait_quiet_can_also_wait_for_workers_to_end(autojump_clock: object) -> None:
    device = RecordingDevice()
    async with trio_persist.open_persist(device, worker_timeout=5) as persist:
        await persist.start_worker("state")
        await persist.resolve("state", "r")
        await wait_quiet(persist, workers=True)
        assert trio.current_time() == 5  # the worker idled out
        assert persist.workers() == ()


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
