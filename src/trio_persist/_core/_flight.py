"""Flights: the owner of a group while it has work and no worker.

A flight runs on a runner task of the persist's nursery (see `RunnerPool`).
It runs its group's jobs one at a time, in arrival order: the job that started
it, then the jobs of *different* requests queued behind it (identical requests
join a job instead of queueing). When none is left it frees its group in the
same step as it sees the queue empty, with no checkpoint in between, so a
caller can never join a flight that has stopped listening (upstream's W5).

Each job runs under its runner's cancel scope: when its last listener leaves,
that scope is cancelled and the flight moves on in a fresh runner; while
anyone still listens, the work goes on, whoever else left (the first caller
included). A flight ends itself: it frees its group, hands it to a waiting
worker if one was asked for, and answers anything left with `LeaderDied`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Any

import attrs
import trio

from .._grouping import default_group, same_request
from ._job import Job, Outcome, leader_died, run_device, running
from ._state import MISS, RECENT, Core
from ._supervisor import Supervisor
from ._worker import WorkerTask

__all__ = ["Flight"]


@attrs.define(eq=False, repr=False)
class Flight:
    """Owner of a group with no worker. Internal; snapshots describe it to users."""

    core: Core
    supervisor: Supervisor
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
    successor: WorkerTask | None = attrs.field(default=None, init=False)
    over: bool = attrs.field(default=False, init=False)
    # Abandoned jobs still in `pending` (compacted away in bulk).
    dead: int = attrs.field(default=0, init=False)
    # Its last execution times (made on the first).
    recent: list[float] | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self.last_active = self.started

    def __repr__(self) -> str:
        return f"<flight {self.group!r} listeners={self.listeners} queued={len(self.pending)}>"

    @property
    def listeners(self) -> int:
        return self.current.listeners + sum(job.listeners for job in self.pending)

    @property
    def busy(self) -> bool:
        """Whether an execution runs now (its job has a scope only while it runs)."""
        return self.current.scope is not None

    def find(self, request: Any, key: object = None) -> Job | None:
        """Return a live, shared job for *request* to join, or None.

        With the default grouper a group names one request, so any job of it
        is identical (*key* is then the group; it is not needed).
        """
        by_request = self.group_is_request
        job = self.current
        if not job.abandoned and job.shared and (by_request or same_request(job.request, request)):
            return job
        for job in self.pending:
            if (
                not job.abandoned
                and job.shared
                and (by_request or same_request(job.request, request))
            ):
                return job
        return None

    def enqueue(self, job: Job) -> Job:
        """Queue *job* behind the current one, and return it."""
        job.owner = self
        self.pending.append(job)
        return job

    def abandon(self, job: Job) -> None:
        """*job* lost its last listener: cancel it if it runs, drop it if it waits."""
        job.abandoned = True
        if job.scope is not None:
            job.scope.cancel()
        elif job is not self.current:
            # Dropped from the queue now, not when reached, so callers that give
            # up behind a long execution cost nothing: the queue is compacted
            # once more than half of it is abandoned (amortised O(1)).
            self.dead += 1
            if self.dead > 16 and 2 * self.dead > len(self.pending):
                self.pending = deque(queued for queued in self.pending if not queued.abandoned)
                self.dead = 0

    async def run(self, scope: trio.CancelScope) -> bool:
        """Run jobs until none is left, in a runner whose cancel scope is *scope*.

        Returns:
            True when the flight is over (its group freed or handed to a
            worker); False when *scope* was cancelled for an abandoned job and
            is spent: the runner retires and the flight goes on in a fresh one.
        """
        core = self.core
        through_backend = core.backend is not None and self.group is not None
        lingers = core.options.linger > 0  # most persists never linger: no call per job
        running.set(self)
        job = self.current
        over = True
        try:
            while True:
                if not job.abandoned:
                    core.executions += 1
                    job.scope = scope
                    # When the last job ended (or the flight started): no clock read.
                    began = self.last_active
                    if core.observers:
                        core.observe_start("flight", self.group, job)
                    resolve = core.hooks.resolve if job.call is None else job.call
                    if through_backend:
                        resolve = core.resolver(
                            self.group, job.request, self.group_is_request, resolve
                        )
                    try:
                        outcome = await run_device(resolve, job.base, job.request, job)
                    except trio.Cancelled:
                        if job.abandoned and not core.closed:
                            core.count_outcome("flight", self.group, job, None)
                            if core.observers:
                                elapsed = trio.current_time() - began
                                core.observe_end("flight", self.group, job, None, elapsed)
                            job.fail(
                                leader_died("the execution was cancelled: every listener left")
                            )
                            over = not self._advance()
                        raise
                    finally:
                        job.scope = None
                    self.served += 1
                    self.last_active = job.finished = now = core.now()
                    core.execution_time.add(now - began)
                    core.unsettled -= 1
                    if not core.unsettled:
                        core.settle_durations()
                    if core.observers:
                        core.observe_end("flight", self.group, job, outcome, now - began)
                    recent = self.recent
                    if recent is None:
                        self.recent = [now - began]
                    else:
                        recent.append(now - began)
                        if len(recent) > 2 * RECENT:
                            del recent[:-RECENT]
                    core.count_outcome("flight", self.group, job, outcome)
                    if lingers and outcome is Outcome.OK and job.shared and self.group is not None:
                        core.linger(
                            self.group, MISS if self.group_is_request else job.request, job.value
                        )
                    if outcome is Outcome.OK and job.spawn_worker and self._spawn_worker(job):
                        return True
                    if scope.cancel_called:
                        # The device swallowed its cancellation: this scope is spent.
                        over = not self._advance()
                        return over
                if self.successor is not None and self._hand_over(self.successor):
                    return True
                if not self._advance():
                    return True
                job = self.current
        finally:
            if over:
                self.over = True
                self._end()

    def _advance(self) -> bool:
        """Make the next live queued job current; False if there is none."""
        pending = self.pending
        while pending:
            job = pending.popleft()
            if not job.abandoned:
                self.current = job
                return True
            self.dead = max(0, self.dead - 1)
        return False

    def _spawn_worker(self, job: Job) -> bool:
        """After a successful spawn_worker job; True if this flight handed its group over."""
        core = self.core
        if core.closed or self.group is None:
            return False
        state = job.value
        if core.hooks.group is None:  # the default grouper: the worker owns group(state, None)
            try:
                group: Hashable = default_group(state, None, ignore_keys=core.options.ignore_keys)
            except Exception:
                return False  # a result the default grouper cannot name has no worker
            if group not in core.owners:
                self.supervisor.start(self.supervisor.new_worker(group, state))
            return False
        if self.successor is None:
            self.successor = self.supervisor.new_worker(self.group, state)
        return self._hand_over(self.successor)

    def _hand_over(self, task: WorkerTask) -> bool:
        """Make *task* the owner of this flight's group, with the jobs queued here."""
        self.successor = None
        if not self.supervisor.take_over(self.group, self, task, self.pending):
            return False
        self.pending.clear()
        self.dead = 0
        return True

    def _end(self) -> None:
        core = self.core
        core.in_flight -= 1
        if core.quiet is not None:
            core.maybe_quiet()
        if self.group is not None:
            core.registry.unregister(self.group, self)
        if self.successor is not None and not core.closed:
            self._hand_over(self.successor)
        reason = "the persist closed" if core.closed else "its flight ended"
        self.fail_unanswered(f"the execution ended without an outcome: {reason}")

    def fail_unanswered(self, error_message: str) -> None:
        """Answer every job still waiting with `LeaderDied` (the flight is going away)."""
        for job in (self.current, *self.pending):
            if not job.done.is_set():
                job.fail(leader_died(error_message))
        self.pending.clear()
