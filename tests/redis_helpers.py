"""What the Redis tests share: a controllable device and a bounded polling wait."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio


async def eventually(predicate: Callable[[], bool]) -> None:
    """Wait (on the real clock, in small steps) until *predicate* holds.

    Callers bound it with ``trio.fail_after``.
    """
    while True:
        if predicate():
            return
        await trio.sleep(0.01)


class Recorder:
    """A device that counts executions and can be held open."""

    def __init__(self, result: Any = "done") -> None:
        self.calls = 0
        self.release = trio.Event()
        self.result = result

    async def __call__(self, base: Any, request: Any) -> Any:
        self.calls += 1
        await self.release.wait()
        if isinstance(self.result, Exception):
            raise self.result
        return self.result
