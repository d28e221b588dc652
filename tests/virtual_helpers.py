"""Devices and a store for the virtual worker tests: they record what happens, and when.

`killed_after` runs a durable child and kills it mid-stream.
`Scripted` is a real `MemoryStore` (states sealed as the other stores seal
them) whose loads and saves can be made slow or failing, group by group, and
that records every call with its virtual start and end times and how many
saves of one group overlapped.
"""

from __future__ import annotations

import copy
import signal
import subprocess
import sys
from collections.abc import Hashable
from typing import Any

import attrs
import trio

from trio_persist.stores import MemoryStore


class Boom(Exception):
    """What a scripted store or device fails with."""


class Crash(BaseException):
    """A device crash (not an Exception)."""


@attrs.define
class Call:
    op: str
    group: Hashable
    state: Any
    began: float
    ended: float | None = None
    error: str | None = None


@attrs.define(eq=False)
class Scripted:
    """A `MemoryStore` with scripted delays and failures, recording its calls."""

    inner: MemoryStore = attrs.field(factory=MemoryStore)
    load_delay: float = 0.0
    # Per group, instead of load_delay.
    load_delays: dict[Hashable, float] = attrs.field(factory=dict)
    save_delay: float = 0.0
    # Groups whose loads or saves raise `Boom` (a set: change it at any time).
    failing_loads: set[Hashable] = attrs.field(factory=set)
    failing_saves: set[Hashable] = attrs.field(factory=set)
    # Loads wait for this event, when set (then the delay is not used).
    gate: trio.Event | None = None
    calls: list[Call] = attrs.field(factory=list)
    # The last state saved for each group, as it was saved.
    latest: dict[Hashable, Any] = attrs.field(factory=dict)
    _saving: dict[Hashable, int] = attrs.field(factory=dict)
    most_at_once: dict[Hashable, int] = attrs.field(factory=dict)
    saving_groups_at_once: int = 0

    def ops(self, op: str, group: Hashable | None = None) -> list[Call]:
        return [c for c in self.calls if c.op == op and (group is None or c.group == group)]

    def saved(self, group: Hashable) -> list[Any]:
        return [c.state for c in self.ops("save", group) if c.error is None and c.ended]

    async def load(self, group: Hashable) -> Any:
        call = Call("load", group, None, trio.current_time())
        self.calls.append(call)
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await trio.sleep(self.load_delays.get(group, self.load_delay))
            if group in self.failing_loads:
                raise Boom(f"cannot load {group!r}")
            call.state = await self.inner.load(group)
            return call.state
        except BaseException as exc:
            call.error = type(exc).__name__
            raise
        finally:
            call.ended = trio.current_time()

    async def save(self, group: Hashable, state: Any) -> None:
        call = Call("save", group, state, trio.current_time())
        self.calls.append(call)
        self._saving[group] = self._saving.get(group, 0) + 1
        self.most_at_once[group] = max(self.most_at_once.get(group, 0), self._saving[group])
        self.saving_groups_at_once = max(self.saving_groups_at_once, len(self._saving))
        try:
            await trio.sleep(self.save_delay)
            if group in self.failing_saves:
                raise Boom(f"cannot save {group!r}")
            await self.inner.save(group, state)
            self.latest[group] = copy.deepcopy(state)
        except BaseException as exc:
            call.error = type(exc).__name__
            raise
        finally:
            call.ended = trio.current_time()
            self._saving[group] -= 1
            if not self._saving[group]:
                del self._saving[group]

    async def delete(self, group: Hashable) -> None:
        await self.inner.delete(group)


class Counter:
    """An advancing device: the state is a count, each request adds to it.

    It records the state and request of every execution (and can be told to
    sleep, fail or crash per request), so a test sees exactly what ran where.
    """

    def __init__(self) -> None:
        self.ran: list[tuple[Any, Any]] = []

    async def resolve(self, state: Any, request: Any) -> Any:
        self.ran.append((state, request))
        if isinstance(request, dict):
            await trio.sleep(request.get("sleep", 0))
            if request.get("fail"):
                raise Boom("the request failed")
            if request.get("crash"):
                raise Crash()
            return state + request.get("add", 1)
        return state + request


class StaticModel:
    """A static device whose state is a dict it changes in place (a cache, a model)."""

    def __init__(self) -> None:
        self.ran: list[Any] = []

    async def resolve(self, state: Any, request: Any) -> Any:
        self.ran.append(request)
        await trio.sleep(request.get("sleep", 0) if isinstance(request, dict) else 0)
        state["seen"] = state.get("seen", 0) + 1
        return state["seen"]


async def killed_after(argv: list[str], acknowledged: int = 200) -> int:
    """Run ``python -c *argv*`` (a child printing each acknowledged count on a
    line), SIGKILL it once it printed at least *acknowledged*, and return the
    last count it printed. Bounded: 60 s."""
    child = await trio.lowlevel.open_process([sys.executable, "-c", *argv], stdout=subprocess.PIPE)
    assert child.stdout is not None
    last = 0
    buffer = b""
    with trio.fail_after(60):
        while last < acknowledged:
            buffer += await child.stdout.receive_some()
            *lines, buffer = buffer.split(b"\n")
            if lines:
                last = int(lines[-1])
    child.send_signal(signal.SIGKILL)
    await child.wait()
    return last
