"""A job: one execution of a device with the listeners that wait for it.

Flights and workers both run jobs. A job is answered exactly once (`succeed`
or `fail`); its listeners are parked on it (`Job.park`) and all read the same
outcome. Running the device and sorting what it raised into "a result", "an
error for the listeners", "a crash" and "propagate it" lives here once, so
flights and workers cannot disagree about it.
"""

from __future__ import annotations

import enum
import sys
import typing
from collections.abc import Awaitable, Callable, Hashable
from contextvars import ContextVar
from types import TracebackType
from typing import Any, ClassVar, Protocol

import attrs
import outcome
import trio
from trio.lowlevel import reschedule

from .._backend import NO_CHAIN, Chain
from .._exceptions import LeaderDied
from .._grouping import canonical_encoding
from .._stats import GroupSnapshot
from .._text import describe
from ._wrapped import WrappedFunction

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = [
    "OK",
    "UNNAMED",
    "WAKE",
    "AskJob",
    "Job",
    "Outcome",
    "Owner",
    "failed",
    "request_name",
    "run_device",
    "running",
]

# The flight or worker whose device is running in this task, if any: how a
# nested resolve knows what it is called from (recursion and cycle detection).
running: ContextVar[Any] = ContextVar("trio_persist_running", default=None)

# These must never be turned into an outcome: they belong to Trio or to the
# program (docs/guarantees.md: they propagate as in any Trio program).
_PROPAGATE = (trio.Cancelled, KeyboardInterrupt, SystemExit)


UNNAMED: Any = object()
"""A request name not computed yet: `Job.name` makes it when first needed."""


@typing.final
class _Wake(outcome.Outcome[None]):
    """What `trio.lowlevel.reschedule` hands a parked task of ours: None.

    One object serves every wake-up. An `outcome.Value` may be unwrapped only
    once, so trio makes one per wake-up (about 0.3 us, as much as the rest of
    a hand-over); the tasks parked by this package read nothing from it.
    """

    __slots__ = ()

    def unwrap(self) -> None:
        return None

    def send(self, gen: Any) -> Any:
        return gen.send(None)

    async def asend(self, agen: Any) -> Any:
        return await agen.asend(None)


WAKE: outcome.Outcome[None] = _Wake()
"""The wake-up `trio.lowlevel.reschedule` is given by this package (see `_Wake`)."""


class Owner(Protocol):
    """What owns a group and runs its jobs: a flight or a worker.

    This is everything the facade does with an owner, so routing never asks
    which kind it has. Every method is synchronous (never a checkpoint) but
    `admit`, so a lookup, a join and an admission are one atomic step.
    """

    kind: ClassVar[str]
    """``"flight"`` or ``"worker"``: what snapshots, events and observers call it."""

    @property
    def shares(self) -> bool:
        """Whether identical requests may join one execution here (not at an
        advancing worker, where each request is a transition of its own)."""
        ...

    @property
    def group(self) -> Hashable | None:
        """The group it owns now (None: an ungrouped flight, never registered)."""
        ...

    @property
    def recent(self) -> list[float] | None:
        """Its last execution times, for its snapshot (None before the first)."""
        ...

    def find(self, request: Any, key: object) -> Job | None:
        """A live, shared job an identical request may join, or None.

        *key* is the request's canonical name (a digest) when the caller has
        one; owners compare by it rather than by ``==``.
        """
        ...

    def admit_nowait(self, job: Job) -> bool:
        """Take *job* to run after those already here, if there is room now.

        Returns False when it cannot without waiting (a full worker inbox) or
        cannot at all (a stopped worker); see `admit`.
        """
        ...

    async def admit(self, job: Job) -> bool:
        """Take *job*, waiting for room; False if the owner stopped first."""
        ...

    def abandon(self, job: Job) -> None:
        """*job* lost its last listener: cancel it if it runs, drop it if it waits."""
        ...

    def describe(self, group: Hashable) -> GroupSnapshot:
        """What it is doing, for `Persist.snapshot` (*group*: its registry key)."""
        ...


class Outcome(enum.Enum):
    """How a device call ended."""

    OK = "ok"
    FAILED = "failed"  # an Exception: every listener gets it
    CRASHED = "crashed"  # another BaseException: listeners get LeaderDied from it

    def __init__(self, text: str) -> None:
        # The value as a plain attribute: `value` is a property of the enum's
        # class (about 0.1 us a read on Python 3.11), read per observed execution.
        self.text = text


OK = Outcome.OK
"""`Outcome.OK` as a module constant: a member read through its enum class goes
through the enum's metaclass (about 0.1 us on Python 3.11), on every execution."""


