"""Admission control: how many new calls start on Redis at once, and which are
refused at the door.

At most ``limit`` (``max_pending``) new calls are starting on Redis at any
time: each holds a slot while its acquire is on its way. Another waits for a
slot, in arrival order, at most ``budget`` (half the backend's timeout). And a
call is refused *before anything is built for it* (`Admission.refusal`, which
the persist asks before it starts a flight) while the line is long: its
oldest caller has waited more than half the budget, or ``8 * limit`` callers
wait. The line then holds about half a budget of work, whatever the offered
load: answered calls keep a bounded latency, refusals come at once, and the
line empties within the budget when the load stops. `Admission.overloaded`
reads the same line without counting or letting anyone in: a service asks it
before it spends anything on a request.

The measure is the line's own sojourn time, not a predicted rate: a process
whose event loop is busy (with refusals among other things) drains its line
more slowly, and a prediction from that rate would refuse callers who would
have been served in time, whose retries then keep the loop busy.

Refusing at the door is what keeps an overloaded process serving: there a
refusal costs a few microseconds; after a wait it costs a flight, a timeout
and an exception through every frame, and past saturation those costs alone
would eat the capacity.
"""

from __future__ import annotations

import collections
import math

import attrs
import trio

from .._exceptions import BackendUnavailable

__all__ = ["Admission", "Overloaded"]


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
    _promised_since: float = -math.inf
    _line: collections.deque[_Waiter] = attrs.Factory(collections.deque)
    _slots: trio.Semaphore = attrs.field(init=False)
    _cap: int = attrs.field(init=False)
    _target: float = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._slots = trio.Semaphore(self.limit)
        # Waiting is cheap, timing out is not: never more in line than this.
        self._cap = 8 * self.limit
        self._target = self.budget / 2

    @property
    def taken(self) -> int:
        """Slots held now."""
        return self.limit - self._slots.value

    def oldest_wait(self, now: float) -> float:
        """How long the first caller in line has waited at *now* (0: nobody waits)."""
        line = self._line
        while line and not line[0].waiting:
            line.popleft()
        return now - line[0].since if line else 0.0

    def refusal(self) -> BackendUnavailable | None:
        """An error for a new call while the line is long (its first caller has
        waited over half the budget, or it is full), counted; else None, and
        the call is expected (`enter`).

        Synchronous and O(1) (amortised): the persist asks before it builds
        anything for the call. `overloaded` asks the same without side effects.
        """
        promised = self.promised
        ahead = self.waiting + promised - self._slots.value
        if ahead < 0:  # a slot is free for it: the common case, no clock read
            if not promised:
                self._promised_since = trio.current_time()
            self.promised = promised + 1
            return None
        now = trio.current_time()
        if promised and self._promises_lapsed(now):
            # Let in and never arrived (given up before they started):
            # forgotten, so that they never keep anyone out for long.
            self.promised = promised = 0
            ahead = self.waiting - self._slots.value
        if self._long(ahead, now):
            self.rejected += 1
            return BackendUnavailable(self._refused)
        if not promised:
            self._promised_since = now
        self.promised = promised + 1
        return None

    def overloaded(self) -> bool:
        """Whether `refusal` would refuse a new call now, asked without letting
        one in or counting anything: the door check of a service's accept loop.

        Synchronous and O(1) (amortised), like `refusal`.
        """
        promised = self.promised
        ahead = self.waiting + promised - self._slots.value
        if ahead < 0:
            return False
        now = trio.current_time()
        if promised and self._promises_lapsed(now):
            ahead = self.waiting - self._slots.value
        return self._long(ahead, now)

    def _promises_lapsed(self, now: float) -> bool:
        return now - self._promised_since > self.budget

    def _long(self, ahead: int, now: float) -> bool:
        """Whether the line is long for a call with *ahead* callers before it."""
        return ahead >= self._cap or self.oldest_wait(now) > self._target

    @property
    def _refused(self) -> str:
        return (
            f"{self.where}: {self.limit} calls starting on Redis (max_pending), "
            "and callers wait too long for one: refused"
        )

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
        waiter = _Waiter(trio.current_time())
        self._line.append(waiter)
        self.waiting += 1
        try:
            with trio.move_on_after(self.budget):
                await self._slots.acquire()
                return trio.current_time()
        finally:
            waiter.waiting = False
            self.waiting -= 1
        raise self._refuse(f"({what}) none freed within {self.budget:g} s")

    def leave(self) -> None:
        """Give back a slot."""
        self._slots.release()

    def _refuse(self, why: str) -> Overloaded:
        self.rejected += 1
        return Overloaded(
            f"{self.where}: {self.limit} calls starting on Redis (max_pending), "
            f"a slot {why}: refused"
        )
