"""A worker's task: activate, serve its requests one at a time, save, end.

`run_worker` is the task the supervisor starts for a `WorkerTask`. A worker
with an `Activation` (a virtual worker, `Persist.ask`) first loads its state
while requests queue in its inbox. Then the device's ``serve`` hook runs with
the worker's `Worker` handle, or the default loop (`serve_default`) serves
every request with ``device.resolve(state, request)``, in arrival order.

It stops after ``timeout`` seconds with no new request (a cancel scope around
the wait, never a polling loop), when evicted under ``max_workers``, on
`Worker.stop`, under the ``"throw"`` error strategy, or when the persist
closes; each time its state is saved through the persist's store (if it
changed) and ``on_idle(group, state)`` runs, bounded by the persist's
shutdown grace (`_saving`). After a crash neither runs. Either way its host
(the supervisor) frees the group and re-routes every request still queued,
never lost and never left hanging.

The default loop is the hot path of every worker round trip: one long-lived
cancel scope whose deadline is the idle timeout, moved rather than made per
request; the wait and the device call awaited from the loop's own frame (no
coroutine per request but the device's); the bookkeeping before and after
in plain functions.
"""

from __future__ import annotations

import math
from typing import Any

import trio

from .._exceptions import ActivationFailed, NoWorker
from ._activation import ACTIVATING, load_state
from ._histogram import RECENT, remember
from ._job import OK, Job, Outcome, failed, leader_died, run_device, running
from ._saving import checkpoint, checkpoint_due, save_on_stop
from ._worker import WorkerTask

__all__ = ["execute", "receive", "run_worker"]


class _WorkerCrashed(BaseException):
    """Internal: the device crashed inside a worker; ends the worker without on_idle."""

    def __init__(self, error: BaseException | None) -> None:
        super().__init__()
        self.error = error


async def run_worker(task: WorkerTask) -> None:
    """The worker's task: activate, serve until told to stop, save, end."""
    crashed: BaseException | None = None
    running.set(task)
    try:
        serve = task.core.hooks.serve
        if serve is None:
            await serve_default(task)  # activates first, in its own scope
        else:
            with trio.CancelScope() as task.scope:  # closing cancels an activation
                if task.state is ACTIVATING and not await activate(task):
                    return
            task.scope = None
            if task.state is ACTIVATING:
                return  # cancelled while activating: the persist is closing
            task.begin()
            await serve(task.handle)
    except _WorkerCrashed as exc:
        crashed = exc.error
    except trio.Cancelled:
        raise
    except Exception as exc:  # a custom serve loop failed: that is a crash too
        crashed = exc
    finally:
        await _end(task, crashed)


async def activate(task: WorkerTask) -> bool:
    """Load the state (see `load_state`); False if there is none (the worker ends).

    Runs in the worker's cancel scope (`WorkerTask.scope`): closing the
    persist cancels a load under way, and the worker ends with no state.
    """
    activation = task.activation
    assert activation is not None
    core = task.core
    try:
        state, dirty = await load_state(core, task.group, activation)
    except (ActivationFailed, NoWorker) as error:
        activation.settle(error)
        task.stop("unactivated", override=True)  # evicted meanwhile, say
        return False
    task.state = state
    if dirty:
        task.unsaved += 1
    activation.settle(None)
    if activation.source == "handover":
        core.counters.handovers += 1
    else:
        core.counters.activations += 1
    core.events.emit("worker.activated", task.group, activation.source)
    task.host.started(task)
    return True


async def _end(task: WorkerTask, crashed: BaseException | None) -> None:
    task.receiving = False
    task.stop("stopped")
    if crashed is not None:
        task.stop_reason = "crashed"
    # After a crash, or a static worker's failed durable save, the state may
    # be half changed; with no state yet (activation failed) there is none.
    invalid = crashed is not None or task.stop_reason == "unsaved"
    try:
        if not invalid and task.state is not ACTIVATING:
            await save_on_stop(task)
    finally:
        task.host.ended(task, crashed)
        task.ended = True
        if task.ended_event is not None:
            task.ended_event.set()


# -- the default loop ---------------------------------------------------------------


