"""Flights: the owner of a group while it has work and no worker.

A flight runs on a runner task of the persist's nursery (see `RunnerPool`).
It runs its group's jobs one at a time, in arrival order: the job that started
it, then the jobs of *different* requests queued behind it (identical requests
join a job instead of queueing). When none is left it frees its group in the
same step as it sees the queue empty, with no checkpoint in between, so a
caller can never join a flight that has stopped listening
(docs/guarantees.md, "A request is never lost").

Each job runs under its runner's cancel scope: when its last listener leaves,
that scope is cancelled and the flight moves on in a fresh runner; while
anyone still listens, the work goes on, whoever else left (the first caller
included). A flight ends itself: it frees its group, hands it to a waiting
worker if one was asked for, and answers anything left with `LeaderDied`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Any, ClassVar

import attrs
import trio

from .._backend import Backend
from .._stats import GroupSnapshot
from ._histogram import remember
from ._job import OK, UNNAMED, Job, Outcome, failed, leader_died, request_name, running
from ._labels import call_label
from ._runner import RunnerPool
from ._state import Core, Counters, describe_owner
from ._supervisor import Supervisor
from ._worker import WorkerTask
from ._wrapped import CallGroup, WrappedFunction

__all__ = ["Flight", "crosses"]

Resolve = Any  # Callable[[Any, Any], Awaitable[Any]]


@attrs.define(eq=False, repr=False)
class Flight:
    """Owner of a group with no worker. Internal; snapshots describe it to users."""

    kind: ClassVar[str] = "flight"

    core: Core
    supervisor: Supervisor
    group: Hashable | None  # None: an ungrouped execution, never registered
    # True when a group names exactly one request (the default grouper, a
    # wrapped call): across processes the group is then the key.
    group_is_request: bool
    started: float
    current: Job
    last_active: float  # its start, then the end of its last execution
    # Jobs of other requests waiting behind the current one, in arrival order.
    queue: deque[Job] = attrs.field(factory=deque, init=False)
    # The joinable job of each request name among the queued ones (made on
    # the first shared job queued: most flights never queue one).
    joinable: dict[object, Job] | None = attrs.field(default=None, init=False)
    served: int = attrs.field(default=0, init=False)
    # A worker asked for while this flight ran: it takes over after the current job.
    successor: WorkerTask | None = attrs.field(default=None, init=False)
    over: bool = attrs.field(default=False, init=False)
    # Abandoned jobs still in `queue` (compacted away in bulk).
    dead: int = attrs.field(default=0, init=False)
    # Its last execution times, from the second (see `recent`: most flights
    # execute once, and the first needs no list).
    times: list[float] | None = attrs.field(default=None, init=False)
    # What an operator sees for its current job, and whether its label hook chose
    # it (made once per job, when first asked).
    label: tuple[str, bool] | None = attrs.field(default=None, init=False)

    @classmethod
    def start(
        cls,
        core: Core,
        supervisor: Supervisor,
        runners: RunnerPool,
        group: Hashable | None,
        job: Job,
        group_is_request: bool,
    ) -> Flight:
        """Register a flight for *group* with *job* as its first job, and run it.

        An ungrouped flight (*group* None) is never registered.
        """
        now = core.now()
        flight = cls(core, supervisor, group, group_is_request, now, job, now)
        job.owner = flight
        if group is not None:
            core.registry.register(group, flight)
        core.counters.in_flight += 1
        runners.launch(flight)
        if core.events.listening:
            core.events.emit("flight.started", group)
        return flight

    def __repr__(self) -> str:
        return f"<flight {self.group!r} listeners={self.listeners} queued={len(self.queue)}>"

    @property
    def listeners(self) -> int:
        return self.current.listeners + sum(job.listeners for job in self.queue)

    @property
    def recent(self) -> list[float] | None:
        """Its last execution times, for its snapshot (None before the first).

        The first execution began as the flight started and ended at
        `last_active` until the second ends, so it is kept in a list only then.
        """
        if self.times is None and self.served:
            return [self.last_active - self.started]
        return self.times

    @property
    def busy(self) -> bool:
        """Whether an execution runs now (its job has a scope only while it runs)."""
        return self.current.scope is not None

    # -- Owner ---------------------------------------------------------------------

    def find(self, request: Any, key: object) -> Job | None:
        """Return a live, shared job for the request named *key* to join, or None
        (`UNNAMED`: named from *request* now)."""
        if key is UNNAMED:
            key = request_name(request)
        if key is None:
            return None
        job = self.current
        name = job.key if job.key is not UNNAMED else job.name()
        if name == key and job.shared and not job.abandoned:
            return job
        queued = self.joinable.get(key) if self.joinable else None
        if queued is not None and not queued.abandoned:
            return queued
        return None

    @property
    def shares(self) -> bool:
        """Identical requests always join one execution here."""
        return True

    def admit_nowait(self, job: Job) -> bool:
        """Queue *job* behind the current one (always room)."""
        job.owner = self
        self.queue.append(job)
        key = job.name() if job.shared else None
        if key is not None:
            joinable = self.joinable
            if joinable is None:
                joinable = self.joinable = {}
            known = joinable.get(key)
            if known is None or known.abandoned or known.done:
                joinable[key] = job
        return True

    async def admit(self, job: Job) -> bool:
        """As `admit_nowait`: a flight's queue always has room."""
        return self.admit_nowait(job)

    def abandon(self, job: Job) -> None:
        """*job* lost its last listener: cancel it if it runs, drop it if it waits."""
        job.abandoned = True
        self._unindex(job)
        if job.scope is not None:
            job.scope.cancel()
        elif job is not self.current:
            # Dropped from the queue now, not when reached, so callers that give
            # up behind a long execution cost nothing: the queue is compacted
            # once more than half of it is abandoned (amortised O(1)).
            self.dead += 1
            if self.dead > 16 and 2 * self.dead > len(self.queue):
                self.queue = deque(queued for queued in self.queue if not queued.abandoned)
                self.dead = 0

    def describe(self, group: Hashable) -> GroupSnapshot:
        """What this flight does now (its current job's label is made once, when
        first asked)."""
        if self.label is None:
            job = self.current
            if job.call is None:
                self.label = self.core.label_of(group, job.base, job.request)
            else:  # a wrapped function: the call, as written
                self.label = (call_label(job.call.name, job.base, job.request), False)
        return describe_owner(self, group, sum(1 for job in self.queue if not job.abandoned))

    def hand_to(self, task: WorkerTask) -> WorkerTask:
        """Let *task* own the group once the current execution ends, with the jobs
        queued then; returns the worker that will (one asked for earlier wins)."""
        if self.successor is None:
            self.successor = task
        return self.successor

    # -- running -------------------------------------------------------------------

    async def run_jobs(self, scope: trio.CancelScope) -> bool:
        """Run jobs until none is left, in a runner whose cancel scope is *scope*.

        Returns:
            True when the flight is over (its group freed or handed to a
            worker); False when *scope* was cancelled for an abandoned job and
            is spent: the runner retires and the flight goes on in a fresh one.
        """
        running.set(self)
        job = self.current
        over = True
        try:
            while True:
                if not job.abandoned:
                    # When the last job ended (or the flight started): no clock read.
                    began = self.last_active
                    resolve = self._begin(job)
                    job.scope = scope
                    # The device awaited here, not through `run_device`: no
                    # coroutine of ours per execution (the outcome is sorted
                    # the same way, by `failed`).
                    try:
                        value = await resolve(job.base, job.request)
                    except trio.Cancelled:
                        over = self._cancelled(job, began)
                        raise
                    except BaseException as exc:
                        outcome = failed(job, exc)  # re-raises what must propagate
                    else:
                        job.succeed(value)
                        outcome = OK
                    finally:
                        job.scope = None
                    self._finished(job, outcome, began)
                    if outcome is OK and job.spawn_worker and self._spawn_worker(job):
                        return True
                    # Only `abandon` cancels a runner's scope, and it marks the job
                    # first: the flag spares the common case a read of the clock.
                    if job.abandoned and scope.cancel_called:
                        # The device swallowed its cancellation: this scope is spent.
                        over = not self._advance()
                        return over
                if self.successor is not None and self._hand_over(self.successor):
                    return True
                if not self._advance():
                    return True
                job = self.current
        finally:
            running.set(None)  # a parked runner keeps nothing of this flight alive
            if over:
                self.over = True
                self._end()

    def _begin(self, job: Job) -> Resolve:
        """*job*'s execution starts: tell the observers; return what it runs: the
        device (or its wrapped function), through the backend when it has one
        and the job is shared (a write runs here)."""
        core = self.core
        call = job.call
        if core.observers.listening:
            group = self.group
            hook = core.hooks.label
            if call is None and self.label is None and hook is not None:
                # `Core.observer_label`'s common case, from this frame: no call
                # of ours per execution.
                try:
                    text = hook(job.base, job.request)
                except Exception as exc:
                    text = core.label_failed(group, exc)
                if text is not core.label_seen:
                    text = core.told_label(group, text)
            else:
                text = core.observer_label(self, job.base, job, self.label)
            for method in core.observers.on_started:
                try:
                    method(self.kind, group, text, job)
                except Exception as exc:
                    core.hook_failed("observer execution_started", group, exc)
        resolve = core.hooks.resolve if call is None else call
        backend = core.backend
        if backend is None:
            core.counters.executions += 1
            if call is not None:
                call.executions += 1
            return resolve
        return self._through(backend, job, resolve)

    def _through(self, backend: Backend, job: Job, resolve: Resolve) -> Resolve:
        """*job*'s device (or wrapped function) run through *backend* when the
        job is shared and grouped (a write, or an ungrouped call, runs here)."""
        core = self.core
        call = job.call
        if self.group is None or not job.shared or not crosses(call, self.group):
            core.counters.executions += 1
            if call is not None:
                call.executions += 1
            return resolve
        linger = core.options.linger if call is None else call.linger
        return _across_processes(backend, core.counters, self, job, resolve, linger)

    def _finished(self, job: Job, outcome: Outcome, began: float) -> None:
        """*job*'s execution ended with *outcome* (it is answered); a success of a
        shared job lingers."""
        core = self.core
        self.last_active = now = core.finish(self, job, outcome, began)
        if self.served:  # the first is known without a list (see `recent`)
            if self.times is None:
                # The second began as the first ended (see `run_jobs`).
                self.times = [began - self.started]
            self.times = remember(self.times, self.served, now - began)
        self.served += 1
        if self.joinable:
            self._unindex(job)
        if outcome is OK and job.shared:
            seconds = core.linger.seconds if job.call is None else job.call.linger
            if seconds:
                self._linger(job, seconds)

    def _cancelled(self, job: Job, began: float) -> bool:
        """*job*'s execution was cancelled; whether the flight is over (False: it goes
        on in a fresh runner, because every listener left and more is queued)."""
        core = self.core
        if not job.abandoned or core.closed:
            return True
        core.abandoned(self, job, began)
        job.fail(leader_died("the execution was cancelled: every listener left"))
        return not self._advance()

    def _linger(self, job: Job, seconds: float) -> None:
        """Let *job*'s result answer identical calls for *seconds*."""
        key = job.name()
        if key is not None and self.group is not None:
            self.core.linger.put(self.group, key, job.value, seconds)

    def _unindex(self, job: Job) -> None:
        joinable = self.joinable
        if joinable and joinable.get(job.key) is job:
            del joinable[job.key]

    def _advance(self) -> bool:
        """Make the next live queued job current; False if there is none."""
        queue = self.queue
        while queue:
            job = queue.popleft()
            if not job.abandoned:
                self.current = job
                self.label = None  # the label names the current job: made anew if asked
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
                group = core.group_of(state, None)
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
        if not self.supervisor.take_over(self.group, self, task, self.queue):
            return False
        self.queue.clear()
        self.joinable = None
        self.dead = 0
        return True

    def _end(self) -> None:
        core = self.core
        core.counters.in_flight -= 1
        # Every job is answered from here on: the flight and its last job no
        # longer refer to each other, so both are freed as soon as the last
        # caller is done with them rather than by the cyclic collector.
        self.current.owner = None
        if core.quiet is not None:
            core.maybe_quiet()
        if self.group is not None:
            core.registry.unregister(self.group, self)
        if self.successor is not None:
            if core.closed:
                self.supervisor.drop(self.successor)  # what was queued at it hears why
                self.successor = None
            else:
                self._hand_over(self.successor)
        if not self.queue and self.current.done:
            self.joinable = None  # the common end: nothing left to answer, no message made
            return
        reason = "the persist closed" if core.closed else "its flight ended"
        self.fail_unanswered(f"the execution ended without an outcome: {reason}")

    def fail_unanswered(self, error_message: str) -> None:
        """Answer every job still waiting with `LeaderDied` (the flight is going away)."""
        for job in (self.current, *self.queue):
            if not job.done:
                job.fail(leader_died(error_message))
        self.queue.clear()
        self.joinable = None


