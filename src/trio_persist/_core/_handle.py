"""The public face of a worker: `Worker`, and `WorkerRequest` for custom loops.

A `Worker` is a thin handle over the engine's `WorkerTask`: what
`Persist.start_worker` returns, `Persist.workers` lists, and a device's custom
``serve(worker)`` loop is given. The supervisor makes one with each worker.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Generic, TypeVar, final

import attrs
import trio

from ._activation import ACTIVATING
from ._job import Job
from ._serving import execute, receive
from ._worker import WorkerStatistics, WorkerTask

__all__ = ["Worker", "WorkerRequest", "handle_of"]

S = TypeVar("S")


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
        return self._job.done

    def reply(self, value: Any) -> None:
        """Answer every listener of this request with *value*."""
        if not self._job.done:
            self._job.succeed(value)
        self._task.release(self._job)

    def fail(self, error: Exception) -> None:
        """Raise *error* in every listener of this request."""
        if not self._job.done:
            self._job.fail(error)
        self._task.release(self._job)


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
            end: it was idle for its timeout, or it was asked to stop (or, placed
            across processes, its worker lease lapsed: see docs/redis.md). A
            custom ``serve`` loop returns when it gets None.
        """
        task = self._task
        job = await receive(task)
        if job is None:
            return None
        task.hold(job)
        return WorkerRequest(job=job, task=task)

    def receive_nowait(self) -> WorkerRequest:
        """Take the next queued request without waiting (for batching loops).

        Raises:
            trio.WouldBlock: no request is queued now, or the worker is stopping
                (placed across processes: also once its worker lease lapsed).
        """
        task = self._task
        job = task.take_nowait() if task.stop_reason is None else None
        if job is not None and task.lapsed():
            task.put_back(job)
            job = None
        if job is None:
            raise trio.WouldBlock
        task.hold(job)
        return WorkerRequest(job=job, task=task)

    async def execute(self, request: WorkerRequest) -> Any:
        """Serve *request* the default way and return its result.

        Runs ``device.resolve(state, request)``, answers the request and every
        queued request the result also answers (identical ones, or those the
        device's ``answers`` hook accepts), then advances the state (unless the
        worker is static) or applies the error strategy. With ``"throw"`` the
        worker stops once the loop asks for its next request. A worker placed
        across processes whose worker lease lapsed starts nothing: None, and
        the request goes to the group's next owner as the worker stops. Always
        a checkpoint, whatever the device does.
        """
        await trio.lowlevel.checkpoint()
        return await execute(self._task, request._job)

    def publish(self, request: Any, value: Any) -> int:
        """Answer every queued listener that a result for *request* answers.

        Returns how many queued requests were answered.
        """
        return self._task.publish(request, None, value)


def handle_of(task: WorkerTask) -> Worker[Any]:
    """*task*'s public handle (made with it by the supervisor)."""
    handle: Worker[Any] = task.handle
    return handle
