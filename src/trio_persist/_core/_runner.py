"""Runners: the tasks that flights run in, kept parked between flights.

Starting a Trio task (~6 us here) and entering a cancel scope (~5 us) each
cost more than the rest of a deduplicated call together, so flights do not pay
for them one by one. A runner is a task in the persist's nursery with a single
long-lived cancel scope; between flights it parks, and handing it the next
flight is one ``reschedule``. When an execution must be cancelled because every
listener left, its runner's scope is cancelled: that runner retires, and the
flight (with whatever is queued behind the cancelled job) goes on in a fresh
runner. At most ``limit`` runners stay parked; they end with the persist.

The pool knows flights only as `Runnable`, so it sits below them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import trio
from trio.lowlevel import reschedule, wait_task_rescheduled

from ._job import WAKE

__all__ = ["Runnable", "RunnerPool"]


class Runnable(Protocol):
    """What a runner runs (a flight)."""

    @property
    def over(self) -> bool:
        """Whether it has ended (freed its group)."""
        ...

    async def run_jobs(self, scope: trio.CancelScope) -> bool:
        """Run in a runner whose cancel scope is *scope*; True when over, False
        when *scope* was cancelled and is spent (then it goes on in a fresh runner)."""
        ...


class _Runner:
    __slots__ = ("abort", "runnable", "scope", "task")

    def __init__(
        self,
        task: trio.lowlevel.Task,
        scope: trio.CancelScope,
        abort: Callable[[Any], trio.lowlevel.Abort],
    ) -> None:
        self.task = task
        self.scope = scope
        self.runnable: Runnable | None = None
        # What cancels its park: made once per runner, not once per park.
        self.abort = abort


class RunnerPool:
    """Runs runnables in reusable tasks of *nursery*. Internal to a persist."""

    __slots__ = ("_idle", "_nursery", "limit")

    def __init__(self, nursery: trio.Nursery, limit: int = 64) -> None:
        self._nursery = nursery
        self._idle: list[_Runner] = []
        self.limit = limit

    @property
    def idle(self) -> int:
        """Runners parked now."""
        return len(self._idle)

    def launch(self, runnable: Runnable) -> None:
        """Run *runnable* in a parked runner, or in a new one if none is parked."""
        if self._idle:
            runner = self._idle.pop()
            # Handed over in the runner itself: the wake-up carries nothing.
            runner.runnable = runnable
            reschedule(runner.task, WAKE)
        else:
            self._nursery.start_soon(self._main, runnable)

    def close(self) -> None:
        """Let parked runners end (the persist is closing)."""
        self.limit = 0
        while self._idle:
            runner = self._idle.pop()
            trio.lowlevel.reschedule(runner.task, WAKE)  # with no runnable: it ends

    async def _main(self, runnable: Runnable | None) -> None:
        scope = trio.CancelScope()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._idle.remove(runner)
            return trio.lowlevel.Abort.SUCCEEDED

        runner = _Runner(trio.lowlevel.current_task(), scope, abort)
        with scope:
            while runnable is not None:
                runner.runnable = runnable
                if not await runnable.run_jobs(scope):
                    # The scope was cancelled for an abandoned job: it is spent.
                    break
                # Parked, it holds no flight: what the flight ran (its results,
                # a wrapped function) is not kept alive by an idle task.
                runner.runnable = runnable = None
                # Parked (awaited from this frame: no coroutine per park) until
                # `launch` hands it the next runnable, or `close` none.
                if len(self._idle) >= self.limit:
                    break
                self._idle.append(runner)
                await wait_task_rescheduled(runner.abort)
                runnable = runner.runnable
        if runner.runnable is not None and not runner.runnable.over:
            # Retired mid-flight: the flight goes on in a fresh runner.
            self.launch(runner.runnable)
