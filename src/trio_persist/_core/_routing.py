"""Routing: how `Persist` takes a call to its group's owner, and waits there.

A request goes to its group's owner: a worker if one owns the group, else the
flight running it (joining an identical job, or queueing behind it), else a new
flight. Routing is synchronous from the lookup to the registration, so on
Trio's single thread it is atomic: of N concurrent first callers exactly one
starts an execution. Flights and workers are both an `Owner`: routing asks an
owner to find a job to join, or to admit one, and never which kind it is.

`Routing` is a base class of `Persist` (no state of its own: it uses the
persist's), so a call on the per-call path costs no extra frame or attribute hop.
Recursion (a call that would wait for its own caller) is found here too.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Hashable
from typing import Any

import attrs
import trio
from trio.lowlevel import current_task, wait_task_rescheduled

from .._exceptions import InfiniteRecursion, PersistClosed, PersistError
from .._grouping import default_group, default_group_and_base
from .._text import safe_repr
from ._ask import worker_for
from ._flight import Flight, crosses
from ._job import UNNAMED, AskJob, Job, Owner, leader_died, request_name
from ._linger import MISS
from ._placement import Here, reroute_placed
from ._runner import RunnerPool
from ._state import Core
from ._supervisor import Supervisor
from ._worker import WorkerTask
from ._wrapped import WrappedFunction

__all__ = ["Detour", "Grouping", "Routing", "waits_for"]


class Grouping(enum.Enum):
    """How a persist names requests (from ``await_inprogress`` and the device)."""

    NONE = "none"  # no groups: every call executes on its own, nothing registered
    DIGEST = "digest"  # the default grouper: a group names one request
    HOOK = "hook"  # the device's group hook: a group may hold several requests


@attrs.define
class Detour:
    """Why a call cannot simply listen: a lingering *value* (no owner), a
    recursive call (an *owner*, no job), a full inbox (an owner and a *job*),
    or the backend's refusal (an *error*)."""

    owner: Owner | None = None
    job: Job | None = None
    value: Any = None
    error: Exception | None = None


def _refuse_a_worker(owner: Owner, call: WrappedFunction) -> None:
    """A wrapped call's group is a flight's: a worker started for it cannot serve it."""
    if owner.kind != "flight":
        raise TypeError(f"{call.name}: its group is owned by a worker, not by calls")


def waits_for(awaiting: dict[Owner, list[Owner]], start: Owner, target: Owner) -> bool:
    """Whether owner *start* is, or transitively waits for, owner *target*."""
    stack = [start]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if node is target:
            return True
        if id(node) not in seen:
            seen.add(id(node))
            stack.extend(awaiting.get(node, ()))
    return False


