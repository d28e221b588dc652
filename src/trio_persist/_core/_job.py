"""A job: one execution of a device with the listeners that wait for it.

Flights and workers both run jobs. A job is answered exactly once (`succeed`
or `fail`); its listeners wait on its `trio.Event` and all read the same
outcome. Running the device and sorting what it raised into "a result", "an
error for the listeners", "a crash" and "propagate it" lives here once, so
flights and workers cannot disagree about it.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Protocol

import attrs
import trio

from .._exceptions import LeaderDied
from .._text import describe

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["Job", "Outcome", "Owner", "run_device", "running"]

# The flight or worker whose device is running in this task, if any: how a
# nested resolve knows what it is called from (recursion and cycle detection).
running: ContextVar[Any] = ContextVar("trio_persist_running", default=None)

# These must never be turned into an outcome: they belong to Trio or to the
# program (SPEC: "KeyboardInterrupt and SystemExit propagate as in any Trio program").
_PROPAGATE = (trio.Cancelled, KeyboardInterrupt, SystemExit)


class Owner(Protocol):
    """What owns jobs (a flight or a worker): told when a job loses its last listener."""

    def abandon(self, job: Job) -> None: ...


class Outcome(enum.Enum):
    """How a device call ended."""

    OK = "ok"
    FAILED = "failed"  # an Exception: every listener gets it
    CRASHED = "crashed"  # another BaseException: listeners get LeaderDied from it


@attrs.define(eq=False, repr=False)
class Job:
    """One execution and its listeners. Internal; never handed to users."""

    base: Any
    request: Any
    owner: Owner
    spawn_worker: bool = False
    # Set by a worker's dedup key, or None for request equality.
    key: object = None
    # False for share=False (a write): nobody joins this job.
    shared: bool = True
    # When it was answered by its own execution (`trio.current_time`), if so.
    finished: float | None = None
    # What executes instead of the device (a wrapped function), or None.
    call: Callable[[Any, Any], Awaitable[Any]] | None = None
    listeners: int = 0
    done: trio.Event = attrs.field(factory=trio.Event)
    value: Any = None
    error: BaseException | None = None
    tb: TracebackType | None = None
    scope: trio.CancelScope | None = None
    abandoned: bool = False
    taken: bool = False

    def succeed(self, value: Any) -> None:
        self.value = value
        self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        # Kept so every listener raises with the execution's traceback, not one
        # that grows with each listener it has been raised in.
        self.tb = error.__traceback__
        self.done.set()

    def outcome(self) -> Any:
        """Return the value, or raise the error with its original traceback."""
        if self.error is not None:
            raise self.error.with_traceback(self.tb)
        return self.value


def _must_propagate(exc: BaseException) -> bool:
    if isinstance(exc, _PROPAGATE):
        return True
    return isinstance(exc, BaseExceptionGroup) and exc.subgroup(_PROPAGATE) is not None


def leader_died(message: str, cause: BaseException | None = None) -> LeaderDied:
    error = LeaderDied(message)
    error.__cause__ = cause
    return error


async def run_device(
    resolve: Callable[[Any, Any], Awaitable[Any]], base: Any, request: Any, job: Job
) -> Outcome:
    """Run ``resolve(base, request)`` and answer *job* with what happens.

    Cancellation, `KeyboardInterrupt` and `SystemExit` (alone or in a group)
    propagate and leave *job* unanswered: the caller's ``finally`` decides.
    """
    try:
        value = await resolve(base, request)
    except Exception as exc:
        job.fail(exc)
        return Outcome.FAILED
    except BaseException as exc:
        if _must_propagate(exc):
            raise
        job.fail(leader_died(f"the device crashed: {describe(exc)}", exc))
        return Outcome.CRASHED
    job.succeed(value)
    return Outcome.OK
