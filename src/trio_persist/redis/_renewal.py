"""Keeping the leases this process holds alive, each on its own schedule.

The server starts a lease's TTL when a command reaches it, which is after we
sent it: so the send time of the last renewal the server confirmed, plus the
TTL, is a lower bound of the lease's expiry (`Held.expires`). Each lease is
renewed a third of a TTL after that send; an answer that comes back within two
thirds of a TTL therefore always lands before the lease could have expired. The
round trip the backend tolerates is ``min(timeout, 2 * lease_ttl / 3)``: slower
than that, a lease is lost although the server may still hold it.

Leases due within a sixth of a TTL of each other are renewed together, in one
pipeline (one command each on a Cluster), and a slow batch never holds up the
schedule of the others. A lease is lost when a renewal finds it taken, or when
its expiry passes with no renewal confirmed; its execution is then cancelled.

That takes this loop's turn, which may come late: a process paused past its
leases wakes with everything due at once. So whoever is about to act under a
lease asks `Held.valid` first, a local check (no round trip) of the expiry bound
less a margin for the server's clock running faster than ours.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from typing import Any

import attrs
import trio

from .._exceptions import BackendUnavailable, CorruptResult
from .._logging import Throttle
from ._link import Counters, Link

__all__ = ["Held", "Renewer"]

# Of a lease's TTL, what `Held.valid` takes off its expiry bound: clocks that run
# at different rates (1%, and 2 ms for the granularity of the server's expiry).
_DRIFT = 0.01
_DRIFT_FLOOR = 0.002


@attrs.define(eq=False)
class Held:
    """A lease this process holds now."""

    key: str
    value: str
    token: int
    scope: trio.CancelScope
    """Cancelled when the lease is lost: the scope its execution runs in."""
    expires: float
    """A lower bound of the server's expiry, on our clock."""
    due: float
    """When to send its next renewal (inf while one is on its way)."""
    lost: bool = False
    settling: bool = False
    """The device has returned: a renewal finding the lease gone raced the commit,
    which settles the lease itself (nothing to cancel, nothing to report)."""
    on_lost: Callable[[], None] | None = None
    """Called when the lease is lost (a worker lease stops its worker)."""
    margin: float = 0.0
    """Taken off `expires` by `valid`: the clocks' drift over one TTL."""

    def valid(self) -> bool:
        """Whether the lease is surely still ours now: not lost, and its expiry
        bound (less the drift margin) not passed, whatever the renewal loop has
        yet to notice (a paused process woken). Reads the clock, nothing else."""
        return not self.lost and trio.current_time() < self.expires - self.margin


@attrs.define(eq=False)
class Renewer:
    """Renews every lease held, each a third of a TTL after its last renewal."""

    link: Link
    lease_ttl: float
    counters: Counters
    log: Throttle
    held: dict[str, Held] = attrs.Factory(dict)
    _wake: trio.Event = attrs.Factory(trio.Event)
    _sleeping_until: float = math.inf
    _sleep: trio.CancelScope | None = None  # the loop's sleep, while it sleeps

    def hold(self, key: str, value: str, token: int, sent: float) -> Held:
        """Start renewing the lease *value* of *key*, acquired by a command sent at *sent*."""
        ttl = self.lease_ttl
        held = Held(
            *(key, value, token, trio.CancelScope()),
            expires=sent + ttl,
            due=sent + ttl / 3,
            margin=ttl * _DRIFT + _DRIFT_FLOOR,
        )
        self.held[value] = held
        if held.due < self._sleeping_until and self._sleep is not None:
            # The loop sleeps past this lease's renewal: wake it then, not now
            # (most leases are dropped long before, and waking is a task switch).
            self._sleeping_until = self._sleep.deadline = held.due
        return held

    def drop(self, held: Held) -> None:
        """Stop renewing *held* (released, committed or lost)."""
        del self.held[held.value]

    async def run(self) -> None:
        """Send each batch of renewals when it is due, until cancelled."""
        async with trio.open_nursery() as nursery:
            while True:
                now = trio.current_time()
                horizon = now + self.lease_ttl / 6
                batch = [held for held in self.held.values() if held.due <= horizon]
                for held in batch:
                    held.due = math.inf
                if batch:
                    nursery.start_soon(self._renew, batch, now)
                self._sleeping_until = min((h.due for h in self.held.values()), default=math.inf)
                self._wake = trio.Event()
                with trio.CancelScope(deadline=self._sleeping_until) as self._sleep:
                    await self._wake.wait()
                self._sleep = None

    async def _renew(self, batch: list[Held], sent: float) -> None:
        ttl_ms = int(self.lease_ttl * 1000)
        requests = [([held.key], [held.value, ttl_ms]) for held in batch]
        answers: list[Any] = [None] * len(batch)
        # No answer is of use once the last of these leases may have expired.
        last = max(held.expires for held in batch)
        with trio.move_on_at(last), contextlib.suppress(BackendUnavailable, CorruptResult):
            answers = await self.link.step(
                "renewing leases", self.link.script_each, "renew", requests
            )
        now = trio.current_time()
        for held, answer in zip(batch, answers, strict=True):
            if self.held.get(held.value) is not held:
                continue  # released meanwhile
            if answer == 1:
                held.expires = sent + self.lease_ttl
                held.due = sent + self.lease_ttl / 3
            elif answer == 0 or now >= held.expires:
                self._lose(held)
            else:  # no answer yet: try again soon, while it may still be ours
                held.due = now + min(self.lease_ttl / 10, (held.expires - now) / 2)
        self._wake.set()

    def _lose(self, held: Held) -> None:
        if held.lost or held.settling:
            return
        held.lost = True
        self.counters.lost += 1
        self.log.log(
            logging.WARNING,
            "lost lease",
            "lost the lease of %s (token %d): cancelling its execution",
            held.key,
            held.token,
        )
        held.scope.cancel()
        if held.on_lost is not None:
            held.on_lost()