def crosses(call: WrappedFunction | None, group: Hashable | None) -> bool:
    """Whether a shared call of *group* may run through the backend: not a
    method's call grouped by its instance's identity, which means something
    here only (so the backend's door is not asked for it either)."""
    return call is None or not isinstance(group, CallGroup) or group.across


def _across_processes(
    backend: Backend,
    counters: Counters,
    flight: Flight,
    job: Job,
    resolve: Resolve,
    linger: float,
) -> Resolve:
    """*job*'s device (or wrapped function) run once across processes: counted as
    an execution only when the backend runs it here, as a remote one when another
    process answered (by its wrapped function too, if it has one)."""
    ran = False
    call = job.call

    async def here(base: Any, request: Any) -> Any:
        nonlocal ran
        ran = True
        counters.executions += 1
        if call is not None:
            call.executions += 1
        return await resolve(base, request)

    async def across(base: Any, request: Any) -> Any:
        # The key is computed here, inside the job: a request the backend
        # cannot name fails (or runs locally) for its own callers only.
        group = flight.group
        if isinstance(group, CallGroup):  # a wrapped call: named by its text
            group = group.text
        key = backend.key_of(group, request, flight.group_is_request)
        if key is None:
            return await here(base, request)
        try:
            return await backend.run(key, base, request, here, linger=linger)
        finally:
            if not ran:
                counters.remote += 1
                if call is not None:
                    call.remote += 1

    return across
