"""What the Redis tests share: a controllable device and a bounded polling wait."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import trio

import trio_persist
from trio_persist.redis import RedisBackend


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


def names_for(persist: trio_persist.Persist, request: Any, base: Any = "base") -> dict[str, str]:
    """The Redis keys of the execution ``persist.resolve(base, request)`` would lead."""
    from trio_persist.redis._scripts import keys_of

    backend = persist.backend
    key = backend.key_of(persist.group(base, request), request, True)
    return keys_of(backend.namespace, key)


@attrs.define
class Pair:
    """Two persists on one namespace, standing for two processes: ``a`` leads, ``b`` follows.

    Each caller's outcome (its value, or the exception it raised) lands in ``got``.
    """

    a: trio_persist.Persist
    b: trio_persist.Persist
    nursery: trio.Nursery
    got: list[Any] = attrs.Factory(list)
    lead_scope: trio.CancelScope = attrs.Factory(trio.CancelScope)

    @property
    def leader(self) -> RedisBackend:
        return self.a.backend  # type: ignore[no-any-return]

    @property
    def follower(self) -> RedisBackend:
        return self.b.backend  # type: ignore[no-any-return]

    async def _call(self, persist: trio_persist.Persist, request: Any) -> None:
        try:
            self.got.append(await persist.resolve("base", request))
        except Exception as exc:
            self.got.append(exc)

    async def lead(self, request: Any = "r") -> None:
        """Start one caller in ``a`` (cancelled by ``lead_scope``) and wait until it leads."""

        async def lead() -> None:
            with self.lead_scope:
                await self._call(self.a, request)

        self.nursery.start_soon(lead)
        await eventually(lambda: self.leader.statistics().leading == 1)

    async def follow(self, request: Any = "r", callers: int = 1) -> None:
        """Start *callers* in ``b`` and wait until its flight follows."""
        for _ in range(callers):
            self.nursery.start_soon(self._call, self.b, request)
        await eventually(lambda: self.follower.statistics().following == 1)


@contextlib.asynccontextmanager
async def open_pair(
    leader: RedisBackend, follower: RedisBackend, device: Any, other_device: Any = None
) -> AsyncIterator[Pair]:
    """Open both persists and a nursery for their callers; the block waits for them all."""
    async with (
        trio_persist.open_persist(device, backend=leader) as a,
        trio_persist.open_persist(other_device or device, backend=follower) as b,
        trio.open_nursery() as nursery,
    ):
        yield Pair(a, b, nursery)
