"""Admission control: how many new calls start on Redis at once, and which are
refused at the door.

At most ``limit`` (``max_pending``) new calls are starting on Redis at any
time: each holds a slot while its acquire is on its way. Another waits for a
slot, in arrival order, at most ``budget`` (half the backend's timeout). A
call that would wait longer is refused *before anything is built for it*:
`Admission.refusal` is what the persist asks before it starts a flight for a
call, and it predicts the wait from the calls ahead (waiting, or let in and
not arrived yet) and how long a slot has been held lately (slots free at
``limit / hold`` a second). That early refusal is what keeps an overloaded
process serving at capacity: refused at the door a call costs a few
microseconds; refused after a wait it costs a flight, a timeout and an
exception through every frame, and past saturation those costs alone would eat
the capacity.
"""

from __future__ import annotations

import math

import attrs
import trio

from .._exceptions import BackendUnavailable

__all__ = ["Admission", "Overloaded"]


class Overloaded(BackendUnavailable):
    """A call refused because too many are starting: never a reason to run locally."""


_SMOOTHING = 0.1
"""Weight of the newest slot's holding time in the recent average."""


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
    hold: float = 0.0
    """Recent seconds a slot is held (a moving average; 0 before the first)."""
    _promised_since: float = -math.inf
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

    def refusal(self) -> BackendUnavailable | None:
        """An error for a new call that would wait longer than the budget for its
        slot (counted), or None: then the call is expected (`enter`).

        Synchronous and O(1): the persist asks before it builds anything.
        """
        ahead = self.waiting + self.promised
        if ahead and self.promised:
            now = trio.current_time()
            if now - self._promised_since > self.budget:
                # Calls let in and never arrived (given up before they started):
                # forgotten, so that they never keep anyone out for long.
                ahead -= self.promised
                self.promised = 0
        if self._slots.value > ahead or (
            ahead < self._cap and (ahead + 1) * self.hold <= self.budget * self.limit
        ):
            if not self.promised:
                self._promised_since = trio.current_time()
            self.promised += 1
            return None
        return self._refuse("would not free in time", BackendUnavailable)

    async def enter(self, what: str) -> float:
        """Take a slot for a new call; returns when (to pass to `leave`).

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
            self.waiting += 1
            try:
                with trio.move_on_after(self.budget):
                    await self._slots.acquire()
                    return trio.current_time()
            finally:
                self.waiting -= 1
            raise self._refuse(f"({what}) none freed within {self.budget:g} s") from None
        return trio.current_time()

    def leave(self, since: float) -> None:
        """Give back the slot taken at *since*."""
        self._slots.release()
        held = trio.current_time() - since
        self.hold = held if not self.hold else self.hold + _SMOOTHING * (held - self.hold)

    def _refuse(self, why: str, kind: type[BackendUnavailable] = Overloaded) -> BackendUnavailable:
        self.rejected += 1
        return kind(
            f"{self.where}: {self.limit} calls starting on Redis (max_pending), "
            f"a slot {why}: refused"
        )
