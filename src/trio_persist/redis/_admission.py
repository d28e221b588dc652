"""Admission control: how many new calls start on Redis at once, and which are
refused at the door.

At most ``limit`` (``max_pending``) new calls are starting on Redis at any
time: each holds a slot while its acquire is on its way. Another waits for a
slot, in arrival order, at most ``budget`` (half the backend's timeout). And a
call is refused *before anything is built for it* once the line is long: when
the oldest caller in it has waited more than half the budget
(`Admission.refusal`, which the persist asks before it starts a flight). The
line then holds about that much work, whatever the offered load: answered
calls keep a bounded latency, and the line empties within half the budget
when the load stops.

Refusing at the door is what keeps an overloaded process serving at capacity:
there a refusal costs a few microseconds; after a wait it costs a flight, a
timeout and an exception through every frame, and past saturation those costs
alone would eat the capacity.
"""

from __future__ import annotations

import collections
import math

import attrs
import trio

from .._exceptions import BackendUnavailable

__all__ = ["Admission", "Overloaded"]


_WINDOW = 0.1
"""Seconds over which the drain rate of the line is measured."""


class Overloaded(BackendUnavailable):
    """A call refused because too many are starting: never a reason to run locally."""


@attrs.define(eq=False)
class _Waiter:
    since: float
    waiting: bool = True


@attrs.define(eq=False)
class Admission:
    """The slots of one backend's new calls (see the module's docstring).

    Args:
        limit: Slots (``max_pending``).
        budget: Longest a call waits for a slot, in seconds.
        where: How refusals name the server.
    """

    limit: int
    budget: float
    where: str = "Redis"
    rejected: int = 0
    """Calls refused (at the door, or after waiting the budget)."""
    waiting: int = 0
    """Calls waiting for a slot now."""
    promised: int = 0
    """Calls let in by `refusal` that have not asked for their slot yet."""
    rate: float = 0.0
    """Slots handed to waiting callers per second, lately (0: not measured yet)."""
    _promised_since: float = -math.inf
    _line: collections.deque[_Waiter] = attrs.Factory(collections.deque)
    _granted: int = 0  # slots handed to waiters since `_window`
    _window: float = -math.inf
    _slots: trio.Semaphore = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._slots = trio.Semaphore(self.limit)

    @property
    def taken(self) -> int:
        """Slots held now."""
        return self.limit - self._slots.value

    @property
    def _cap(self) -> int:
        # Waiting is cheap, timing out is not: never more in line than this.
        return 8 * self.limit

    def oldest_wait(self) -> float:
        """How long the first caller in line has waited (0 if nobody waits)."""
        line = self._line
        while line and not line[0].waiting:
            line.popleft()
        return trio.current_time() - line[0].since if line else 0.0

    def refusal(self) -> BackendUnavailable | None:
        """An error for a new call if the line is long (its first caller has
        waited over half the budget, or it is full), counted; else None, and
        the call is expected (`enter`).

        Synchronous and O(1) (amortised): the persist asks before it builds
        anything for the call.
        """
        if self.promised and trio.current_time() - self._promised_since > self.budget:
            # Let in and never arrived (given up before they started):
            # forgotten, so that they never keep anyone out for long.
            self.promised = 0
        ahead = self.waiting + self.promised - self._slots.value
        if ahead >= 0 and self._long(ahead + 1):
            return self._refuse("callers wait too long for one", BackendUnavailable)
        if not self.promised:
            self._promised_since = trio.current_time()
        self.promised += 1
        return None

    def _long(self, position: int) -> bool:
        """Whether a caller *position* in line would wait over half the budget:
        the line is full, its first caller has waited that long, or it drains
        too slowly for the caller to be served in that time."""
        target = self.budget / 2
        if position > self._cap or self.oldest_wait() > target:
            return True
        return bool(self.rate) and position > self.rate * target

    async def enter(self, what: str) -> float:
        """Take a slot for a new call; returns when it got it.

        Waits for one in arrival order, at most the budget; then raises
        `Overloaded` (counted). A checkpoint only when it waits.
        """
        if self.promised:
            self.promised -= 1
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            if self.waiting >= self._cap:
                raise self._refuse(f"({what}) none free") from None
            return await self._wait(what)
        return trio.current_time()

    async def _wait(self, what: str) -> float:
        now = trio.current_time()
        if not self.waiting:  # a new line: measure how fast it drains from now
            self._window, self._granted = now, 0
        waiter = _Waiter(now)
        self._line.append(waiter)
        self.waiting += 1
        try:
            with trio.move_on_after(self.budget):
                await self._slots.acquire()
                return self._granting()
        finally:
            waiter.waiting = False
            self.waiting -= 1
        raise self._refuse(f"({what}) none freed within {self.budget:g} s")

    def _granting(self) -> float:
        """A waiter got its slot: count it in the drain rate. Returns now."""
        now = trio.current_time()
        self._granted += 1
        elapsed = now - self._window
        if elapsed >= _WINDOW:
            rate = self._granted / elapsed
            self.rate = rate if not self.rate else (self.rate + rate) / 2
            self._window, self._granted = now, 0
        return now

    def leave(self) -> None:
        """Give back a slot."""
        self._slots.release()

    def _refuse(
        self, why: str, kind: type[BackendUnavailable] = Overloaded
    ) -> BackendUnavailable:
        self.rejected += 1
        return kind(
            f"{self.where}: {self.limit} calls starting on Redis (max_pending), "
            f"a slot {why}: refused"
        )