async def serve_default(task: WorkerTask) -> None:
    """Serve requests until the worker stops, activating it first if need be.

    One cancel scope serves many requests: entering one costs more than the
    rest of a round trip. Its deadline is the idle timeout (or a checkpoint
    due); it is cancelled for a stop while waiting (or while activating), or
    for an abandoned job, after which a fresh scope takes over.
    """
    if task.state is not ACTIVATING:
        task.begin()
    while True:
        with trio.CancelScope() as scope:
            task.scope = scope
            if task.state is ACTIVATING:
                if not await activate(task):
                    return
                task.begin()
            if await _serve_in(task, scope):
                return
        task.scope = None
        # Cancelled while waiting for a request (`receiving` is left set then):
        # idle for its timeout, or a checkpoint due; else the scope is spent.
        waiting, task.receiving = task.receiving, False
        if task.stop_reason is not None:
            return
        if waiting:
            if checkpoint_due(task):
                await checkpoint(task)
                continue
            task.stop("timeout")
            return


async def _serve_in(task: WorkerTask, scope: trio.CancelScope) -> bool:
    """Serve requests in *scope*: True when the worker should stop, False when
    *scope* is spent (the device swallowed its cancellation).

    The idle timeout is *scope*'s deadline: its expiry raises `trio.Cancelled`
    out of the wait, with ``task.receiving`` still set. (Few locals: this frame
    is part of every parked worker's memory.)
    """
    while True:
        # A stopping worker serves only what it owes (see `WorkerTask.owed`).
        job = task.take_nowait() if task.stop_reason is None else task.owed()
        expiry = math.inf  # the deadline *job* was received under
        if job is None:
            if task.stop_reason is not None:
                return True
            expiry = _arm(task, scope)
            task.receiving = True
            job = await task.inbox.receive()
            task.receiving = False  # not in a finally: see serve_default
            if not _received(task, job, scope if expiry != math.inf else None):
                if task.stop_reason is not None:
                    return True
                continue
        if task.lapsed():
            task.put_back(job)  # a paused owner woken: never started
            return True
        began = _start(task, job)
        job.scope = scope
        # The device awaited here, not through `run_device`: no coroutine of
        # ours per request (the outcome is sorted the same way, by `failed`).
        try:
            value = await task.core.worker_resolve(task.state, job.request)
        except trio.Cancelled:
            _cancelled(task, job, began)
            raise
        except BaseException as exc:
            outcome = failed(job, exc)
        else:
            job.succeed(value)
            outcome = OK
        finally:
            _done(task, job)
        _finished(task, job, outcome, began)
        if _spent(task, job, scope, began, expiry):
            return False
        if task.checkpoint_at is not None and task.checkpoint_at <= task.last_active:
            await checkpoint(task)


def _spent(
    task: WorkerTask, job: Job, scope: trio.CancelScope, began: float, expiry: float
) -> bool:
    """Whether *scope* was cancelled while *job* ran (it began at *began*, received
    under the deadline *expiry*): then the scope is spent."""
    # It is cancelled by an abandon or a stop (both marked first), or by its
    # deadline expiring before the wake-up cleared it (then *began*, read after,
    # is past it): the flags spare the common case `cancel_called`'s clock read.
    if job.abandoned or task.stop_reason is not None or began >= expiry:
        return scope.cancel_called
    return False


def _arm(task: WorkerTask, scope: trio.CancelScope) -> float:
    """Set *scope*'s deadline for a wait; return it (`math.inf`: none to clear after)."""
    # The idle timeout counts from the end of the last request.
    deadline = task.last_active + task.timeout  # inf without a timeout
    if task.checkpoint_at is not None and task.dirty:
        # A changed state is saved on time, idle or not.
        deadline = min(deadline, task.checkpoint_at)
    if deadline != math.inf:
        scope.deadline = deadline
    return deadline


def _received(task: WorkerTask, job: Job, armed: trio.CancelScope | None = None) -> bool:
    """*job* came out of the inbox (while *armed*'s deadline was set, if given:
    it is cleared): whether it is to be served now."""
    if armed is not None:
        armed.deadline = math.inf
    if task.stop_reason is not None:
        # Stopped as this job was handed over: keep it for re-routing.
        task.in_inbox.pop(job, None)
        task.backlog.insert(0, job)
        return False
    return task.accept(job)


# -- one request ----------------------------------------------------------------------


def _start(task: WorkerTask, job: Job) -> float:
    """*job*'s execution starts now: returns when."""
    core = task.core
    task.current = job
    task.last_active = began = core.now()
    task.host.touch(task)
    if core.observers.listening:
        core.tell_started(task, task.state, job, task.label)
    core.counters.executions += 1
    return began


def _done(task: WorkerTask, job: Job) -> None:
    """*job*'s execution is over, however it ended."""
    job.scope = None
    task.current = None
    if task.joinable:
        task.unindex(job)


