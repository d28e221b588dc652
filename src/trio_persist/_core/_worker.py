"""Persistent workers: long-lived tasks that own a group and keep its state in memory.

A worker is one task in the persist's nursery. Requests reach it through a
bounded memory channel (a full inbox makes callers wait; nothing is dropped),
it serves them one at a time in arrival order with
``device.resolve(state, request)``, and replies go straight back to each
requester's job. It keeps its registration the whole time it serves (upstream
dropped it during every request; docs/guarantees.md).

It stops after ``timeout`` seconds with no new request (a cancel scope around
the wait, never a polling loop), when evicted under ``max_workers``, on
`Worker.stop`, under the ``"throw"`` error strategy, or when the persist
closes; each time its state is saved through the persist's store (if it
changed) and ``on_idle(group, state)`` runs, bounded by the persist's
shutdown grace. After a crash neither runs. Either way its host (the
supervisor) frees the group and re-routes every request still queued, never
lost and never left hanging.

A worker with an `Activation` (a virtual worker, `Persist.ask`) first loads
its state while requests queue in its inbox; with a store it also saves its
state on ``checkpoint_interval`` between requests, and with ``durable=True``
after each request, before replying (`durably`). All of its saves run in its
own task, so they never overlap.

Two classes: `WorkerTask` is the worker itself, internal, an `Owner` the
registry holds and the facade routes to; `Worker` is the public handle users
and custom ``serve`` loops get, a thin face over it.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from typing import Any, ClassVar, Generic, Protocol, TypeVar, final

import attrs
import trio

from .._exceptions import ActivationFailed, NoWorker, SaveFailed
from .._stats import GroupSnapshot, group_label
from .._text import describe
from ._activation import ACTIVATING, Activation, count_save_failure, load_state, save_state
from ._histogram import remember
from ._job import UNNAMED, Job, Outcome, leader_died, request_name, run_device, running
from ._state import Core, describe_owner

__all__ = ["Worker", "WorkerHost", "WorkerRequest", "WorkerStatistics", "WorkerTask", "durably"]

S = TypeVar("S")


@attrs.frozen
class WorkerStatistics:
    """A snapshot of one `Worker`, as returned by `Worker.statistics`."""

    group: Hashable
    """The group the worker owns now (it moves as a non-static worker advances)."""
    static: bool
    """Whether the state stays as it started."""
    timeout: float
    """Idle timeout in seconds (``inf``: never)."""
    served: int
    """Requests executed (identical requests answered together count once)."""
    answered: int
    """Requests answered, by their own execution or by one they were merged into."""
    queued: int
    """Requests in the inbox now."""
    listeners: int
    """Callers waiting on this worker now."""
    busy: bool
    """Whether a request is being executed now."""
    started: float
    """`trio.current_time` when the worker started."""
    last_active: float
    """`trio.current_time` of the last request it started or finished."""
    stopped: bool
    """Whether the worker has ended."""
    stop_reason: str | None
    """Why it stopped: ``"timeout"``, ``"evicted"``, ``"stopped"``, ``"throw"``,
    ``"crashed"``, ``"closed"``, ``"forgotten"``, ``"unactivated"`` (its state could
    not be loaded), ``"unsaved"`` (a static worker's durable save failed), or None
    while it runs."""
    virtual: bool = False
    """Whether it is a virtual worker (`Persist.ask`, `Persist.get_worker`): it keeps
    its group for life."""
    activating: bool = False
    """Whether it is still loading its state."""


class WorkerHost(Protocol):
    """What a worker tells its supervisor (which lives in the layer above)."""

    def touch(self, task: WorkerTask) -> None:
        """*task* starts a request: it is now the most recently used worker."""

    def started(self, task: WorkerTask) -> None:
        """*task* has its state (activated) and serves from now on."""

    def stopping(self, task: WorkerTask) -> None:
        """*task* will stop (it no longer counts against ``max_workers``)."""

    def regroup(self, task: WorkerTask, state: Any) -> None:
        """*task* advanced to *state*: move it to the new state's group if free."""

    def ended(self, task: WorkerTask, crashed: BaseException | None) -> None:
        """*task* has ended: free its group and re-route what it still holds."""


@final
@attrs.define(eq=False, repr=False)
class WorkerRequest:
    """One request taken by a custom worker loop (see `Worker.receive`).

    Answer it exactly once, with `Worker.execute`, `reply` or `fail`; a request
    the loop leaves unanswered is re-routed when the worker stops.
    """

    _job: Job = attrs.field(alias="job")
    _task: WorkerTask = attrs.field(alias="task")

    @property
    def request(self) -> Any:
        """The request as the caller passed it."""
        return self._job.request

    @property
    def answered(self) -> bool:
        """Whether the request has been answered."""
        return self._job.done.is_set()

    def reply(self, value: Any) -> None:
        """Answer every listener of this request with *value*."""
        if not self._job.done.is_set():
            self._job.succeed(value)
        self._task.release(self._job)

    def fail(self, error: Exception) -> None:
        """Raise *error* in every listener of this request."""
        if not self._job.done.is_set():
            self._job.fail(error)
        self._task.release(self._job)


@final
@attrs.define(eq=False, repr=False)
class WorkerTask:
    """A persistent worker. Internal: the registry holds it; users hold its `Worker`."""

    kind: ClassVar[str] = "worker"

    core: Core
    host: WorkerHost
    group: Hashable
    state: Any
    static: bool
    timeout: float
    # How it loads its state before serving (its state is `ACTIVATING` until
    # then); kept for life: a virtual worker's record. None: started with a state.
    activation: Activation | None = None
    # Whether identical requests join one execution (a static worker's do).
    shares: bool = attrs.field(init=False)
    send: trio.MemorySendChannel[Job] = attrs.field(init=False)
    inbox: trio.MemoryReceiveChannel[Job] = attrs.field(init=False)
    # Jobs handed over from a flight, or put back, served before the inbox.
    backlog: list[Job] = attrs.field(factory=list, init=False)
    # In the inbox: joinable by identical requests until taken.
    in_inbox: dict[int, Job] = attrs.field(factory=dict, init=False)
    # Taken by the serving loop and not answered yet (a custom loop may hold several).
    held: dict[int, Job] = attrs.field(factory=dict, init=False)
    # The joinable job of each request name (a static worker's; made on first use).
    joinable: dict[object, Job] | None = attrs.field(default=None, init=False)
    current: Job | None = attrs.field(default=None, init=False)
    wait_scope: trio.CancelScope | None = attrs.field(default=None, init=False)
    # A checkpoint save under way: closing cuts it short (the stop's save follows).
    saving: trio.CancelScope | None = attrs.field(default=None, init=False)
    scope: trio.CancelScope | None = attrs.field(default=None, init=False)
    # Blocked waiting for its next request.
    receiving: bool = attrs.field(default=False, init=False)
    stop_reason: str | None = attrs.field(default=None, init=False)
    # Set when it has ended; made on demand (most workers are never waited for).
    ended_event: trio.Event | None = attrs.field(default=None, init=False)
    ended: bool = attrs.field(default=False, init=False)
    served: int = attrs.field(default=0, init=False)
    answered: int = attrs.field(default=0, init=False)
    started: float = attrs.field(init=False)
    last_active: float = attrs.field(init=False)
    # Its last execution times (made on the first: most idle workers have none).
    recent: list[float] | None = attrs.field(default=None, init=False)
    # What an operator sees for its group (made once per group it owns).
    label: tuple[str, bool] | None = attrs.field(default=None, init=False)
    # Changes (requests taken: each may change the state) the store does not
    # have yet: the state needs saving while there are any.
    unsaved: int = attrs.field(default=0, init=False)
    # When a changed state is saved next (None: no checkpoint_interval).
    checkpoint_at: float | None = attrs.field(default=None, init=False)
    # The public face: what users and custom serve loops get.
    handle: Worker[Any] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.shares = self.static
        self.send, self.inbox = trio.open_memory_channel[Job](self.core.options.worker_inbox)
        self.started = self.last_active = trio.current_time()
        self.handle = Worker(task=self)

    @property
    def listeners(self) -> int:
        jobs = (*self.in_inbox.values(), *self.backlog)
        current = self.current.listeners if self.current is not None else 0
        return current + sum(job.listeners for job in jobs)

    @property
    def queue_length(self) -> int:
        """Requests waiting to be served."""
        return len(self.backlog) + len(self.in_inbox)

    @property
    def busy(self) -> bool:
        return self.current is not None

    @property
    def dirty(self) -> bool:
        """Whether the state may have changed since it was loaded or last saved."""
        return self.unsaved != 0

    @property
    def virtual(self) -> bool:
        return self.activation is not None and self.activation.keeps_group

    def statistics(self) -> WorkerStatistics:
        return WorkerStatistics(
            group=self.group,
            static=self.static,
            timeout=self.timeout,
            served=self.served,
            answered=self.answered,
            queued=self.queue_length,
            listeners=self.listeners,
            busy=self.busy,
            started=self.started,
            last_active=self.last_active,
            stopped=self.ended,
            stop_reason=self.stop_reason,
            virtual=self.virtual,
            activating=self.state is ACTIVATING,
        )

    # -- control -----------------------------------------------------------------

    def stop_nowait(self, reason: str = "stopped", *, cancel: bool = False) -> None:
        """Stop after the current request (with *cancel*, cancel that too, or the
        activation under way)."""
        self.stop(reason)
        if cancel and self.saving is not None:
            self.saving.cancel()
        if self.receiving:
            scope = self.wait_scope or self.scope
            if scope is not None:
                scope.cancel()
        elif cancel and self.current is not None and self.current.scope is not None:
            self.current.scope.cancel()
        elif cancel and self.state is ACTIVATING and self.scope is not None:
            self.scope.cancel()

    def stop(self, reason: str, *, override: bool = False) -> None:
        """Decide to stop, for *reason* (the first reason given stays, unless *override*)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.host.stopping(self)
        elif override:
            self.stop_reason = reason

    def never_ran(self) -> None:
        """It will never run (dropped before launch): it has ended, for its waiters."""
        self.stop("closed" if self.core.closed else "stopped")
        self.ended = True
        if self.ended_event is not None:
            self.ended_event.set()

    async def wait_stopped(self) -> None:
        if self.ended:
            await trio.lowlevel.checkpoint()
            return
        if self.ended_event is None:
            self.ended_event = trio.Event()
        await self.ended_event.wait()

    def set_state(self, state: Any) -> None:
        """A custom serve loop replaced the state (it keeps its group)."""
        self.state = state
        self.unsaved += 1
        self.label = None

    def move_to(self, group: Hashable) -> None:
        """It owns *group* now (the supervisor registered it there)."""
        self.group = group
        self.label = None

    # -- Owner -------------------------------------------------------------------

    def find(self, request: Any, key: object) -> Job | None:
        """Return a live job for the request named *key* to join, or None.

        Only a static worker shares executions: an advancing one executes every
        request, since each result becomes its next state (two identical
        requests are two transitions).
        """
        if not self.static:
            return None
        if key is UNNAMED:
            key = request_name(request)
        if key is None:
            return None
        current = self.current
        if current is not None and current.name() == key and _joinable(current):
            return current
        job = self.joinable.get(key) if self.joinable else None
        if job is not None and _joinable(job):
            return job
        return None

    def admit_nowait(self, job: Job) -> bool:
        """Put *job* in the inbox if it has room; False if full or stopped."""
        job.owner = self
        try:
            self.send.send_nowait(job)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        self._admitted(job)
        return True

    async def admit(self, job: Job) -> bool:
        """Put *job* in the inbox, waiting while it is full.

        Returns False if the worker stopped first (the job never entered).
        """
        job.owner = self
        counters = self.core.counters
        counters.waiters += 1  # waiting for room is waiting too
        try:
            await self.send.send(job)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        finally:
            counters.waiters -= 1
        self._admitted(job)
        return True

    def _admitted(self, job: Job) -> None:
        if job.in_service:
            return  # taken already (a full inbox delays this)
        self.in_inbox[id(job)] = job
        if self.static:
            self._index(job)

    def adopt(self, jobs: Iterable[Job]) -> None:
        """Serve *jobs*, handed over from a flight, before anything in the inbox."""
        for job in jobs:
            if not job.abandoned:
                job.owner = self
                self.backlog.append(job)
                self._index(job)

    def abandon(self, job: Job) -> None:
        job.abandoned = True
        self._unindex(job)
        if job.scope is not None:
            job.scope.cancel()
        else:
            self.in_inbox.pop(id(job), None)  # dropped at once, not when reached

    def describe(self, group: Hashable) -> GroupSnapshot:
        """What this worker does now (its label is made once per group)."""
        queued, virtual = self.queue_length, self.virtual
        if self.state is ACTIVATING:  # no state to label yet
            label = (group_label(group), False)
            return describe_owner(self, group, queued, label, virtual=virtual, activating=True)
        if self.label is None:
            self.label = self.core.label_of(group, self.state, None)
        return describe_owner(self, group, queued, virtual=virtual)

    def _index(self, job: Job) -> None:
        if not self.static or not job.shared or job.name() is None:
            return
        joinable = self.joinable
        if joinable is None:
            joinable = self.joinable = {}
        known = joinable.get(job.key)
        if known is None or not _joinable(known):
            joinable[job.key] = job

    def _unindex(self, job: Job) -> None:
        joinable = self.joinable
        if joinable and joinable.get(job.key) is job:
            del joinable[job.key]

    def release(self, job: Job) -> None:
        """A custom loop answered *job*: it is no longer held."""
        self.held.pop(id(job), None)
        self._unindex(job)

    # -- taking requests ---------------------------------------------------------

    def take_nowait(self) -> Job | None:
        """Take the next live job without waiting; None if there is none now."""
        inbox = self.inbox
        while True:
            job: Job | None = None
            if self.backlog:
                job = self.backlog.pop(0)
            else:
                # Not awaited inside an except block: a parked worker would keep
                # the WouldBlock and its traceback alive (memory per idle worker).
                try:  # noqa: SIM105 - contextlib.suppress costs a frame per request
                    job = inbox.receive_nowait()
                except trio.WouldBlock:
                    pass
                if job is None:
                    return None
            if self._accept(job):
                return job

    def _accept(self, job: Job) -> bool:
        self.in_inbox.pop(id(job), None)
        if job.abandoned or job.done.is_set():
            self._unindex(job)
            return False
        job.in_service = True
        self.held[id(job)] = job
        self.unsaved += 1  # its device may change the state, even in place
        return True

    async def next_job(self, scope: trio.CancelScope | None = None) -> Job | None:
        """Take the next live job; None when the worker should stop.

        A checkpoint when *scope* is None. With *scope* (the default loop's long-lived scope),
        the idle timeout is that scope's deadline and its expiry raises
        `trio.Cancelled` to the loop; without, a scope is made for this wait
        (and a checkpoint due while waiting is saved here).
        """
        while True:
            if self.stop_reason is not None:
                job = self._owed()
                if scope is None:
                    await trio.lowlevel.checkpoint()
                return job
            job = self.take_nowait()
            if job is not None:
                if scope is None:
                    # A custom loop is promised a checkpoint; the default loop
                    # checkpoints in the device call anyway.
                    await trio.lowlevel.checkpoint()
                return job
            # Waited for here, not in a helper: one coroutine frame less per
            # parked worker (memory per idle worker).
            self.receiving = True
            try:
                if scope is not None:
                    # The idle timeout counts from the end of the last request.
                    timed = self.timeout != math.inf
                    if timed:
                        scope.deadline = self.last_active + self.timeout
                    if self.checkpoint_at is not None and self.dirty:
                        timed = True  # a changed state is saved on time, idle or not
                        scope.deadline = min(scope.deadline, self.checkpoint_at)
                    job = await self.inbox.receive()
                    if timed:
                        scope.deadline = math.inf
                else:
                    job = await self._receive_until(trio.current_time() + self.timeout)
            finally:
                self.receiving = False
                self.wait_scope = None
            if job is None:
                self.stop("timeout")
                return None
            if self.stop_reason is not None:
                # Stopped as this job was handed over: keep it for re-routing.
                self.in_inbox.pop(id(job), None)
                self.backlog.insert(0, job)
                return None
            if self._accept(job):
                return job

    def _owed(self) -> Job | None:
        """The request an evicted worker serves before it stops: the one it was
        activated for (so workers taking turns under max_workers make progress)."""
        activation = self.activation
        if activation is None or not activation.owes_first or self.served:
            return None
        if self.stop_reason != "evicted":
            return None
        activation.owes_first = False
        return self.take_nowait()

    async def _receive_until(self, idle_until: float) -> Job | None:
        """A custom loop's wait for a request: None when stopped or idle until
        *idle_until* (checkpoints due meanwhile are saved, without resetting it)."""
        while self.stop_reason is None:
            job = None
            wake = idle_until
            if self.checkpoint_at is not None and self.dirty:
                wake = min(wake, self.checkpoint_at)
            with trio.CancelScope(deadline=wake) as self.wait_scope:
                job = await self.inbox.receive()
            if job is not None or not self.checkpoint_due():
                return job
            await self.checkpoint()
        return None

    def checkpoint_due(self) -> bool:
        """Whether a changed state is due for its checkpoint save now."""
        at = self.checkpoint_at
        return at is not None and self.dirty and trio.current_time() >= at

    async def checkpoint(self) -> None:
        """Save the state if it changed (between requests); plan the next checkpoint."""
        core = self.core
        if self.dirty:
            saving = self.unsaved
            with trio.CancelScope() as self.saving:
                failed = await save_state(
                    core, self.group, self.state, self.activation, "checkpoint"
                )
                if failed is None:
                    self.unsaved -= saving
            self.saving = None
        interval = core.options.checkpoint_interval
        assert interval is not None
        self.checkpoint_at = trio.current_time() + interval

    async def commit(self, value: Any) -> None:
        """With ``durable=True``: save the state a request made, before it is answered.

        Raises:
            SaveFailed: the save failed (its error is the cause): the request
                fails and is not applied. A static worker, whose device may have
                changed its state in place, then stops without saving, so its
                group goes on from the state last saved.
        """
        saving = self.unsaved
        new = self.state if self.static else value
        error = await save_state(self.core, self.group, new, self.activation, "durable")
        if error is None:
            self.unsaved -= saving
            return
        if self.static:
            self.stop("unsaved", override=True)
        raise SaveFailed(
            f"the new state of group {group_label(self.group)} could not be saved "
            f"({describe(error)}): the request is not applied, and the worker goes on "
            "from its last saved state"
        ) from error

    # -- serving -----------------------------------------------------------------

    async def execute(self, job: Job, scope: trio.CancelScope | None = None) -> Any:
        """Serve *job* the default way; return its result (None if it failed)."""
        core = self.core
        self.current = job
        self.last_active = began = core.now()
        self.host.touch(self)
        if core.observers.listening:
            label = core.observed_label(self.group, self.state, job, self.label)
            core.observers.started(self.kind, self.group, label, job)
        core.counters.executions += 1
        outcome = None
        try:
            if scope is not None:
                job.scope = scope
                outcome = await run_device(core.worker_resolve, self.state, job.request, job)
            else:
                with trio.CancelScope() as job.scope:
                    outcome = await run_device(core.worker_resolve, self.state, job.request, job)
        except trio.Cancelled:
            self._cancelled(job, began)
            raise
        finally:
            job.scope = None
            self.current = None
            self.held.pop(id(job), None)
            if self.joinable:
                self._unindex(job)
        if outcome is None:  # its own scope caught the cancellation: abandoned
            self.served += 1
            self.last_active = core.now()
            self._abandoned(job, began)
            return None
        self.last_active = now = core.finish(self, job, outcome, began)
        self.recent = remember(self.recent, self.served, now - began)
        self.served += 1
        return self._apply(job, outcome)

    def _cancelled(self, job: Job, began: float) -> None:
        core = self.core
        self.last_active = core.now()
        if job.abandoned:
            self._abandoned(job, began)
            return
        if core.observers.listening:
            core.observers.ended(self.kind, self.group, job, None, self.last_active - began)
        if not job.done.is_set():
            # Cancelled for another reason (closing, a timeout racing the
            # hand-over): the job goes back to the head of the queue, to be
            # served next or re-routed, never lost.
            job.in_service = False
            self.backlog.insert(0, job)

    def _abandoned(self, job: Job, began: float) -> None:
        self.core.abandoned(self, job, began)
        job.fail(leader_died("the execution was cancelled: every listener left"))

    def _apply(self, job: Job, outcome: Outcome) -> Any:
        """Apply an answered job's outcome: stop, publish, or advance the state."""
        self.answered += 1
        if outcome is Outcome.CRASHED:
            self.stop("crashed", override=True)
            raise _WorkerCrashed(job.error)
        if outcome is Outcome.FAILED:
            if self.core.options.error_strategy == "throw":
                self.stop("throw", override=True)
            return None
        value = job.value
        if self.static and job.shared and (self.in_inbox or self.backlog):
            self.publish(job.request, job.name(), value)
        if not self.static:
            self.state = value
            self.host.regroup(self, value)
        return value

    def publish(self, request: Any, key: object, value: Any) -> int:
        """Answer every queued job that a result for *request* answers; return how many.

        Without the device's ``answers`` hook, a job is answered when its
        request is identical: the same name *key* (computed from *request*
        when None).
        """
        answers = self.core.hooks.answers
        if answers is None and key is None:
            key = request_name(request)
        count = 0
        for job in (*self.in_inbox.values(), *self.backlog):
            if job.done.is_set() or job.abandoned or not job.shared:
                continue
            if answers is not None:
                try:
                    hit = answers(job.request, request) is True
                except Exception as exc:
                    self.core.hook_failed("answers", self.group, exc)
                    hit = False
            else:
                hit = key is not None and (job.name() == key or request_name(job.request) == key)
            if hit:
                job.succeed(value)
                count += 1
        self.answered += count
        self.core.counters.deduplicated += count
        return count

    def take_unanswered(self) -> list[Job]:
        """Close the inbox and return every job not answered yet, in order."""
        jobs = [*self.held.values(), *self.backlog]
        self.held.clear()
        self.backlog.clear()
        while True:
            try:
                jobs.append(self.inbox.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        self.inbox.close()  # wakes senders blocked on a full inbox: they re-route
        self.in_inbox.clear()
        self.joinable = None
        return [job for job in jobs if not job.done.is_set() and not job.abandoned]

    # -- the task ----------------------------------------------------------------

    async def main(self) -> None:
        """The worker's task: activate, serve until told to stop, save, end."""
        crashed: BaseException | None = None
        running.set(self)
        try:
            serve = self.core.hooks.serve
            if serve is None:
                await self._serve_default()  # activates first, in its own scope
            else:
                with trio.CancelScope() as self.scope:  # closing cancels an activation
                    if self.state is ACTIVATING and not await self._activate():
                        return
                self.scope = None
                if self.state is ACTIVATING:
                    return  # cancelled while activating: the persist is closing
                self._begin()
                await serve(self.handle)
        except _WorkerCrashed as exc:
            crashed = exc.error
        except trio.Cancelled:
            raise
        except Exception as exc:  # a custom serve loop failed: that is a crash too
            crashed = exc
        finally:
            await self._end(crashed)

    def _begin(self) -> None:
        """It serves from now: its idle timeout and checkpoints count from here."""
        core = self.core
        self.started = self.last_active = now = core.now()
        interval = core.options.checkpoint_interval
        if interval is not None:
            self.checkpoint_at = now + interval

    async def _activate(self) -> bool:
        """Load the state (see `load_state`); False if there is none (the worker ends).

        Runs in the worker's cancel scope (`self.scope`): closing the persist
        cancels a load under way, and the worker ends with no state.
        """
        activation = self.activation
        assert activation is not None
        core = self.core
        try:
            state, dirty = await load_state(core, self.group, activation)
        except (ActivationFailed, NoWorker) as error:
            activation.settle(error)
            self.stop("unactivated", override=True)  # evicted meanwhile, say
            return False
        self.state = state
        if dirty:
            self.unsaved += 1
        activation.settle(None)
        if activation.source == "handover":
            core.counters.handovers += 1
        else:
            core.counters.activations += 1
        core.events.emit("worker.activated", self.group, activation.source)
        self.host.started(self)
        return True

    async def _end(self, crashed: BaseException | None) -> None:
        self.stop("stopped")
        if crashed is not None:
            self.stop_reason = "crashed"
        # After a crash, or a static worker's failed durable save, the state may
        # be half changed; with no state yet (activation failed) there is none.
        invalid = crashed is not None or self.stop_reason == "unsaved"
        try:
            if not invalid and self.state is not ACTIVATING:
                await self._save_on_stop()
        finally:
            self.host.ended(self, crashed)
            self.ended = True
            if self.ended_event is not None:
                self.ended_event.set()

    async def _serve_default(self) -> None:
        # One cancel scope serves many requests: entering one costs more than
        # the rest of a round trip. Its deadline is the idle timeout (or a
        # checkpoint due); it is cancelled for a stop while waiting (or while
        # activating), or for an abandoned job, after which a fresh scope takes over.
        # (Few locals: this frame is part of every parked worker's memory.)
        if self.state is not ACTIVATING:
            self._begin()
        while True:
            waiting = True
            with trio.CancelScope() as scope:
                self.scope = scope
                if self.state is ACTIVATING:
                    if not await self._activate():
                        return
                    self._begin()
                while (job := await self.next_job(scope)) is not None:
                    waiting = False
                    await self.execute(job, scope)
                    if scope.cancel_called:
                        break  # the device swallowed a cancellation: the scope is spent
                    if self.checkpoint_at is not None and self.checkpoint_at <= self.last_active:
                        await self.checkpoint()
                    waiting = True
                return
            self.scope = None
            if self.stop_reason is not None:
                return
            if waiting:
                if self.checkpoint_due():
                    await self.checkpoint()
                    continue
                self.stop("timeout")
                return

    async def _save_on_stop(self) -> None:
        """Save the state through the store (if it changed), then run ``on_idle``.

        Shielded, so closing the persist cannot cut a save short; bounded by
        the shutdown grace, so a hung store or hook cannot hang shutdown (a
        save cut short is counted as failed).
        """
        core = self.core
        saving = core.store is not None and self.dirty
        on_idle = core.hooks.on_idle
        if not saving and on_idle is None:
            return
        grace = core.options.shutdown_grace
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + grace
            if saving:
                changes = self.unsaved
                if await save_state(core, self.group, self.state, self.activation, "stop") is None:
                    self.unsaved -= changes
            if on_idle is not None:
                try:
                    await on_idle(self.group, self.state)
                except Exception as exc:
                    core.hook_failed("on_idle", self.group, exc)
        if scope.cancelled_caught and saving and self.dirty:
            late = TimeoutError(f"it took longer than shutdown_grace ({grace} s)")
            count_save_failure(core, self.group, "stop", late)


async def durably(state: Any, request: Any) -> Any:
    """A worker's device call under ``durable=True``: the request's new state is
    saved (`WorkerTask.commit`) before the request is answered. Runs in the
    worker's task, which `running` names."""
    task: WorkerTask = running.get()
    value = await task.core.hooks.resolve(state, request)
    await task.commit(value)
    return value


def _joinable(job: Job) -> bool:
    return job.shared and not job.abandoned and not job.done.is_set()


class _WorkerCrashed(BaseException):
    """Internal: the device crashed inside a worker; ends the worker without on_idle."""

    def __init__(self, error: BaseException | None) -> None:
        super().__init__()
        self.error = error


@final
@attrs.define(eq=False, repr=False)
class Worker(Generic[S]):
    """A handle on a persistent worker. Made by the persist, never directly.

    `Persist.start_worker` returns one, `Persist.workers` lists them, the
    persist's registry holds one for each group a worker owns, and a device's
    custom ``serve(worker)`` loop is given one.
    """

    _task: WorkerTask = attrs.field(alias="task")

    def __repr__(self) -> str:
        task = self._task
        state = "stopped" if task.ended else "running"
        return f"<trio_persist.Worker {task.group!r} {state} served={task.served}>"

    @property
    def group(self) -> Hashable:
        """The group this worker owns."""
        return self._task.group

    @property
    def state(self) -> S:
        """What ``device.resolve`` gets as its base, kept between requests (None
        while a virtual worker still loads it)."""
        state: S = self._task.state
        return None if state is ACTIVATING else state  # type: ignore[return-value]

    @state.setter
    def state(self, value: S) -> None:
        self._task.set_state(value)

    @property
    def started(self) -> float:
        """`trio.current_time` when the worker started."""
        return self._task.started

    @property
    def served(self) -> int:
        """Requests executed so far."""
        return self._task.served

    def statistics(self) -> WorkerStatistics:
        """Return a frozen snapshot of this worker."""
        return self._task.statistics()

    # -- control -----------------------------------------------------------------

    def stop_nowait(self, reason: str = "stopped") -> None:
        """Ask the worker to stop after the request it is executing, if any.

        Its ``on_idle`` hook runs, then its group is freed and what it still
        had queued is re-routed. Never blocks; see `stop` to wait for it.
        """
        self._task.stop_nowait(reason)

    async def stop(self) -> None:
        """Stop the worker and wait until it has ended (``on_idle`` included).

        Always a checkpoint. Cancelling this wait does not undo the stop.
        """
        self._task.stop_nowait()
        await self._task.wait_stopped()

    async def wait_stopped(self) -> None:
        """Wait until the worker has ended, for whatever reason. Always a checkpoint."""
        await self._task.wait_stopped()

    # -- the serving interface (custom ``serve`` hooks) ---------------------------

    async def receive(self) -> WorkerRequest | None:
        """Wait for the next request, at most the idle timeout.

        Always a checkpoint, even when a request is already queued.

        Returns:
            The next request, in arrival order; or None when the worker should
            end: it was idle for its timeout, or it was asked to stop. A custom
            ``serve`` loop returns when it gets None.
        """
        task = self._task
        job = await task.next_job()
        return None if job is None else WorkerRequest(job=job, task=task)

    def receive_nowait(self) -> WorkerRequest:
        """Take the next queued request without waiting (for batching loops).

        Raises:
            trio.WouldBlock: no request is queued now, or the worker is stopping.
        """
        task = self._task
        job = task.take_nowait() if task.stop_reason is None else None
        if job is None:
            raise trio.WouldBlock
        return WorkerRequest(job=job, task=task)

    async def execute(self, request: WorkerRequest) -> Any:
        """Serve *request* the default way and return its result.

        Runs ``device.resolve(state, request)``, answers the request and every
        queued request the result also answers (identical ones, or those the
        device's ``answers`` hook accepts), then advances the state (unless the
        worker is static) or applies the error strategy. With ``"throw"`` the
        worker stops once the loop asks for its next request. Always a
        checkpoint, whatever the device does.
        """
        await trio.lowlevel.checkpoint()
        return await self._task.execute(request._job)

    def publish(self, request: Any, value: Any) -> int:
        """Answer every queued listener that a result for *request* answers.

        Returns how many queued requests were answered.
        """
        return self._task.publish(request, None, value)
