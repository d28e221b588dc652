"""Persistent workers: long-lived tasks that own a group and keep its state in memory.

A worker is one task in the persist's nursery. Requests reach it through a
bounded memory channel (a full inbox makes callers wait; nothing is dropped),
it serves them one at a time in arrival order with
``device.resolve(state, request)``, and replies go straight back to each
requester's job. It keeps its registration the whole time it serves (upstream
dropped it during every request: W4).

It stops after ``timeout`` seconds with no new request (a cancel scope around
the wait, never a polling loop), when evicted under ``max_workers``, on
`Worker.stop`, under the ``"throw"`` error strategy, or when the persist
closes; each time ``on_idle(group, state)`` runs first, bounded by the
persist's shutdown grace. After a crash it does not run. Either way the group
is freed and every request still queued is re-routed to a fresh execution,
never lost and never left hanging.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, final

import attrs
import trio

from ._job import Job, Outcome, leader_died, run_device, running

if TYPE_CHECKING:
    from ._persist import Persist

__all__ = ["Worker", "WorkerRequest", "WorkerStatistics"]


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
    ``"crashed"``, ``"closed"``, ``"unrestored"``, or None while it runs."""


@final
@attrs.define(eq=False, repr=False)
class WorkerRequest:
    """One request taken by a custom worker loop (see `Worker.receive`).

    Answer it exactly once, with `Worker.execute`, `reply` or `fail`; a request
    the loop leaves unanswered is re-routed when the worker stops.
    """

    _job: Job = attrs.field(alias="job")

    @property
    def request(self) -> Any:
        """The request as the caller passed it."""
        return self._job.request

    @property
    def answered(self) -> bool:
        return self._job.done.is_set()

    def reply(self, value: Any) -> None:
        """Answer every listener of this request with *value*."""
        if not self._job.done.is_set():
            self._job.succeed(value)
        self._release()

    def fail(self, error: Exception) -> None:
        """Raise *error* in every listener of this request."""
        if not self._job.done.is_set():
            self._job.fail(error)
        self._release()

    def _release(self) -> None:
        owner = self._job.owner
        if isinstance(owner, Worker):
            owner._taken.pop(id(self._job), None)