class Routing:
    """The routing half of `Persist`: from a named call to the answer it waits for."""

    __slots__ = ()

    # The persist's own (`Persist` declares and sets them).
    _core: Core
    _supervisor: Supervisor
    _runners: RunnerPool
    _grouping: Grouping
    # Which owners each owner's device waits for now (nested calls: cycle detection).
    _awaiting: dict[Owner, list[Owner]]
    # The workers of this process as a placing backend sees them (cycles
    # through other processes that close by joining an owner here).
    _here: Here

    def _route(
        self,
        current: Owner | None,
        group: Hashable,
        by_base: Hashable | None,
        base: Any,
        request: Any,
        key: object,
        share: bool,
        spawn_worker: bool,
        fn: WrappedFunction | None,
    ) -> tuple[Job, Owner, float | None] | Detour:
        """Take a named call to its group's owner without waiting: join, queue, or
        start a flight, and return ``(job, owner, arrival)`` to listen on; or a
        `Detour` when the call cannot simply listen.

        Synchronous from the lookup to the admission, so atomic on Trio's thread;
        and no coroutine of its own, so a waiting caller's stack stays short.
        *fn* replaces the device (a wrapped function).
        """
        owner = self._owner(group, by_base, base)
        if owner is None:
            if share and self._core.linger.entries:
                value = self._lingering(group, key, request)
                if value is not MISS:
                    return Detour(value=value)
            if share and self._core.refuse and (error := self._refusal(fn, group)):
                return Detour(error=error)  # refused before anything is built for it
            job = Job(base, request, None, spawn_worker, key, share, call=fn)
            flight = self._start_flight(group, job)
            return job, flight, flight.started
        if fn is not None:
            _refuse_a_worker(owner, fn)
        if current is not None and self._waits_for_caller(owner, current):
            return Detour(owner=owner)
        joined = owner.find(request, key) if share and owner.shares else None
        if joined is not None:
            self._joined(owner, joined)
            return joined, owner, None
        job = Job(base, request, None, spawn_worker, key, share, call=fn)
        if owner.admit_nowait(job):
            return job, owner, None
        return Detour(owner=owner, job=job)

    def _waits_for_caller(self, owner: Owner, current: Owner) -> bool:
        """Whether a call from *current*'s execution that joins or queues at
        *owner* would wait for itself: *owner* waits for *current* here, or for
        a worker elsewhere that waits for it (only looked for once a request
        with workers in its chain is served here: an O(1) count before that)."""
        if waits_for(self._awaiting, owner, current):
            return True
        here = self._here
        return bool(here.carrying) and here.closes(owner, current)

    def _refusal(self, fn: WrappedFunction | None, group: Hashable) -> Exception | None:
        """The backend's refusal of a new shared call of *group*, if it would go
        through the backend (`crosses`: a method grouped by its instance's
        identity never does, and is never asked for)."""
        refuse = self._core.refuse
        return refuse() if refuse is not None and crosses(fn, group) else None

    async def _detour(self, detour: Detour, current: Owner | None, *route: Any) -> Any:
        """A call that cannot simply listen: a lingering answer, a recursive call,
        or a full worker inbox (waited for; routed again if the worker stopped)."""
        while True:
            owner, job = detour.owner, detour.job
            if detour.error is not None:
                await trio.lowlevel.checkpoint()
                raise detour.error
            if owner is None:
                return await self._lingered(detour.value, route[-1])
            if job is None:
                return await self._recurse(owner, current, *route)
            if await owner.admit(job):
                return await self._listen(job, owner, current)
            again = self._route(current, *route)  # the worker stopped meanwhile
            if not isinstance(again, Detour):
                return await self._listen(again[0], again[1], current, again[2])
            detour = again

    def _worker_for(
        self,
        group: Hashable,
        default: Callable[[], Any] | None,
        current: Owner | None = None,
        **options: Any,
    ) -> WorkerTask:
        """The worker for *group* (see `worker_for`), activating one if need be;
        refuses a call that would wait for itself (from *current*)."""
        core = self._core
        if core.closed:
            raise PersistClosed("this persist is closed: no worker can start")
        owner = core.owners.get(group)
        if owner is not None and current is not None and waits_for(self._awaiting, owner, current):
            raise InfiniteRecursion(
                f"asking group {safe_repr(group)} would wait for an execution that is "
                "waiting for this call (its own worker, or a cycle of groups)"
            )
        nested = current is not None  # asked by an execution of this persist
        return worker_for(self._supervisor, group, owner, default, nested=nested, **options)

    async def _settled_owner(self, group: Hashable) -> Owner | None:
        """*group*'s owner, once a worker activating for it has its state (or failed)."""
        while True:
            owner = self._core.owners.get(group)
            activation = owner.activation if isinstance(owner, WorkerTask) else None
            if activation is None or activation.settled:
                return owner
            with contextlib.suppress(PersistError):
                await activation.wait()

    def _name(self, base: Any, request: Any) -> tuple[Hashable, Hashable | None, object]:
        """Return ``(group, base's group or None, the request's name or None)``.

        A request's name says which requests are identical: under the default
        grouper its group, under a group hook its canonical encoding.
        """
        if self._grouping is Grouping.HOOK:
            return self._core.hooks.group(base, request), None, UNNAMED  # type: ignore[misc]
        ignore = self._core.options.ignore_keys
        if self._supervisor.workers or self._supervisor.retired:
            # A worker started for *base* serves every request on it.
            group, by_base = default_group_and_base(base, request, ignore)
            return group, by_base, group
        group = default_group(base, request, ignore_keys=ignore)
        return group, None, group

    def _owner(self, group: Hashable, by_base: Hashable | None, base: Any) -> Owner | None:
        """The owner a request for *group* goes to, restoring a retired worker; or None."""
        owners = self._core.owners
        owner = owners.get(group)
        if owner is not None:
            return owner
        if by_base is not None and isinstance(worker := owners.get(by_base), WorkerTask):
            return worker
        retired = group if by_base is None else by_base
        if retired in self._supervisor.retired:
            return self._supervisor.restoring(retired)
        return None

    async def _lingered(self, value: Any, fn: WrappedFunction | None) -> Any:
        self._core.counters.deduplicated += 1
        if fn is not None:
            fn.deduplicated += 1
        await trio.lowlevel.checkpoint()
        return value

    def _joined(self, owner: Owner, job: Job) -> None:
        core = self._core
        core.counters.deduplicated += 1
        if job.call is not None:
            job.call.deduplicated += 1
        if owner.kind == "flight":
            core.events.emit("flight.joined", owner.group)
        if core.observers.listening:  # told from this frame: no call of ours between
            group = owner.group
            for method in core.observers.on_joined:
                try:
                    method(owner.kind, group, job)
                except Exception as exc:
                    core.hook_failed("observer joined", group, exc)

    async def _recurse(
        self,
        owner: Owner,
        current: Owner | None,
        group: Hashable,
        by_base: Hashable | None,
        base: Any,
        request: Any,
        *rest: Any,
    ) -> Any:
        """A call that would wait for its own caller: execute directly, or refuse.

        A worker's own device calling into its group executes directly (it
        holds the state); anything else only with ``allow_infinite``.
        """
        if (owner is current and owner.kind == "worker") or self._core.options.allow_infinite:
            await trio.lowlevel.checkpoint()  # promised, whatever the device does
            self._core.counters.executions += 1
            fn = rest[-1]  # the route's last argument: a wrapped function, or None
            if fn is None:
                return await self._core.hooks.resolve(base, request)
            fn.executions += 1
            return await fn(base, request)
        raise InfiniteRecursion(
            f"resolving group {safe_repr(group)} would wait for an execution that is "
            "waiting for this call; pass allow_infinite=True to execute it directly instead"
        )

    async def _listen(
        self, job: Job, owner: Owner, current: Owner | None, arrived: float | None = None
    ) -> Any:
        core = self._core
        counters = core.counters
        job.listeners += 1  # inlined `Job.listen`: once per caller
        counters.waiters += 1
        # A caller that started the flight (*arrived*: the flight's start, its
        # execution's) leads its job: its wait is the execution's sample.
        if arrived is None:
            arrived = core.now()
            leads = False
        else:
            leads = job.leads = True
        if current is not None:
            self._awaiting.setdefault(current, []).append(owner)
        try:
            if job.done:
                await trio.lowlevel.checkpoint()
            else:
                await wait_task_rescheduled(job.park(current_task()))
        except BaseException:
            # Left before the answer (cancelled): the last one out abandons the job.
            if not leads:
                counters.waiters -= 1
            elif job.finished is None:
                counters.waiters -= 1
                job.leads = False  # its execution, if it ends, is nobody's wait now
            # (Else it was answered as it was cancelled, and counted so by `Core.finish`.)
            if current is not None:
                self._stop_awaiting(current, owner)
            if not job.done:
                job.leave(current_task())
            if core.quiet is not None:
                core.maybe_quiet()
            raise
        if current is not None:
            self._stop_awaiting(current, owner)
        # The answer's time is the execution's end when there was one: the
        # clock is read once per execution, not once per listener. A leader's
        # wait, and its end, were counted with its execution (`Core.finish`).
        finished = job.finished
        if finished is None:
            counters.waiters -= 1
            core.timings.wait.add(core.now() - arrived)
        elif not leads:
            counters.waiters -= 1
            core.timings.wait.add(finished - arrived)
        if core.quiet is not None:
            core.maybe_quiet()
        if job.error is None:
            return job.value
        return job.outcome()  # raises, with the execution's traceback

    def _stop_awaiting(self, current: Owner, owner: Owner) -> None:
        awaited = self._awaiting[current]
        awaited.remove(owner)
        if not awaited:
            del self._awaiting[current]

    def _reroute(self, job: Job) -> None:
        """Give a job whose worker stopped to its group's owner now, or a new flight."""
        core = self._core
        if core.closed:
            job.fail(leader_died("the persist closed before this request was served"))
            return
        if isinstance(job, AskJob):
            self._reroute_ask(job)
            return
        try:
            group = job.key if self._grouping is Grouping.DIGEST else None
            if group is None:
                group = core.group_of(job.base, job.request)
            owner = core.owners.get(group)
        except Exception as exc:
            job.fail(exc)
            return
        if owner is None:
            self._start_flight(group, job)
        elif not owner.admit_nowait(job):
            core.nursery.start_soon(self._forward, owner, job)

    def _reroute_ask(self, job: AskJob) -> None:
        """An ask whose worker stopped goes to its group's next worker, never a flight."""
        if self._core.placement is not None:
            reroute_placed(self._core, self._core.placement, job)
            return
        try:
            owner = self._core.owners.get(job.group)
        except Exception as exc:  # a group whose hash raises now
            job.fail(exc)
            return
        task = worker_for(self._supervisor, job.group, owner, job.default)
        if not task.admit_nowait(job):
            self._core.nursery.start_soon(self._forward, task, job)

    def _lingering(self, group: Hashable, key: object, request: Any) -> Any:
        """The result lingering for the request named *key* (`UNNAMED`: named from
        *request* now), or `MISS`."""
        if key is UNNAMED:
            key = request_name(request)
        if key is None:
            return MISS
        return self._core.linger.get(group, key)

    def _start_flight(self, group: Hashable, job: Job) -> Flight:
        # A group names one request but under a group hook (wrapped calls never use it).
        by_request = self._grouping is not Grouping.HOOK or job.call is not None
        return Flight.start(self._core, self._supervisor, self._runners, group, job, by_request)

    async def _forward(self, owner: Owner, job: Job) -> None:
        if not await owner.admit(job):
            self._reroute(job)
