"""Flights: the owner of a group while it has work and no worker.

A flight is one task in the persist's nursery. It runs its group's jobs one at
a time, in arrival order: the job that started it, then the jobs of *different*
requests queued behind it (identical requests join a job instead of queueing).
When none is left it frees its group in the same step as it sees the queue
empty, with no checkpoint in between, so a caller can never join a flight that
has stopped listening (upstream's W5).

Each job runs in its own cancel scope: when its last listener leaves, that
scope is cancelled and the flight moves on; while anyone still listens, the
work goes on, whoever else left (the first caller included).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._job import Job, Outcome, leader_died, run_device, running

if TYPE_CHECKING:
    from ._persist import Persist
    from ._worker import Worker

__all__ = ["Flight"]


@attrs.define(eq=False, repr=False)
class Flight:
    """Owner of a group with no worker. Internal; snapshots describe it to users."""

    persist: Persist
    group: Hashable | None  # None: an ungrouped execution, never registered
    # True when a group names exactly one request (the default grouper), so
    # joining needs no request comparison.
    group_is_request: bool
    started: float
    current: Job = attrs.field(init=False)
    pending: deque[Job] = attrs.field(factory=deque, init=False)
    # Owners whose executions this flight's device is waiting for (cycle detection).
    awaiting: list[object] = attrs.field(factory=list, init=False)
    served: int = attrs.field(default=0, init=False)
    last_active: float = attrs.field(init=False)
    kind: str = attrs.field(default="flight", init=False)
    # A worker asked for while this flight ran: it takes over after the current job.
    successor: Worker | None = attrs.field(default=None, init=False)
    over: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        self.last_active = self.started

    def __repr__(self) -> str:
        return f"<flight {self.group!r} listeners={self.listeners} queued={len(self.pending)}>"

    @property
    def listeners(self) -> int:
        return self.current.listeners + sum(job.listeners for job in self.pending)

    def first(self, base: Any, request: Any, spawn_worker: bool) -> Job:
        job = self.current = Job(base, request, self, spawn_worker)
        return job

    def find(self, request: Any) -> Job | None:
        """Return a live job for *request* to join, or None."""
        current = self.current
        if not current.abandoned and (self.group_is_request or current.request == request):
            return current
        for job in self.pending:
            if not job.abandoned and (self.group_is_request or job.request == request):
                return job
        return None

    def enqueue(self, base: Any, request: Any, spawn_worker: bool) -> Job:
        job = Job(base, request, self, spawn_worker)
        self.pending.append(job)
        return job

    def abandon(self, job: Job) -> None:
        """*job* lost its last listener: cancel it if it runs, skip it if it waits."""
        job.abandoned = True
        if job.scope is not None:
            job.scope.cancel()

    async def run(self, scope: trio.CancelScope) -> bool:
        """Run jobs until none is left, in a runner whose cancel scope is *scope*.

        Returns:
            True when the flight is over (its group freed or handed to a
            worker); False when *scope* was cancelled for an abandoned job and
            is spent: the runner retires and the flight goes on in a fresh one.
        """
        persist = self.persist
        backend = persist._backend
        resolve = persist._hooks.resolve
        running.set(self)
        job = self.current
        over = True
        try:
            while True:
                if not job.abandoned:
                    persist._count_execution()
                    job.scope = scope
                    if backend is not None:
                        resolve = persist._resolver(self, job)
                    try:
                        outcome = await run_device(resolve, job.base, job.request, job)
                    except trio.Cancelled:
                        if job.abandoned and not persist._closed:
                            persist._count_outcome(self, job, None)
                            job.fail(
                                leader_died("the execution was cancelled: every listener left")
                            )
                            over = not self._advance()
                        raise
                    finally:
                        job.scope = None
                    self.served += 1
                    self.last_active = trio.current_time()
                    persist._count_outcome(self, job, outcome)
                    if (
                        outcome is Outcome.OK
                        and job.spawn_worker
                        and persist._spawn_worker_from(self, job)
                    ):
                        return True
                    if scope.cancel_called:
                        # The device swallowed its cancellation: this scope is spent.
                        over = not self._advance()
                        return over
                if self.successor is not None and persist._hand_over(self, self.successor):
                    return True
                if not self._advance():
                    return True
                job = self.current
        finally:
            if over:
                self.over = True
                persist._flight_ended(self)

    def _advance(self) -> bool:
        """Make the next live queued job current; False if there is none."""
        pending = self.pending
        while pending:
            job = pending.popleft()
            if not job.abandoned:
                self.current = job
                return True
        return False

    def fail_unanswered(self, error_message: str) -> None:
        """Answer every job still waiting with `LeaderDied` (the flight is going away)."""
        for job in (self.current, *self.pending):
            if not job.done.is_set():
                job.fail(leader_died(error_message))
        self.pending.clear()
