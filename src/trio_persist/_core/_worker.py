"""Persistent workers: long-lived tasks that own a group and keep its state in memory.

A worker is one task in the persist's nursery. Requests reach it through a
bounded memory channel (a full inbox makes callers wait; nothing is dropped),
it serves them one at a time in arrival order with
``device.resolve(state, request)``, and replies go straight back to each
requester's job. It keeps its registration the whole time it serves (upstream
dropped it during every request; docs/guarantees.md).

This module is the worker as an owner: `WorkerTask`, its record (state,
inbox, counters), what routing does with it (`Owner`: find, admit, abandon,
describe) and how requests are taken from its inbox. Its task's life (the
serving loop, activation, the end) is `_serving`; its saves `_saving`; the
public `Worker` handle `_handle`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any, ClassVar, Protocol, final

import attrs
import trio

from .._backend import WorkerLease
from .._stats import GroupSnapshot, group_label
from ._activation import ACTIVATING, Activation
from ._job import UNNAMED, Job, request_name
from ._state import Core, describe_owner

__all__ = ["WorkerHost", "WorkerStatistics", "WorkerTask"]


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
    # The worker lease it runs under (a backend placing workers across
    # processes; None: per process): no request starts once it is not valid.
    lease: WorkerLease | None = attrs.field(default=None, init=False)
    # Whether identical requests join one execution (a static worker's do).
    shares: bool = attrs.field(init=False)
    send: trio.MemorySendChannel[Job] = attrs.field(init=False)
    inbox: trio.MemoryReceiveChannel[Job] = attrs.field(init=False)
    # Jobs handed over from a flight, or put back, served before the inbox.
    backlog: list[Job] = attrs.field(factory=list, init=False)
    # In the inbox (or waiting for room in it): joinable by identical requests
    # until taken. Keyed by the job itself (identity): no int made per request.
    in_inbox: dict[Job, None] = attrs.field(factory=dict, init=False)
    # Taken by a custom loop and not answered yet (it may hold several; made on
    # first use: the default loop holds only `current`).
    held: dict[Job, None] | None = attrs.field(default=None, init=False)
    # Callers waiting for room in a full inbox (see `admit`).
    entering: int = attrs.field(default=0, init=False)
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
    # The public face, a `Worker` (what users and custom serve loops get), set by
    # the supervisor that makes both (it lives in a layer above this one).
    handle: Any = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self.shares = self.static
        self.send, self.inbox = trio.open_memory_channel[Job](self.core.options.worker_inbox)
        self.started = self.last_active = trio.current_time()

    @property
    def listeners(self) -> int:
        jobs = (*self.in_inbox, *self.backlog)
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

    def run_under(self, lease: WorkerLease) -> None:
        """It runs under *lease* from now (its group's, across processes)."""
        self.lease = lease

    def lapsed(self) -> bool:
        """Whether its worker lease is no longer surely held (lost, or its expiry
        bound passed unconfirmed: a paused process wakes so): then it stops,
        unsaved, and starts nothing more. A local check, no round trip."""
        lease = self.lease
        if lease is None or lease.valid():
            return False
        self.stop("unsaved", override=True)  # never saved over its successor
        return True

    def put_back(self, job: Job) -> None:
        """*job* was taken but never started: first again (re-routed if it stops)."""
        job.in_service = False
        self.backlog.insert(0, job)

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

    def give_handle(self, handle: Any) -> None:
        """*handle* (its `Worker`, made by the supervisor) is its public face."""
        self.handle = handle

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
        # Counted, so `take_nowait` never misses a job the channel moved into
        # its buffer before this task resumed (and listed it in `in_inbox`).
        self.entering += 1
        try:
            await self.send.send(job)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        finally:
            counters.waiters -= 1
            self.entering -= 1
        self._admitted(job)
        return True

    def _admitted(self, job: Job) -> None:
        if job.in_service:
            return  # taken already (a full inbox delays this)
        self.in_inbox[job] = None
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
        self.unindex(job)
        if job.scope is not None:
            job.scope.cancel()
        else:
            self.in_inbox.pop(job, None)  # dropped at once, not when reached

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

    def unindex(self, job: Job) -> None:
        joinable = self.joinable
        if joinable and joinable.get(job.key) is job:
            del joinable[job.key]

    def hold(self, job: Job) -> None:
        """A custom loop took *job*: it holds it until it answers it."""
        held = self.held
        if held is None:
            held = self.held = {}
        held[job] = None

    def release(self, job: Job) -> None:
        """A custom loop answered *job*: it is no longer held."""
        if self.held:
            self.held.pop(job, None)
        self.unindex(job)

    # -- taking requests ---------------------------------------------------------

    def take_nowait(self) -> Job | None:
        """Take the next live job without waiting; None if there is none now."""
        inbox = self.inbox
        while True:
            job: Job | None = None
            if self.backlog:
                job = self.backlog.pop(0)
            elif not self.in_inbox and not self.entering:
                # Nothing live in the inbox (an abandoned job left there is
                # dropped when received): no WouldBlock raised and caught.
                return None
            else:
                # Not awaited inside an except block: a parked worker would keep
                # the WouldBlock and its traceback alive (memory per idle worker).
                try:  # noqa: SIM105 - contextlib.suppress costs a frame per request
                    job = inbox.receive_nowait()
                except trio.WouldBlock:
                    pass
                if job is None:
                    return None
            if self.accept(job):
                return job

    def accept(self, job: Job) -> bool:
        """*job* was taken from the inbox or the backlog: False if it is dead
        (abandoned or answered), else it is in service now."""
        self.in_inbox.pop(job, None)
        if job.abandoned or job.done:
            self.unindex(job)
            return False
        job.in_service = True
        self.unsaved += 1  # its device may change the state, even in place
        return True

    def owed(self) -> Job | None:
        """The request an evicted worker serves before it stops: the one it was
        activated for (so workers taking turns under max_workers make progress)."""
        activation = self.activation
        if activation is None or not activation.owes_first or self.served:
            return None
        if self.stop_reason != "evicted":
            return None
        activation.owes_first = False
        return self.take_nowait()

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
        for job in (*self.in_inbox, *self.backlog):
            if job.done or job.abandoned or not job.shared:
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

    def begin(self) -> None:
        """It serves from now: its idle timeout and checkpoints count from here."""
        core = self.core
        self.started = self.last_active = now = core.now()
        interval = core.options.checkpoint_interval
        if interval is not None:
            self.checkpoint_at = now + interval

    def take_unanswered(self) -> list[Job]:
        """Close the inbox and return every job not answered yet, in order."""
        jobs = [*(self.held or ()), *self.backlog]
        self.held = None
        self.backlog.clear()
        while True:
            try:
                jobs.append(self.inbox.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        self.inbox.close()  # wakes senders blocked on a full inbox: they re-route
        self.in_inbox.clear()
        self.joinable = None
        return [job for job in jobs if not job.done and not job.abandoned]


def _joinable(job: Job) -> bool:
    """Whether an identical request may still join *job*."""
    return job.shared and not job.abandoned and not job.done