@attrs.define(eq=False, repr=False)
class Job:
    """One execution and its listeners. Internal; never handed to users."""

    base: Any
    request: Any
    owner: Owner | None = None
    spawn_worker: bool = False
    # The request's name: what makes two requests identical (the group under
    # the default grouper, else the canonical encoding; None: identical to no
    # other; `UNNAMED`: not computed yet, see `name`).
    key: object = None
    # False for share=False (a write): nobody joins this job.
    shared: bool = True
    # When it was answered by its own execution (`trio.current_time`), if so.
    finished: float | None = None
    # Its first caller started its flight and waits for it from the execution's
    # start: that caller's wait is the execution's time, one sample for both.
    leads: bool = False
    # What executes instead of the device (a wrapped function), or None.
    call: WrappedFunction | None = None
    listeners: int = 0
    # Answered (`succeed` or `fail`): its outcome is final.
    done: bool = False
    # The callers' tasks parked until it is answered (made for the first).
    parked: dict[trio.lowlevel.Task, None] | None = None
    value: Any = None
    error: BaseException | None = None
    tb: TracebackType | None = None
    scope: trio.CancelScope | None = None
    abandoned: bool = False
    # Taken out of a worker's inbox by its serving loop (no longer joinable there).
    in_service: bool = False

    @property
    def function(self) -> str | None:
        """The wrapped function it runs (its name), or None for the device."""
        call = self.call
        return None if call is None else call.name

    def name(self) -> object:
        """The request's name, computed on first use (under a group hook most
        requests are never compared: the encoding is made only when needed)."""
        key = self.key
        if key is UNNAMED:
            key = self.key = request_name(self.request)
        return key

    def leave(self, task: trio.lowlevel.Task) -> None:
        """A caller (its *task*) left before the answer; the last one out
        abandons the job.

        Its task is no longer parked here: a cancelled wait's abort took it out
        already, but a `KeyboardInterrupt` between `park` and the wait leaves it
        in, and the answer would be sent into whatever it awaits next.
        """
        parked = self.parked
        if parked is not None:
            parked.pop(task, None)
        self.listeners -= 1
        if not self.listeners and self.owner is not None:
            self.owner.abandon(self)

    def succeed(self, value: Any) -> None:
        self.value = value
        self._answered()

    def fail(self, error: BaseException) -> None:
        self.error = error
        # Kept so every listener raises with the execution's traceback, not one
        # that grows with each listener it has been raised in.
        self.tb = error.__traceback__
        self._answered()

    def park(self, task: trio.lowlevel.Task) -> Callable[[Any], trio.lowlevel.Abort]:
        """Park *task* until the job is answered; return the abort callback for
        ``trio.lowlevel.wait_task_rescheduled`` (the caller awaits it from its own
        frame: no coroutine of ours per wait).

        A `trio.Event` folded into the job: one object less per call, and its
        listeners are woken with `WAKE`, not an outcome made for each. A
        cancelled caller is simply no longer parked here.
        """
        parked = self.parked
        if parked is None:
            parked = self.parked = {}
        parked[task] = None

        def abort(_: Any) -> trio.lowlevel.Abort:
            del parked[task]
            return trio.lowlevel.Abort.SUCCEEDED

        return abort

    @trio.lowlevel.enable_ki_protection
    def _answered(self) -> None:
        self.done = True
        parked = self.parked
        if parked:
            self.parked = None
            for task in parked:
                reschedule(task, WAKE)

    def outcome(self) -> Any:
        """Return the value, or raise the error with its original traceback."""
        if self.error is not None:
            raise self.error.with_traceback(self.tb)
        return self.value


@attrs.define(eq=False, repr=False)
class AskJob(Job):
    """A request delivered by `Persist.ask`: it runs only at its group's worker.

    It knows its group, so wherever it is routed again (its worker stopped,
    an activation failed) it goes to the group's next worker, activated if
    need be, and never to a flight. Internal.
    """

    group: Hashable = None
    # Makes a fresh state when the group has nothing saved (`Persist.ask`'s default).
    default: Callable[[], Any] | None = None
    # Times its worker stopped without serving anything (bounded: `Supervisor`).
    bounces: int = 0
    # Its id across processes (workers placed by a backend): what a durable
    # save records as applied, so that it is never applied twice.
    request_id: str | None = None
    # Sent by another process: if its worker stops, that process routes it again.
    routed: bool = False
    # Who waits for it in other processes (a routed request's chain: groups
    # and workers): asks its execution makes carry it on (cycle detection).
    chain: Chain = NO_CHAIN


def request_name(request: Any) -> object:
    """What makes two requests of one group identical: their canonical encoding.

    ``1``, ``1.0`` and ``True`` (or ``0.0`` and ``-0.0``) are different
    requests, whatever ``==`` says. None for a request the encoding does not
    know: such a request is identical to no other (it executes on its own).
    A plain int, str or bytes is named by its type and value, which tells the
    same requests apart as its encoding does, at a fraction of the cost.
    """
    kind = type(request)
    if kind is int or kind is str or kind is bytes:
        return (kind, request)
    try:
        return canonical_encoding(request)
    except Exception:
        return None


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
    except BaseException as exc:
        return failed(job, exc)
    job.succeed(value)
    return OK


def failed(job: Job, exc: BaseException) -> Outcome:
    """The device raised *exc*: answer *job* with it (an `Exception`) or with
    `LeaderDied` (a crash); cancellation, `KeyboardInterrupt` and `SystemExit`
    (alone or in a group) are re-raised, leaving *job* unanswered. Called in
    the ``except`` block that caught *exc*."""
    if isinstance(exc, Exception):
        job.fail(exc)
        return Outcome.FAILED
    if _must_propagate(exc):
        raise exc
    job.fail(leader_died(f"the device crashed: {describe(exc)}", exc))
    return Outcome.CRASHED