def _finished(task: WorkerTask, job: Job, outcome: Outcome, began: float) -> Any:
    """*job* was answered by its execution: time it, count it, apply it."""
    task.last_active = now = task.core.finish(task, job, outcome, began)
    recent = task.recent
    if recent is not None and len(recent) == RECENT:  # the ring is full: one store
        recent[task.served % RECENT] = now - began
    else:
        task.recent = remember(recent, task.served, now - began)
    task.served += 1
    return _apply(task, job, outcome)


async def execute(task: WorkerTask, job: Job) -> Any:
    """Serve *job* the default way for a custom loop (`Worker.execute`), in a
    cancel scope of its own; return its result (None if it failed, or never
    started: the worker lease lapsed, the job goes back as the worker stops)."""
    if task.lapsed():
        job.in_service = False  # the loop holds it: re-routed as the worker ends
        return None
    began = _start(task, job)
    outcome = None
    try:
        with trio.CancelScope() as job.scope:
            outcome = await run_device(task.core.worker_resolve, task.state, job.request, job)
    except trio.Cancelled:
        _cancelled(task, job, began)
        raise
    finally:
        _done(task, job)
        task.release(job)
    if outcome is None:  # its own scope caught the cancellation: abandoned
        task.served += 1
        task.last_active = task.core.now()
        _abandoned(task, job, began)
        return None
    return _finished(task, job, outcome, began)


def _cancelled(task: WorkerTask, job: Job, began: float) -> None:
    core = task.core
    task.last_active = core.now()
    if job.abandoned:
        _abandoned(task, job, began)
        return
    if core.observers.listening:
        core.observers.ended(task.kind, task.group, job, None, task.last_active - began)
    if not job.done:
        # Cancelled for another reason (closing, a timeout racing the
        # hand-over): the job goes back to the head of the queue, to be
        # served next or re-routed, never lost.
        job.in_service = False
        task.backlog.insert(0, job)


def _abandoned(task: WorkerTask, job: Job, began: float) -> None:
    task.core.abandoned(task, job, began)
    job.fail(leader_died("the execution was cancelled: every listener left"))


def _apply(task: WorkerTask, job: Job, outcome: Outcome) -> Any:
    """Apply an answered job's outcome: stop, publish, or advance the state."""
    task.answered += 1
    if outcome is not OK:
        if outcome is Outcome.CRASHED:
            task.stop("crashed", override=True)
            raise _WorkerCrashed(job.error)
        if task.core.options.error_strategy == "throw":  # it failed
            task.stop("throw", override=True)
        return None
    value = job.value
    if task.static and job.shared and (task.in_inbox or task.backlog):
        task.publish(job.request, job.name(), value)
    if not task.static:
        task.state = value
        task.host.regroup(task, value)
    return value


# -- a custom loop's wait -------------------------------------------------------------


async def receive(task: WorkerTask) -> Job | None:
    """Take the next live job for a custom loop (`Worker.receive`); None when the
    worker should stop: stopped, idle for its timeout (a checkpoint due
    meanwhile is saved here), or its worker lease lapsed. Always a checkpoint."""
    job = await _receive(task)
    if job is not None and task.lapsed():
        task.put_back(job)
        return None
    return job


async def _receive(task: WorkerTask) -> Job | None:
    while True:
        if task.stop_reason is not None:
            job = task.owed()
            await trio.lowlevel.checkpoint()
            return job
        job = task.take_nowait()
        if job is not None:
            await trio.lowlevel.checkpoint()
            return job
        task.receiving = True
        try:
            job = await _receive_until(task, trio.current_time() + task.timeout)
        finally:
            task.receiving = False
            task.wait_scope = None
        if job is None:
            task.stop("timeout")
            return None
        if _received(task, job):
            return job
        if task.stop_reason is not None:
            return None


async def _receive_until(task: WorkerTask, idle_until: float) -> Job | None:
    """A custom loop's wait for a request: None when stopped or idle until
    *idle_until* (checkpoints due meanwhile are saved, without resetting it)."""
    while task.stop_reason is None:
        job = None
        wake = idle_until
        if task.checkpoint_at is not None and task.dirty:
            wake = min(wake, task.checkpoint_at)
        with trio.CancelScope(deadline=wake) as task.wait_scope:
            job = await task.inbox.receive()
        if job is not None or not checkpoint_due(task):
            return job
        await checkpoint(task)
    return None
