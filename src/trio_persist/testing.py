"""Helpers for testing code that uses trio-persist, in the spirit of `trio.testing`.

* `wait_quiet`: wait until a persist has nothing in flight and nobody waiting.
* `RecordingDevice`: a device that records what it executes and can be told
  to block, fail or crash on cue.

Both work under Trio's virtual clock (``autojump_clock``) and the real one::

    async def test_ten_callers_share_one_execution():
        device = RecordingDevice()
        async with open_persist(device) as persist, trio.open_nursery() as nursery:
            device.block()
            for _ in range(10):
                nursery.start_soon(persist.resolve, "db", "alice")
            await device.wait_running(1)
            device.release()
        assert device.executions == 1
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, final

import trio

from ._core._persist import Persist

__all__ = ["RecordingDevice", "wait_quiet"]


async def wait_quiet(persist: Persist[Any, Any, Any], *, workers: bool = False) -> None:
    """Wait until *persist* has no flight running and no caller waiting.

    With *workers*, also wait until every worker has ended (idle timeouts and
    stops included). Always a checkpoint; it never polls.
    """
    await persist.wait_quiet()
    if workers:
        for worker in persist.workers():
            await worker.wait_stopped()
        await persist.wait_quiet()


@final
class RecordingDevice:
    """A device that records its executions and does what a test tells it.

    By default an execution returns ``result(base, request)`` (the pair
    ``(base, request)`` without a *result* function) at once, with one
    checkpoint. `block` makes executions wait for `release`; `fail_next` and
    `crash_next` make the next execution raise.

    Attributes:
        calls: Every ``(base, request)`` executed, in order.
    """

    def __init__(self, result: Callable[[Any, Any], Any] | None = None) -> None:
        self._result = result
        self.calls: list[tuple[Any, Any]] = []
        self._gate: trio.Event | None = None
        self._raise_next: list[BaseException] = []
        self._running = 0
        self._changed = trio.lowlevel.ParkingLot()

    def __repr__(self) -> str:
        return f"<RecordingDevice executions={self.executions} running={self._running}>"

    @property
    def executions(self) -> int:
        """Executions started so far."""
        return len(self.calls)

    @property
    def running(self) -> int:
        """Executions running now (started, not yet returned or raised)."""
        return self._running

    def block(self) -> None:
        """Make executions from now on wait until `release`."""
        if self._gate is None:
            self._gate = trio.Event()

    def release(self) -> None:
        """Let every blocked execution (and later ones) go on."""
        if self._gate is not None:
            self._gate.set()
            self._gate = None

    def fail_next(self, error: Exception) -> None:
        """Make the next execution raise *error* (its callers get it)."""
        self._raise_next.append(error)

    def crash_next(self, crash: BaseException) -> None:
        """Make the next execution raise *crash*, a `BaseException` (a crash)."""
        self._raise_next.append(crash)

    async def wait_running(self, count: int = 1) -> None:
        """Wait until at least *count* executions are running. Always a checkpoint."""
        await trio.lowlevel.checkpoint()
        while self._running < count:
            await self._changed.park()

    async def resolve(self, base: Any, request: Any) -> Any:
        """The device: record, wait if blocked, raise if told, else return."""
        self.calls.append((base, request))
        raise_now = self._raise_next.pop(0) if self._raise_next else None
        self._running += 1
        self._changed.unpark_all()
        try:
            gate = self._gate
            if gate is not None:
                await gate.wait()
            else:
                await trio.lowlevel.checkpoint()
            if raise_now is not None:
                raise raise_now
            if self._result is None:
                return (base, request)
            return self._result(base, request)
        finally:
            self._running -= 1
            self._changed.unpark_all()
