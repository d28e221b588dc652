"""Runners: the tasks that flights run in, kept parked between flights.

Starting a Trio task (~6 us here) and entering a cancel scope (~5 us) each
cost more than the rest of a deduplicated call together, so flights do not pay
for them one by one. A runner is a task in the persist's nursery with a single
long-lived cancel scope; between flights it parks, and handing it the next
flight is one ``reschedule``. When an execution must be cancelled because every
listener left, its runner's scope is cancelled: that runner retires, and the
flight (with whatever is queued behind the cancelled job) goes on in a fresh
runner. At most ``limit`` runners stay parked; they end with the persist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import outcome
import trio

if TYPE_CHECKING:
    from ._flight import Flight

__all__ = ["RunnerPool"]


class _Runner:
    __slots__ = ("flight", "scope", "task")

    def __init__(self, task: trio.lowlevel.Task, scope: trio.CancelScope) -> None:
        self.task = task
        self.scope = scope
        self.flight: Flight | None = None


class RunnerPool:
    """Runs flights in reusable tasks of *nursery*. Internal to a persist."""

    __slots__ = ("_idle", "_nursery", "limit", "started")

    def __init__(self, nursery: trio.Nursery, limit: int = 64) -> None:
        self._nursery = nursery
        self._idle: list[_Runner] = []
        self.limit = limit
        self.started = 0

    @property
    def idle(self) -> int:
        """Runners parked now."""
        return len(self._idle)

    def run(self, flight: Flight) -> None:
        """Run *flight* in a parked runner, or in a new one if none is parked."""
        if self._idle:
            runner = self._idle.pop()
            trio.lowlevel.reschedule(runner.task, outcome.Value(flight))
        else:
            self.started += 1
            self._nursery.start_soon(self._main, flight)

    def close(self) -> None:
        """Let parked runners end (the persist is closing)."""
        self.limit = 0
        while self._idle:
            runner = self._idle.pop()
            trio.lowlevel.reschedule(runner.task, outcome.Value(None))

    async def _main(self, flight: Flight | None) -> None:
        with trio.CancelScope() as scope:
            runner = _Runner(trio.lowlevel.current_task(), scope)
            while flight is not None:
                runner.flight = flight
                if not await flight.run(scope):
                    # The scope was cancelled for an abandoned job: it is spent.
                    break
                runner.flight = None
                flight = await self._park(runner)
        if runner.flight is not None and not runner.flight.over:
            # Retired mid-flight: the flight goes on in a fresh runner.
            self.run(runner.flight)

    async def _park(self, runner: _Runner) -> Flight | None:
        if len(self._idle) >= self.limit:
            return None
        self._idle.append(runner)

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._idle.remove(runner)
            return trio.lowlevel.Abort.SUCCEEDED

        next_flight: Flight | None = await trio.lowlevel.wait_task_rescheduled(abort)
        return next_flight
