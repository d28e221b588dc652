"""The public facade: `open_persist` and `Persist`, which route each request.

A request goes to its group's owner: a worker if one owns the group, else the
flight running it (joining an identical job, or queueing behind it), else a new
flight. Routing is synchronous from the lookup to the registration, so on
Trio's single thread it is atomic: of N concurrent first callers exactly one
starts an execution.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from typing import Any, final

import attrs
import trio

from ._device import DeviceHooks, adapt_device
from ._events import EventHub, EventSubscription
from ._exceptions import InfiniteRecursion, PersistClosed
from ._flight import Flight
from ._grouping import default_group, default_group_and_base
from ._job import Job, Outcome, leader_died, running
from ._monitor import serve_monitor
from ._options import AwaitMode, ErrorStrategy, PersistOptions, check_duration
from ._registry import Registry
from ._runner import RunnerPool
from ._stats import GroupSnapshot, PersistStatistics
from ._supervision import WorkerSupervision
from ._worker import Worker

__all__ = ["Persist", "open_persist"]

Owner = Flight | Worker

# How requests are grouped.
_UNGROUPED, _DIGEST, _HOOK = range(3)


def _waits_for(start: Any, target: Any) -> bool:
    """Whether owner *start* is, or transitively waits for, owner *target*."""
    stack = [start]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if node is target:
            return True
        if id(node) not in seen:
            seen.add(id(node))
            stack.extend(node.awaiting)
    return False


@final
@attrs.define(eq=False, repr=False)
class Persist(WorkerSupervision):
    """Deduplicated execution and persistent workers for one device.

    Made by `open_persist`; every flight and worker is a task in its nursery.
    """

    _hooks: DeviceHooks = attrs.field(alias="hooks")
    options: PersistOptions
    """The checked options the persist was opened with."""
    _nursery: trio.Nursery = attrs.field(alias="nursery")
    _backend: Any = attrs.field(default=None, alias="backend")
    registry: Registry[Owner] = attrs.field(factory=Registry, init=False)
    """Which flight or worker owns each group (read it; do not change it)."""
    _owners: dict[Hashable, Owner] = attrs.field(init=False)
    _events: EventHub = attrs.field(factory=EventHub, init=False)
    _runners: RunnerPool = attrs.field(init=False)
    _mode: int = attrs.field(init=False)
    _workers: dict[Worker, None] = attrs.field(factory=dict, init=False)  # LRU first
    _retired: dict[Hashable, None] = attrs.field(factory=dict, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _requests: int = attrs.field(default=0, init=False)
    _executions: int = attrs.field(default=0, init=False)
    _deduplicated: int = attrs.field(default=0, init=False)
    _failures: int = attrs.field(default=0, init=False)
    _crashes: int = attrs.field(default=0, init=False)
    _abandoned: int = attrs.field(default=0, init=False)
    _worker_timeouts: int = attrs.field(default=0, init=False)
    _evictions: int = attrs.field(default=0, init=False)
    _workers_started: int = attrs.field(default=0, init=False)
    _in_flight: int = attrs.field(default=0, init=False)
    _waiting: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self._owners = self.registry._owners
        self._runners = RunnerPool(self._nursery)
        mode = self.options.await_inprogress
        if mode is False or (mode == "named" and self._hooks.group is None):
            self._mode = _UNGROUPED
        else:
            self._mode = _HOOK if self._hooks.group is not None else _DIGEST

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<trio_persist.Persist {self._hooks.name} {state} groups={len(self._owners)}>"

    # -- public API --------------------------------------------------------------

    def group(self, base: Any, request: Any = None) -> Hashable:
        """Return the group of ``(base, request)``.

        The device's ``group`` hook decides if it has one; otherwise it is a
        128-bit BLAKE2b digest (hex) of a canonical encoding of the pair.

        Raises:
            TypeError: the default grouper cannot encode a value (the message
                says which and where).
        """
        hook = self._hooks.group
        if hook is not None:
            return hook(base, request)
        return default_group(base, request)

    async def resolve(self, base: Any, request: Any = None, *, spawn_worker: bool = False) -> Any:
        """Resolve *request* against *base*, sharing identical in-flight work.

        Identical requests in flight share one execution: every caller gets the
        same result object, or the same exception raised in its own task.
        Different requests of one group run one after another, in arrival
        order. A group owned by a worker is served by it.

        The execution runs in a task of the persist, not in the caller's:
        cancelling a caller (the first one included) leaves it running for the
        others; when the last one leaves, it is cancelled. This is a checkpoint.

        Args:
            base: What the request is resolved against (``device.resolve``'s
                first argument).
            request: The request.
            spawn_worker: After a successful execution, keep a worker for the
                group with the result as its state.

        Raises:
            PersistClosed: the persist's block has been left.
            InfiniteRecursion: the call would wait for an execution that waits
                for this caller (its own group, or a cycle of groups), and
                ``allow_infinite`` is False.
            LeaderDied: the execution ended without an outcome: the device
                crashed (see ``__cause__``) or the persist closed under a
                caller outside it.
            TypeError: the default grouper cannot encode the base or request.
        """
        if self._closed:
            raise PersistClosed(
                "this persist is closed: resolve() is only possible inside its block"
            )
        if not isinstance(spawn_worker, bool):
            raise TypeError(
                f"spawn_worker must be True or False, got {type(spawn_worker).__name__}"
            )
        mode = self._mode
        group: Hashable
        base_group: Hashable | None = None
        key: Hashable | None = None
        if mode == _DIGEST:
            if self._workers or self._retired:
                group, base_group = default_group_and_base(base, request)
            else:
                group = default_group(base, request)
            key = group
        elif mode == _HOOK:
            group = self._hooks.group(base, request)  # type: ignore[misc]
        else:
            self._requests += 1
            job = self._new_flight(None, None, base, request, spawn_worker)
            return await self._listen(job, job.owner, running.get())
        self._requests += 1
        current = running.get()
        while True:
            owner = self._owners.get(group)
            if owner is None and base_group is not None:
                by_base = self._owners.get(base_group)
                if isinstance(by_base, Worker):
                    owner = by_base
            if owner is None:
                restore_group = group if base_group is None else base_group
                if restore_group in self._retired:
                    owner = self._restoring_worker(restore_group, base)
                else:
                    job = self._new_flight(group, key, base, request, spawn_worker)
                    return await self._listen(job, job.owner, current)
            if current is not None and _waits_for(owner, current):
                if owner is current and isinstance(owner, Worker):
                    return await self._execute_directly(base, request)
                if self.options.allow_infinite:
                    return await self._execute_directly(base, request)
                raise InfiniteRecursion(
                    f"resolving group {group!r} would wait for an execution that is waiting "
                    "for this call; pass allow_infinite=True to execute it directly instead"
                )
            if isinstance(owner, Flight):
                joined = owner.find(request)
                if joined is not None:
                    self._deduplicated += 1
                    self._events.emit("flight.joined", group)
                    return await self._listen(joined, owner, current)
                job = owner.enqueue(base, request, spawn_worker)
                job.key = key
                return await self._listen(job, owner, current)
            joined = owner.find(request, key)
            if joined is not None:
                self._deduplicated += 1
                return await self._listen(joined, owner, current)
            job = Job(base, request, owner, spawn_worker, key)
            if await owner.submit(job):
                return await self._listen(job, owner, current)
            # The worker stopped while we waited for room in its inbox: route again.

    async def start_worker(
        self,
        base: Any,
        group: Hashable | None = None,
        static: bool | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - SPEC's name: the idle timeout
    ) -> Worker:
        """Start a worker with *base* as its state, or return the group's worker.

        If the group has a worker already, that one is returned. If a flight
        runs the group, the worker takes over when its current execution ends,
        with the requests queued behind it. This is a checkpoint.

        Args:
            base: The worker's state.
            group: The group it owns; defaults to ``persist.group(base, None)``.
            static: Keep the state as it is (True) or advance it to each
                successful result (False); defaults to the persist's
                ``static_worker``.
            timeout: Idle timeout in seconds; defaults to the persist's
                ``worker_timeout``.

        Raises:
            PersistClosed: the persist's block has been left.
        """
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise PersistClosed("this persist is closed: no worker can start")
        if static is None:
            static = self.options.static_worker
        elif not isinstance(static, bool):
            raise TypeError(f"static must be True, False or None, got {type(static).__name__}")
        if timeout is None:
            seconds = self.options.worker_timeout
        else:
            seconds = check_duration("timeout", timeout)
        if group is None:
            group = self.group(base, None)
        owner = self._owners.get(group)
        if isinstance(owner, Worker):
            return owner
        worker = Worker(persist=self, group=group, state=base, static=static, timeout=seconds)
        if isinstance(owner, Flight):
            if owner.successor is None:
                owner.successor = worker
            return owner.successor
        self.registry.register(group, worker)
        self._launch(worker)
        return worker

    def forget(self, group: Hashable) -> bool:
        """Make the next call for *group* start afresh (Go singleflight's ``Forget``).

        A running flight goes on for the listeners it already has; nobody new
        joins it. A worker is stopped (its ``on_idle`` runs). Never blocks.

        Returns:
            Whether *group* had an owner.
        """
        owner = self._owners.get(group)
        if owner is None:
            return False
        self.registry.unregister(group, owner)
        if isinstance(owner, Worker):
            owner.stop_nowait("forgotten")
        return True

    def workers(self) -> tuple[Worker, ...]:
        """Return every live worker, least recently used first."""
        return tuple(self._workers)

    def subscribe(self, max_buffer: int = 256) -> EventSubscription:
        """Subscribe to this persist's events.

        Use the result as a ``with`` block and iterate it. Up to *max_buffer*
        events wait for a slow subscriber; beyond that they are dropped (and
        counted), never slowing a flight or a worker.
        """
        return self._events.subscribe(max_buffer)

    async def serve_monitor(
        self,
        path: str | os.PathLike[str],
        *,
        interval: float = 1.0,
        max_groups: int = 200,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve this persist's frames on a Unix socket, for ``trio-persist monitor``.

        Start it with ``await nursery.start(persist.serve_monitor, path)``. The
        socket is created with mode 0600 and is read-only: each client gets a
        frame (newline-delimited JSON with ``"version"``, ``"statistics"`` and
        ``"snapshot"``) as soon as it connects, then every *interval* seconds.
        The socket file is removed when the server is cancelled.

        Raises:
            FileExistsError: *path* is taken.
            FileNotFoundError, PermissionError: its directory is missing or not
                writable.
        """
        await serve_monitor(
            self, path, interval=interval, max_groups=max_groups, task_status=task_status
        )

    def statistics(self) -> PersistStatistics:
        """Return a frozen snapshot of this persist's counters and gauges."""
        return PersistStatistics(
            requests=self._requests,
            executions=self._executions,
            deduplicated=self._deduplicated,
            failures=self._failures,
            crashes=self._crashes,
            abandoned=self._abandoned,
            worker_timeouts=self._worker_timeouts,
            evictions=self._evictions,
            workers_started=self._workers_started,
            in_flight=self._in_flight,
            waiters=self._waiting,
            workers=len(self._workers),
            groups=len(self._owners),
        )

    def snapshot(self) -> tuple[GroupSnapshot, ...]:
        """Return one frozen record per registered group, in registration order.

        Empty when all is quiet and no worker lives.
        """
        records = []
        for group, owner in self._owners.items():
            if isinstance(owner, Flight):
                queued = sum(1 for job in owner.pending if not job.abandoned)
                busy = owner.current.scope is not None and not owner.current.done.is_set()
            else:
                queued = owner.queued
                busy = owner.busy
            records.append(
                GroupSnapshot(
                    group=group,
                    kind=owner.kind,
                    listeners=owner.listeners,
                    queued=queued,
                    served=owner.served,
                    started=owner.started,
                    last_active=owner.last_active,
                    busy=busy,
                )
            )
        return tuple(records)

    @property
    def backend(self) -> Any:
        """The backend the persist was opened with (e.g. a `RedisBackend`), or None."""
        return self._backend

    @property
    def closed(self) -> bool:
        """Whether the persist's block has been left."""
        return self._closed

    # -- routing -----------------------------------------------------------------

    async def _listen(self, job: Job, owner: Any, current: Any) -> Any:
        job.listeners += 1
        self._waiting += 1
        if current is not None:
            current.awaiting.append(owner)
        try:
            await job.done.wait()
        finally:
            self._waiting -= 1
            if current is not None:
                current.awaiting.remove(owner)
            if not job.done.is_set():
                job.listeners -= 1
                if job.listeners == 0:
                    job.owner.abandon(job)
        return job.outcome()

    def _new_flight(
        self, group: Hashable | None, key: Hashable | None, base: Any, request: Any, spawn: bool
    ) -> Job:
        """Start a flight for *group* (None: ungrouped, never registered); return its job."""
        flight = Flight(self, group, self._mode != _HOOK, trio.current_time())
        job = flight.first(base, request, spawn)
        job.key = key
        if group is not None:
            self.registry.register(group, flight)
        self._start_flight(flight)
        return job

    def _start_flight(self, flight: Flight) -> None:
        self._in_flight += 1
        self._runners.run(flight)
        self._events.emit("flight.started", flight.group)

    async def _execute_directly(self, base: Any, request: Any) -> Any:
        self._executions += 1
        return await self._hooks.resolve(base, request)

    def _reroute(self, job: Job) -> None:
        """Give a job whose worker stopped to its group's owner now, or a new flight."""
        if self._closed:
            job.fail(leader_died("the persist closed before this request was served"))
            return
        if self._mode == _HOOK:
            try:
                group = self._hooks.group(job.base, job.request)  # type: ignore[misc]
            except Exception as exc:
                job.fail(exc)
                return
        else:
            group = job.key if job.key is not None else default_group(job.base, job.request)
        owner = self._owners.get(group)
        if owner is None:
            flight = Flight(self, group, self._mode == _DIGEST, trio.current_time())
            flight.current = job
            job.owner = flight
            self.registry.register(group, flight)
            self._start_flight(flight)
        elif isinstance(owner, Flight):
            job.owner = owner
            owner.pending.append(job)
        else:
            job.owner = owner
            self._nursery.start_soon(self._forward, owner, job)

    async def _forward(self, worker: Worker, job: Job) -> None:
        if not await worker.submit(job):
            self._reroute(job)

    # -- counters and events (called by flights and workers) ----------------------

    def _resolver(self, flight: Flight, job: Job) -> Callable[[Any, Any], Awaitable[Any]]:
        """What a flight's job runs: the device, through the backend if there is one."""
        resolve = self._hooks.resolve
        backend = self._backend
        if backend is None or flight.group is None:
            return resolve
        key = backend.key_of(flight.group, job.request, flight.group_is_request)
        if key is None:
            return resolve

        async def across_processes(base: Any, request: Any) -> Any:
            return await backend.run(key, base, request, resolve)

        return across_processes

    def _count_execution(self) -> None:
        self._executions += 1

    def _count_outcome(self, owner: Owner, job: Job, outcome: Outcome | None) -> None:
        kind = owner.kind
        if outcome is Outcome.OK:
            self._events.emit(
                "worker.served" if kind == "worker" else "flight.finished", owner.group
            )
        elif outcome is None:
            self._abandoned += 1
            self._events.emit(f"{kind}.cancelled", owner.group)
        else:
            self._failures += 1
            if outcome is Outcome.CRASHED:
                self._crashes += 1
            error = job.error
            detail = f"{type(error).__name__}: {error}" if error is not None else ""
            self._events.emit(f"{kind}.failed", owner.group, detail)

    def _flight_ended(self, flight: Flight) -> None:
        self._in_flight -= 1
        if flight.group is not None:
            self.registry.unregister(flight.group, flight)
        if flight.successor is not None and not self._closed:
            self._hand_over(flight, flight.successor)
        reason = "the persist closed" if self._closed else "its flight ended"
        flight.fail_unanswered(f"the execution ended without an outcome: {reason}")

    # -- closing -----------------------------------------------------------------

    async def _aclose(self) -> None:
        self._closed = True
        grace = self.options.shutdown_grace
        workers = tuple(self._workers)
        for worker in workers:
            worker.stop_nowait("closed")
            current = worker._current
            if current is not None and current.scope is not None:
                current.scope.cancel()
        with trio.CancelScope(shield=True) as scope:
            if not math.isinf(grace):
                scope.deadline = trio.current_time() + 2 * grace
            for worker in workers:
                await worker.wait_stopped()
        if self._backend is not None:
            with trio.CancelScope(shield=True):
                await self._backend.leave()
        self._runners.close()
        self._nursery.cancel_scope.cancel()
        self._events.close()


@asynccontextmanager
async def open_persist(
    device: object,
    *,
    await_inprogress: AwaitMode = True,
    worker_timeout: float | None = 10.0,
    static_worker: bool = False,
    error_strategy: ErrorStrategy = "ignore",
    allow_infinite: bool = False,
    max_workers: int | None = None,
    backend: object = None,
    worker_inbox: int = 64,
    shutdown_grace: float | None = 5.0,
) -> AsyncIterator[Persist]:
    """Open a persist for *device*; every flight and worker lives inside the block.

    Leaving the block stops every worker (each runs its ``on_idle`` first,
    bounded by *shutdown_grace*), cancels every flight, and frees every group;
    callers still waiting from outside get `LeaderDied`, and later calls get
    `PersistClosed`. An exception from the block propagates as itself, not
    wrapped in an exception group.

    Args:
        device: An ``async def resolve(base, request)``, or an object with an
            async ``resolve`` method and optional hooks (see the concepts page).
        await_inprogress: True deduplicates every call; ``"named"`` only when
            the device has a ``group`` hook; False never (each call executes on
            its own and nothing is registered).
        worker_timeout: Seconds a worker may wait for a request before it stops
            (None: never).
        static_worker: Whether workers keep their state rather than advance it.
        error_strategy: ``"ignore"``: a worker whose request fails goes on;
            ``"throw"``: it stops after answering with the error.
        allow_infinite: Execute a recursive resolve directly instead of raising
            `InfiniteRecursion`.
        max_workers: Most workers alive at once (None: no limit); one more
            stops the least recently used idle one.
        backend: None (in-process), or a backend such as
            `trio_persist.redis.RedisBackend`.
        worker_inbox: Requests a worker's inbox holds before callers wait.
        shutdown_grace: Seconds each ``on_idle`` may take (None: no bound).

    Raises:
        TypeError: an option has the wrong type (the message names it).
        ValueError: an option has a wrong value (the message names it).
    """
    options = PersistOptions.check(
        await_inprogress=await_inprogress,
        worker_timeout=worker_timeout,
        static_worker=static_worker,
        error_strategy=error_strategy,
        allow_infinite=allow_infinite,
        max_workers=max_workers,
        worker_inbox=worker_inbox,
        shutdown_grace=shutdown_grace,
    )
    hooks = adapt_device(device)
    if backend is not None and not (hasattr(backend, "serve") and hasattr(backend, "run")):
        raise TypeError(
            "backend must be None or a trio-persist backend such as "
            f"trio_persist.redis.RedisBackend, got {type(backend).__name__}"
        )
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        persist = Persist(hooks=hooks, options=options, nursery=nursery, backend=backend)
        if backend is not None:
            await nursery.start(backend.serve, persist)
        try:
            yield persist
        except BaseException as exc:
            # Re-raised below, outside the nursery, so the user's exception is not
            # wrapped in an ExceptionGroup by a nursery they never opened.
            body_error = exc
        finally:
            await persist._aclose()
    if body_error is not None:
        raise body_error
