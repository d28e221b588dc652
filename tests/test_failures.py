"""Crashes: a device's BaseException stays in its flight; the persist goes on."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import pytest
import trio
import trio.testing

import trio_persist
from conftest import Counting
from trio_persist._core import _routing

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup


class Crash(BaseException):
    """Like a panic: not an Exception, not a cancellation."""


async def test_a_crash_reaches_every_waiter_as_leader_died_without_a_hang() -> None:
    # Go's TestPanicDo: 5 waiters, a panic, nobody hangs.
    release = trio.Event()

    async def device(base: Any, request: Any) -> Any:
        await release.wait()
        raise Crash("boom")

    errors: list[BaseException] = []
    async with trio_persist.open_persist(device) as persist:

        async def call() -> None:
            try:
                await persist.resolve("base", "req")
            except trio_persist.LeaderDied as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        assert len(errors) == 5
        assert all(isinstance(e.__cause__, Crash) for e in errors)
        assert "the device crashed: Crash: boom" in str(errors[0])
        assert len(persist.registry) == 0
        stats = persist.statistics()
        assert (stats.crashes, stats.failures) == (1, 1)


async def test_the_persist_goes_on_after_a_crash() -> None:
    async def device(base: Any, request: Any) -> Any:
        if request == "crash":
            raise Crash()
        return request

    async with trio_persist.open_persist(device) as persist:
        with pytest.raises(trio_persist.LeaderDied):
            await persist.resolve("base", "crash")
        assert await persist.resolve("base", "fine") == "fine"


async def test_a_crash_inside_an_exception_group_is_still_a_crash() -> None:
    async def device(base: Any, request: Any) -> Any:
        raise BaseExceptionGroup("several", [Crash(), ValueError()])

    async with trio_persist.open_persist(device) as persist:
        with pytest.raises(trio_persist.LeaderDied) as info:
            await persist.resolve("base", "req")
        assert isinstance(info.value.__cause__, BaseExceptionGroup)


async def test_an_exception_group_of_errors_reaches_listeners_as_it_is() -> None:
    async def device(base: Any, request: Any) -> Any:
        async with trio.open_nursery() as nursery:

            async def fail() -> None:
                raise ValueError("child")

            nursery.start_soon(fail)

    async with trio_persist.open_persist(device) as persist:
        with pytest.raises(ExceptionGroup) as info:
            await persist.resolve("base", "req")
        assert info.group_contains(ValueError, match="child")


@pytest.mark.parametrize("exit_exception", [KeyboardInterrupt, SystemExit])
async def test_keyboard_interrupt_and_system_exit_propagate_as_in_any_trio_program(
    exit_exception: type[BaseException],
) -> None:
    async def device(base: Any, request: Any) -> Any:
        raise exit_exception()

    with pytest.RaisesGroup(exit_exception, allow_unwrapped=True, flatten_subgroups=True):
        async with trio_persist.open_persist(device) as persist:
            await persist.resolve("base", "req")


async def test_a_caller_interrupted_as_it_parks_is_not_woken_later_in_another_wait(
    autojump_clock: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A KeyboardInterrupt can land between the caller's registration on its job
    # and its wait (stood for here by the wait raising it): the answer must not
    # be sent into whatever the task awaits next.
    real = _routing.wait_task_rescheduled

    def interrupted(abort: Any) -> Any:
        if trio.lowlevel.current_task().name.endswith("interrupted_caller"):
            raise KeyboardInterrupt
        return real(abort)

    monkeypatch.setattr(_routing, "wait_task_rescheduled", interrupted)
    woke_at: list[float] = []

    async def slow(base: Any, request: Any) -> Any:
        await trio.sleep(1)
        return request

    async with trio_persist.open_persist(slow) as persist:

        async def interrupted_caller() -> None:
            with pytest.raises(KeyboardInterrupt):
                await persist.resolve("b", "r")
            await trio.sleep(10)  # a later, unrelated wait
            woke_at.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(persist.resolve, "b", "r")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(interrupted_caller)
    assert woke_at == [10.0]


class CrashingOnClose:
    """A backend whose background task fails as it cleans up, the persist closing."""

    async def serve(
        self, persist: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            raise RuntimeError("the backend's task failed")

    def key_of(self, group: Any, request: Any, group_is_request: bool) -> str | None:
        return None

    async def run(
        self, key: str, base: Any, request: Any, resolve: Any, *, linger: float = 0.0
    ) -> Any:
        return await resolve(base, request)  # pragma: no cover - key_of names nothing


async def test_the_blocks_own_exception_wins_over_a_task_failing_at_the_same_time() -> None:
    async def device(base: Any, request: Any) -> Any:
        return request

    with pytest.raises(KeyError, match="the block's own") as info:
        async with trio_persist.open_persist(device, backend=CrashingOnClose()):
            raise KeyError("the block's own")
    # The task's failure is not dropped either: it is the context.
    context = info.value.__context__
    assert isinstance(context, BaseExceptionGroup)
    assert context.subgroup(RuntimeError) is not None


async def test_a_task_failing_while_the_block_is_quiet_propagates() -> None:
    async def device(base: Any, request: Any) -> Any:
        return request

    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="backend's task")):
        async with trio_persist.open_persist(device, backend=CrashingOnClose()):
            pass


class Backend:
    """A backend that fails when it starts, or later, while the block waits."""

    def __init__(self, *, fail_at_start: bool) -> None:
        self.fail_at_start = fail_at_start

    async def serve(
        self, persist: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        if self.fail_at_start:
            raise ConnectionRefusedError("no server there")
        task_status.started()
        await trio.sleep(1)
        raise RuntimeError("the backend's task failed")

    def key_of(self, group: Any, request: Any, group_is_request: bool) -> str | None:
        return None  # pragma: no cover - nothing is resolved

    async def run(
        self, key: str, base: Any, request: Any, resolve: Any, *, linger: float = 0.0
    ) -> Any:
        return await resolve(base, request)  # pragma: no cover - nothing is resolved


async def test_a_backend_that_fails_to_start_raises_its_own_error_from_open_persist() -> None:
    async def device(base: Any, request: Any) -> Any:
        return request  # pragma: no cover - never called

    with pytest.raises(ConnectionRefusedError, match="no server there"):
        async with trio_persist.open_persist(device, backend=Backend(fail_at_start=True)):
            raise AssertionError("the block never runs")  # pragma: no cover


async def test_a_task_failing_while_the_block_waits_in_its_own_nursery_propagates(
    autojump_clock: object,
) -> None:
    async def device(base: Any, request: Any) -> Any:
        return request  # pragma: no cover - never called

    # The block is cancelled by the failure; what propagates is the failure,
    # never the block's group of Cancelled (which would look like a quiet exit).
    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="backend's task")):
        async with (
            trio_persist.open_persist(device, backend=Backend(fail_at_start=False)),
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(trio.sleep_forever)
            await trio.sleep_forever()


async def test_a_group_is_freed_however_its_execution_ends() -> None:
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
    """An error from deep inside a device (where the original leaked its group)."""


async def test_followers_raise_like_the_leader_instead_of_receiving_the_error_as_a_value(
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