@final
@attrs.define(eq=False, repr=False)
class Worker:
    """A handle on a persistent worker. Made by the persist, never directly.

    Attributes:
        state: The worker's state: what ``device.resolve`` gets as its base.
    """

    _persist: Persist = attrs.field(alias="persist")
    _group: Hashable = attrs.field(alias="group")
    state: Any
    _static: bool = attrs.field(alias="static")
    _timeout: float = attrs.field(alias="timeout")
    _restore: bool = attrs.field(default=False, alias="restore")
    _send: trio.MemorySendChannel[Job] = attrs.field(init=False)
    _receive: trio.MemoryReceiveChannel[Job] = attrs.field(init=False)
    _backlog: list[Job] = attrs.field(factory=list, init=False)
    _queued: dict[int, Job] = attrs.field(factory=dict, init=False)
    # Taken by the serving loop and not answered yet (a custom loop may hold several).
    _taken: dict[int, Job] = attrs.field(factory=dict, init=False)
    _current: Job | None = attrs.field(default=None, init=False)
    _wait_scope: trio.CancelScope | None = attrs.field(default=None, init=False)
    _scope: trio.CancelScope | None = attrs.field(default=None, init=False)
    _waiting: bool = attrs.field(default=False, init=False)
    _stop_reason: str | None = attrs.field(default=None, init=False)
    # Made on demand: most workers are never waited for (memory per idle worker).
    _stopped: trio.Event | None = attrs.field(default=None, init=False)
    _ended: bool = attrs.field(default=False, init=False)
    _served: int = attrs.field(default=0, init=False)
    _answered: int = attrs.field(default=0, init=False)
    _started: float = attrs.field(init=False)
    last_active: float = attrs.field(init=False)
    awaiting: list[object] = attrs.field(factory=list, init=False)
    kind: str = attrs.field(default="worker", init=False)

    def __attrs_post_init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[Job](
            self._persist.options.worker_inbox
        )
        self._started = self.last_active = trio.current_time()

    def __repr__(self) -> str:
        state = "stopped" if self._ended else "running"
        return f"<trio_persist.Worker {self._group!r} {state} served={self._served}>"

    @property
    def group(self) -> Hashable:
        """The group this worker owns."""
        return self._group

    @property
    def listeners(self) -> int:
        jobs = (*self._queued.values(), *self._backlog)
        current = self._current.listeners if self._current is not None else 0
        return current + sum(job.listeners for job in jobs)

    @property
    def started(self) -> float:
        """`trio.current_time` when the worker started."""
        return self._started

    @property
    def served(self) -> int:
        """Requests executed so far."""
        return self._served

    @property
    def queued(self) -> int:
        return len(self._backlog) + len(self._queued)

    @property
    def busy(self) -> bool:
        return self._current is not None

    def statistics(self) -> WorkerStatistics:
        """Return a frozen snapshot of this worker."""
        return WorkerStatistics(
            group=self._group,
            static=self._static,
            timeout=self._timeout,
            served=self._served,
            answered=self._answered,
            queued=self.queued,
            listeners=self.listeners,
            busy=self.busy,
            started=self._started,
            last_active=self.last_active,
            stopped=self._ended,
            stop_reason=self._stop_reason,
        )

    # -- control -----------------------------------------------------------------

    def stop_nowait(self, reason: str = "stopped") -> None:
        """Ask the worker to stop after the request it is executing, if any.

        Its ``on_idle`` hook runs, then its group is freed and what it still
        had queued is re-routed. Never blocks; see `stop` to wait for it.
        """
        if self._stop_reason is None:
            self._stop_reason = reason
        if self._waiting:
            scope = self._wait_scope or self._scope
            if scope is not None:
                scope.cancel()

    async def stop(self) -> None:
        """Stop the worker and wait until it has ended (``on_idle`` included).

        Cancelling this wait does not undo the stop.
        """
        self.stop_nowait()
        await self.wait_stopped()

    async def wait_stopped(self) -> None:
        """Wait until the worker has ended, for whatever reason."""
        if self._ended:
            await trio.lowlevel.checkpoint()
            return
        if self._stopped is None:
            self._stopped = trio.Event()
        await self._stopped.wait()

    # -- the serving interface (the default loop and custom ``serve`` hooks) --------

    async def receive(self) -> WorkerRequest | None:
        """Wait for the next request, at most the idle timeout.

        Returns:
            The next request, in arrival order; or None when the worker should
            end: it was idle for its timeout, or it was asked to stop. A custom
            ``serve`` loop returns when it gets None.
        """
        job = await self._next_job()
        return None if job is None else WorkerRequest(job=job)

    def receive_nowait(self) -> WorkerRequest:
        """Take the next queued request without waiting (for batching loops).

        Raises:
            trio.WouldBlock: no request is queued now, or the worker is stopping.
        """
        job = self._take_nowait() if self._stop_reason is None else None
        if job is None:
            raise trio.WouldBlock
        return WorkerRequest(job=job)

    async def execute(self, request: WorkerRequest) -> Any:
        """Serve *request* the default way and return its result.

        Runs ``device.resolve(state, request)``, answers the request and every
        queued request the result also answers (identical ones, or those the
        device's ``answers`` hook accepts), then advances the state (unless the
        worker is static) or applies the error strategy. With ``"throw"`` the
        worker stops once the loop asks for its next request.
        """
        return await self._execute(request._job)

    def publish(self, request: Any, value: Any) -> int:
        """Answer every queued listener that a result for *request* answers.

        Returns how many queued requests were answered.
        """
        return self._publish(request, None, value)

    # -- internals ---------------------------------------------------------------

    def find(self, request: Any, key: object) -> Job | None:
        """Return a live job for an identical request to join, or None."""
        current = self._current
        if current is not None and self._same(current, request, key):
            return current
        for job in self._queued.values():
            if self._same(job, request, key):
                return job
        for job in self._backlog:
            if self._same(job, request, key):
                return job
        return None

    @staticmethod
    def _same(job: Job, request: Any, key: object) -> bool:
        if job.abandoned or job.done.is_set():
            return False
        if key is not None:
            return bool(job.key == key)
        return bool(job.request == request)

    async def submit(self, job: Job) -> bool:
        """Put *job* in the inbox, waiting while it is full.

        Returns False if the worker stopped first (the job never entered).
        """
        try:
            self._send.send_nowait(job)
        except trio.WouldBlock:
            persist = self._persist
            persist._waiting += 1  # waiting for room is waiting too
            try:
                await self._send.send(job)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
            finally:
                persist._waiting -= 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        if not job.taken:
            # Joinable by identical requests from now on (a full inbox delays this).
            self._queued[id(job)] = job
        return True

    def abandon(self, job: Job) -> None:
        job.abandoned = True
        if job.scope is not None:
            job.scope.cancel()

    def _take_nowait(self) -> Job | None:
        """Take the next live job without waiting; None if there is none now."""
        receive = self._receive
        while True:
            job: Job | None = None
            if self._backlog:
                job = self._backlog.pop(0)
            else:
                # Not awaited inside an except block: a parked worker would keep
                # the WouldBlock and its traceback alive (memory per idle worker).
                try:  # noqa: SIM105 - contextlib.suppress costs a frame per request
                    job = receive.receive_nowait()
                except trio.WouldBlock:
                    pass
                if job is None:
                    return None
            if self._accept(job):
                return job

    def _accept(self, job: Job) -> bool:
        self._queued.pop(id(job), None)
        if job.abandoned or job.done.is_set():
            return False
        job.taken = True
        self._taken[id(job)] = job
        return True

    async def _next_job(self, scope: trio.CancelScope | None = None) -> Job | None:
        """Take the next live job; None when the worker should stop.

        With *scope* (the default loop's long-lived scope), the idle timeout is
        that scope's deadline and its expiry raises `trio.Cancelled` to the
        loop; without, a scope is made for this wait alone.
        """
        while True:
            if self._stop_reason is not None:
                return None
            job = self._take_nowait()
            if job is not None:
                return job
            self._waiting = True
            try:
                if scope is not None:
                    # The idle timeout counts from the end of the last request.
                    timed = self._timeout != math.inf
                    if timed:
                        scope.deadline = trio.current_time() + self._timeout
                    job = await self._receive.receive()
                    if timed:
                        scope.deadline = math.inf
                else:
                    with trio.CancelScope(
                        deadline=trio.current_time() + self._timeout
                    ) as self._wait_scope:
                        job = await self._receive.receive()
            finally:
                self._waiting = False
                self._wait_scope = None
            if job is None:
                if self._stop_reason is None:
                    self._stop_reason = "timeout"
                return None
            if self._stop_reason is not None:
                # Stopped as this job was handed over: keep it for re-routing.
                self._queued.pop(id(job), None)
                self._backlog.insert(0, job)
                return None
            if self._accept(job):
                return job

    async def _execute(self, job: Job, scope: trio.CancelScope | None = None) -> Any:
        persist = self._persist
        self._current = job
        self.last_active = trio.current_time()
        persist._touch(self)
        outcome = None
        persist._count_execution()
        try:
            if scope is not None:
                job.scope = scope
                outcome = await run_device(persist._hooks.resolve, self.state, job.request, job)
            else:
                with trio.CancelScope() as job.scope:
                    outcome = await run_device(persist._hooks.resolve, self.state, job.request, job)
        except trio.Cancelled:
            if job.abandoned:
                self._abandoned(job)
            elif not job.done.is_set():
                # Cancelled for another reason (closing, a timeout racing the
                # hand-over): the job goes back to the head of the queue, to be
                # served next or re-routed, never lost.
                job.taken = False
                self._backlog.insert(0, job)
            raise
        finally:
            job.scope = None
            self._current = None
            self._taken.pop(id(job), None)
            self.last_active = trio.current_time()
        self._served += 1
        if outcome is None:
            self._abandoned(job)
            return None
        self._answered += 1
        persist._count_outcome(self, job, outcome)
        if outcome is Outcome.CRASHED:
            self._stop_reason = "crashed"
            raise _WorkerCrashed(job.error)
        if outcome is Outcome.FAILED:
            if persist.options.error_strategy == "throw":
                self._stop_reason = "throw"
            return None
        value = job.value
        if self._queued or self._backlog:
            self._publish(job.request, job.key, value)
        if not self._static:
            self.state = value
            persist._regroup(self, value)
        return value

    def _abandoned(self, job: Job) -> None:
        self._persist._count_outcome(self, job, None)
        job.fail(leader_died("the execution was cancelled: every listener left"))

    def _publish(self, request: Any, key: object, value: Any) -> int:
        answers = self._persist._hooks.answers
        count = 0
        for job in (*self._queued.values(), *self._backlog):
            if job.done.is_set() or job.abandoned:
                continue
            if answers is not None:
                hit = answers(job.request, request)
            elif key is not None:
                hit = job.key == key
            else:
                hit = job.request == request
            if hit:
                job.succeed(value)
                count += 1
        self._answered += count
        self._persist._deduplicated += count
        return count

    def _set_group(self, group: Hashable) -> None:
        self._group = group

    def _take_unanswered(self) -> list[Job]:
        """Close the inbox and return every job not answered yet, in order."""
        jobs = [*self._taken.values(), *self._backlog]
        self._taken.clear()
        self._backlog.clear()
        while True:
            try:
                jobs.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        self._receive.close()  # wakes senders blocked on a full inbox: they re-route
        self._queued.clear()
        return [job for job in jobs if not job.done.is_set() and not job.abandoned]

    async def run(self) -> None:
        persist = self._persist
        crashed: BaseException | None = None
        valid_state = True
        running.set(self)
        try:
            if self._restore:
                restored = await persist._restore_state(self)
                if restored is None:
                    valid_state = False
                    self._stop_reason = "unrestored"
                    return
                self.state = restored
            serve = persist._hooks.serve
            if serve is not None:
                await serve(self)
            else:
                await self._serve_default()
        except _WorkerCrashed as exc:
            crashed = exc.error
        except trio.Cancelled:
            raise
        except Exception as exc:  # a custom serve loop failed: that is a crash too
            crashed = exc
        finally:
            if self._stop_reason is None:
                self._stop_reason = "stopped"
            if crashed is not None:
                self._stop_reason = "crashed"
                valid_state = False
            try:
                if valid_state:
                    await persist._run_on_idle(self)
            finally:
                persist._worker_ended(self, crashed)
                self._ended = True
                if self._stopped is not None:
                    self._stopped.set()

    async def _serve_default(self) -> None:
        # One cancel scope serves many requests: entering one costs more than
        # the rest of a round trip. Its deadline is the idle timeout; it is
        # cancelled for a stop while waiting, or for an abandoned job, after
        # which a fresh scope takes over.
        while True:
            waiting = True
            with trio.CancelScope() as scope:
                self._scope = scope
                while (job := await self._next_job(scope)) is not None:
                    waiting = False
                    await self._execute(job, scope)
                    if scope.cancel_called:
                        break  # the device swallowed a cancellation: the scope is spent
                    waiting = True
                return
            self._scope = None
            if self._stop_reason is not None:
                return
            if waiting:
                self._stop_reason = "timeout"
                return


class _WorkerCrashed(BaseException):
    """Internal: the device crashed inside a worker; ends the worker without on_idle."""

    def __init__(self, error: BaseException | None) -> None:
        super().__init__()
        self.error = error
