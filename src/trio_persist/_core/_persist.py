"""The public facade: `Persist` (`_open` opens it).

`Persist` checks a call, names it and hands it to routing (`_routing`, its base
class), which takes it to its group's owner; it reports through `Reporting` (statistics,
snapshots, events), registers wrapped functions, and closes. Everything the
persist shares with its flights and workers lives one layer down, in its `Core`.
"""

from __future__ import annotations

import functools
import math
import secrets
import sys
import weakref
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, ParamSpec, TypeVar, final, overload

import attrs
import trio

from .._backend import Backend, overload_check_of, placement_of
from .._exceptions import PersistClosed
from .._store import Store
from ._device import NO_DEVICE, DeviceHooks
from ._flight import Flight
from ._handle import Worker, handle_of
from ._job import UNNAMED, AskJob, Job, Owner, running
from ._options import PersistOptions, check_duration
from ._placement import Here, claim_started, lease_worker, resolve_placed
from ._registry import RegistryView
from ._reporting import Reporting
from ._routing import Detour, Grouping
from ._runner import RunnerPool
from ._state import Core
from ._supervisor import Supervisor
from ._worker import WorkerTask
from ._wrapped import WrappedFunction

if sys.version_info < (3, 11):  # pragma: no cover
    pass

__all__ = ["Persist", "close"]

B = TypeVar("B")
R = TypeVar("R", contravariant=True)
T = TypeVar("T", covariant=True)
P = ParamSpec("P")
V = TypeVar("V")

Resolve = Callable[[Any, Any], Awaitable[Any]]


def _face(owner: Owner) -> object:
    """An owner as `Persist.registry` shows it: a worker as its public handle."""
    return handle_of(owner) if isinstance(owner, WorkerTask) else owner


def _check_default(default: object) -> None:
    if default is not None and not callable(default):
        raise TypeError(
            f"default must be None or a callable that makes a fresh state, got "
            f"{type(default).__name__}"
        )


@final
@attrs.define(eq=False, repr=False)
class Persist(Reporting, Generic[B, R, T]):
    """Deduplicated execution and persistent workers for one device.

    Made by `open_persist`; every flight and worker is a task in its nursery.
    Generic over its device: for ``async def resolve(base: B, request: R) -> T``
    (or an object whose ``resolve`` has that signature), ``open_persist``
    yields a ``Persist[B, R, T]`` and ``await persist.resolve(...)`` is a ``T``.
    """

    _hooks: DeviceHooks = attrs.field(alias="hooks")
    _options: PersistOptions = attrs.field(alias="options")
    _nursery: trio.Nursery = attrs.field(alias="nursery")
    _backend: Backend | None = attrs.field(alias="backend")
    _store: Store | None = attrs.field(alias="store", default=None)
    _core: Core = attrs.field(init=False)
    _supervisor: Supervisor = attrs.field(init=False)
    _runners: RunnerPool = attrs.field(init=False)
    _here: Here = attrs.field(init=False)
    _grouping: Grouping = attrs.field(init=False)
    # Functions wrapped by this persist, by name (a name means one function while
    # anything uses it: a wrapper or a job holds its registration).
    _wrapped: weakref.WeakValueDictionary[str, WrappedFunction] = attrs.field(
        factory=weakref.WeakValueDictionary, init=False
    )
    # Which owners each owner's device waits for now (nested calls: cycle detection).
    _awaiting: dict[Owner, list[Owner]] = attrs.field(factory=dict, init=False)
    # The backend's door check (`Admitting.overloaded`), if it has one.
    _backend_overloaded: Callable[[], bool] | None = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._core = core = Core(
            hooks=self._hooks,
            options=self._options,
            nursery=self._nursery,
            reroute=self._reroute,
            backend=self._backend,
            store=self._store,
        )
        self._supervisor = Supervisor(core)
        self._runners = RunnerPool(core.nursery)
        self._here = Here(core, self._worker_for, self._listen, self._awaiting)
        core.placement = placement_of(self._backend, self._here)
        self._backend_overloaded = overload_check_of(self._backend)
        mode = core.options.await_inprogress
        has_hook = core.hooks.group is not None
        if mode is False or (mode == "named" and not has_hook) or core.hooks is NO_DEVICE:
            self._grouping = Grouping.NONE
        else:
            self._grouping = Grouping.HOOK if has_hook else Grouping.DIGEST

    def __repr__(self) -> str:
        core = self._core
        state = "closed" if core.closed else "open"
        return f"<trio_persist.Persist {core.hooks.name} {state} groups={len(core.owners)}>"

    @property
    def options(self) -> PersistOptions:
        """The checked options the persist was opened with."""
        return self._core.options

    @property
    def registry(self) -> RegistryView[object]:
        """The owner of each group, read-only (a `Worker`, or the engine's own record
        of a flight)."""
        return RegistryView(registry=self._core.registry, face=_face)

    @property
    def backend(self) -> Any:
        """The backend the persist was opened with, or None.

        For example a `trio_persist.redis.RedisBackend`.
        """
        return self._core.backend

    @property
    def closed(self) -> bool:
        """Whether the persist's block has been left."""
        return self._core.closed

    # -- public API --------------------------------------------------------------

    def group(self, base: Any, request: Any = None) -> Hashable:
        """Return the group of ``(base, request)``.

        The device's ``group`` hook decides if it has one; otherwise it is a
        128-bit BLAKE2b digest (hex) of a canonical encoding of the pair.

        Raises:
            TypeError: the default grouper cannot encode a value (the message
                says which and where).
        """
        return self._core.group_of(base, request)

    @overload
    async def resolve(
        self, base: B, request: R, *, spawn_worker: bool = ..., share: bool = ...
    ) -> T: ...

    @overload
    async def resolve(
        self: Persist[B, None, T], base: B, *, spawn_worker: bool = ..., share: bool = ...
    ) -> T: ...

    async def resolve(
        self,
        base: Any,
        request: Any = None,
        *,
        spawn_worker: bool = False,
        share: bool = True,
    ) -> Any:
        """Resolve *request* against *base*, sharing identical in-flight work.

        Identical requests in flight share one execution: every caller gets the
        same result object, or the same exception raised in its own task.
        Different requests of one group run one after another, in arrival
        order. A group owned by a worker is served by it (an advancing worker
        executes every request; a static one may answer identical queued
        requests with one execution), in another process too with
        ``RedisBackend(workers="cluster")`` (docs/redis.md).

        The execution runs in a task of the persist, not in the caller's:
        cancelling a caller (the first one included) leaves it running for the
        others; when the last one leaves, it is cancelled. This is always a
        checkpoint, unless it raises one of the errors below at once.

        Args:
            base: What the request is resolved against (``device.resolve``'s
                first argument).
            request: The request.
            spawn_worker: After a successful execution, keep a worker for the
                group with the result as its state.
            share: False for a write: this call gets an execution of its own,
                never joins another and is never joined, and is still served
                in arrival order by its group's flight or worker. With a
                backend it executes in this process, never through the
                backend's shared key (docs/guarantees.md).

        Raises:
            PersistClosed: the persist's block has been left.
            InfiniteRecursion: the call would wait for an execution that waits
                for this caller (its own group, or a cycle of groups), and
                ``allow_infinite`` is False.
            LeaderDied: the execution ended without an outcome: the device
                crashed (see ``__cause__``) or the persist closed under a
                caller outside it.
            TypeError: the default grouper cannot encode the base or request,
                or a flag is not a bool.
            ValueError: ``spawn_worker=True`` on a persist that does not group.
        """
        core = self._core
        if core.closed:
            raise PersistClosed(
                "this persist is closed: resolve() is only possible inside its block"
            )
        if spawn_worker is not False or share is not True:  # the common case skips a call
            self._check_flags(spawn_worker, share)
        if self._grouping is Grouping.NONE:
            if core.hooks is NO_DEVICE:
                self._need_a_device("resolve()")
            core.counters.requests += 1
            job = Job(base, request, None, False, None, share)
            flight = Flight.start(core, self._supervisor, self._runners, None, job, True)
            return await self._listen(job, flight, running.get(), flight.started)
        group, by_base, key = self._name(base, request)
        core.counters.requests += 1
        if core.placement is not None and (
            placed := await resolve_placed(core, group, request, share, spawn_worker)
        ):
            return placed[0]
        current = running.get()
        route = self._route(current, group, by_base, base, request, key, share, spawn_worker, None)
        if not isinstance(route, Detour):
            return await self._listen(route[0], route[1], current, route[2])
        args = (group, by_base, base, request, key, share, spawn_worker, None)
        return await self._detour(route, current, *args)

    async def start_worker(
        self,
        base: B,
        group: Hashable | None = None,
        static: bool | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the public name: the idle timeout
    ) -> Worker[B]:
        """Start a worker with *base* as its state, or return the group's worker.

        If the group has a worker already, that one is returned. If a flight
        runs the group, the worker takes over when its current execution ends,
        with the requests queued behind it. Always a checkpoint.

        Args:
            base: The worker's state.
            group: The group it owns; defaults to ``persist.group(base, None)``.
            static: Keep the state as it is (True) or advance it to each
                successful result (False); defaults to the persist's
                ``static_worker``.
            timeout: Idle timeout in seconds; defaults to the persist's
                ``worker_timeout``.

        With a backend that places workers across processes, the worker runs
        here under the group's worker lease.

        Raises:
            PersistClosed: the persist's block has been left.
            NoWorker: the group's worker lives in another process (placed
                workers; the message names it).
        """
        await trio.lowlevel.checkpoint()
        core = self._core
        if core.closed:
            raise PersistClosed("this persist is closed: no worker can start")
        self._need_a_device("start_worker()")
        if static is not None and not isinstance(static, bool):
            raise TypeError(f"static must be True, False or None, got {type(static).__name__}")
        seconds = None if timeout is None else check_duration("timeout", timeout)
        if group is None:
            group = core.group_of(base, None)
        lease = await claim_started(core.placement, group)
        owner = await self._settled_owner(group)
        if isinstance(owner, WorkerTask):
            return handle_of(owner)
        task = self._supervisor.new_worker(group, base, static=static, timeout=seconds)
        if lease is not None:
            self._here.lease_started(task, lease)
        if isinstance(owner, Flight):
            return handle_of(owner.hand_to(task))
        self._supervisor.start(task)
        return handle_of(task)

    async def get_worker(
        self,
        group: Hashable,
        *,
        default: Callable[[], B] | None = None,
        static: bool | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the idle timeout, as start_worker's
    ) -> Worker[B]:
        """Return *group*'s worker, activating it if it has none (the session pattern).

        A live worker (or one waiting to take over from a flight) is returned as
        it is. Otherwise a virtual worker is activated for the group, as `ask`
        does (sharing the activation with concurrent asks): its state is loaded
        from the persist's store, else the device's ``restore(group)`` hook,
        else ``default()``, for any group, including one this process has never
        seen (after a restart). It keeps its group for life. Always a checkpoint.
        With a backend that places workers across processes, the worker is
        activated here, under the group's worker lease.

        Raises:
            PersistClosed: the persist's block has been left.
            ActivationFailed: loading the state failed (see its ``__cause__``).
            NoWorker: nothing to restore and *default* is None (a `LookupError`);
                or the group's worker lives in another process.
        """
        await trio.lowlevel.checkpoint()
        self._need_a_device("get_worker()")
        if static is not None and not isinstance(static, bool):
            raise TypeError(f"static must be True, False or None, got {type(static).__name__}")
        seconds = None if timeout is None else check_duration("timeout", timeout)
        _check_default(default)
        placement = self._core.placement
        lease = None if placement is None else await placement.claim(group)
        task = self._worker_for(group, default, static=static, timeout=seconds)
        if lease is not None:
            lease_worker(task, lease)
        if task.activation is not None:
            await task.activation.wait()
        return handle_of(task)

    async def ask(
        self, group: Hashable, request: R, *, default: Callable[[], B] | None = None
    ) -> T:
        """Deliver *request* to *group*'s worker and return its reply.

        The reply is ``device.resolve(state, request)``: an advancing worker's
        state becomes the reply, a static worker keeps its state. If the group
        has no live worker, one is activated in the same step, with its state
        loaded from the first of the persist's store, the device's
        ``restore(group)`` hook and ``default()``; concurrent asks share that
        one activation. The request never runs without its worker, nor against
        a fresh state while a saved one exists, and never as a flight
        (docs/virtual-workers.md states every guarantee). Cancelling the call
        withdraws the request if it has not started, and cancels it if it has
        (an abandoned request is not applied, unless ``durable=True`` and a
        store's write in a thread had begun: that write runs to its end, and
        the request is applied). Always a checkpoint.

        Args:
            group: The worker's group: any value the registry can hold (to be
                saved by a store, one `trio_persist.canonical_encoding` names).
            request: What ``device.resolve(state, request)`` gets.
            default: Makes a fresh state when nothing is saved (a callable, such
                as ``dict``); the first any waiting ask gives is used.

        Raises:
            PersistClosed: the persist's block has been left.
            ActivationFailed: loading the group's state failed (see its
                ``__cause__``); nothing was started, the next ask tries again.
            NoWorker: nothing to activate from and no *default* (a `LookupError`).
            InfiniteRecursion: called from inside the group's own worker (or a
                cycle of groups waiting for each other).
            SaveFailed: with ``durable=True``, the new state was not saved; the
                request is not applied.
            LeaderDied: the worker crashed serving it, or the persist closed.
        """
        core = self._core
        if core.closed:
            raise PersistClosed("this persist is closed: ask() is only possible inside its block")
        self._need_a_device("ask()")
        _check_default(default)
        core.counters.requests += 1
        if core.placement is not None:  # the group's worker may live in another process
            placed: T = await core.placement.ask(group, request, default, secrets.token_hex(16))
            return placed
        current = running.get()
        job = AskJob(None, request, key=UNNAMED, group=group, default=default)
        while True:
            task = self._worker_for(group, default, current)
            joined = task.find(request, UNNAMED)  # a static worker's identical queued request
            if joined is not None:
                self._joined(task, joined)
                reply: T = await self._listen(joined, task, current)
                return reply
            if task.admit_nowait(job) or await task.admit(job):
                reply = await self._listen(job, task, current)
                return reply
            # The worker stopped while this waited for room in its inbox: again.

    def wrap(
        self, fn: Callable[P, Awaitable[V]], *, name: str | None = None, share: bool = True
    ) -> Callable[P, Awaitable[V]]:
        """Return *fn* deduplicated: concurrent identical calls share one execution.

        The result has *fn*'s exact signature. Calls are grouped by the
        default grouper over the function's name (its module and qualified
        name, or *name*) and its arguments, so every argument must be one the
        grouper encodes (`TypeError` otherwise, at the call): frozen dataclass
        and attrs instances are encoded by their type and fields
        (docs/concepts.md). Cancellation, recursion and errors behave as for
        `resolve`: the execution runs in a task of the persist; the last
        caller to leave cancels it. With ``share=False`` (a function that
        writes) every call executes on its own, one after another per group
        of arguments, in arrival order. A success lingers for the persist's
        ``linger``.

        Wrapped calls live in a group space of their own: no `resolve` call,
        and no group a device's ``group`` hook returns, ever joins a wrapped
        call or reads its result (docs/guarantees.md). Calls go through the
        persist's backend like any other, keyed by the function's name and
        arguments, so the name must mean one function in every process.

        A name is this function's while anything uses it (a function this
        returned, a call running or queued), then it is released.

        Raises:
            ValueError: another function is wrapped under the same name now
                (two closures of one factory, say): give them distinct names.
            TypeError: *fn* has no qualified name (a ``functools.partial``)
                and *name* is None.
        """
        if not isinstance(share, bool):
            raise TypeError(f"share must be True or False, got {type(share).__name__}")
        registration = self._register(fn, name, self._core.options.linger)
        call_wrapped = self._call_wrapped

        @functools.wraps(fn)
        async def deduplicated(*args: P.args, **kwargs: P.kwargs) -> V:
            value: V = await call_wrapped(registration, args, kwargs, share, False)
            return value

        return deduplicated

    def forget(self, group: Hashable) -> bool:
        """Make the next call for *group* start afresh (Go singleflight's ``Forget``).

        A running flight goes on for the listeners it already has; nobody new
        joins it. A worker is stopped (its state is saved and its ``on_idle``
        runs; it frees its group once they have finished, and requests that
        reach it meanwhile go to the group's next owner: a fresh execution, or
        for `ask` a fresh activation); a lingering result is dropped. Never
        blocks.

        Returns:
            Whether *group* had an owner or a lingering result.
        """
        core = self._core
        lingered = core.linger.drop(group)
        owner = core.owners.get(group)
        if owner is None:
            return lingered
        if isinstance(owner, WorkerTask):
            owner.stop_nowait("forgotten")
        else:
            core.registry.unregister(group, owner)
        return True

    def workers(self) -> tuple[Worker[B], ...]:
        """Return every live worker, least recently used first."""
        return tuple(handle_of(task) for task in self._supervisor.workers)

    # -- checks ------------------------------------------------------------------

    def _need_a_device(self, what: str) -> None:
        if self._core.hooks is NO_DEVICE:
            raise TypeError(
                f"{what} needs a device: this persist was opened without one "
                "(open_persist()), to run wrapped functions only (persist.wrap)"
            )

    def _check_flags(self, spawn_worker: object, share: object) -> None:
        self._need_a_device("resolve()")
        if not isinstance(spawn_worker, bool):
            raise TypeError(
                f"spawn_worker must be True or False, got {type(spawn_worker).__name__}"
            )
        if not isinstance(share, bool):
            raise TypeError(f"share must be True or False, got {type(share).__name__}")
        if spawn_worker and self._grouping is Grouping.NONE:
            raise ValueError(
                "spawn_worker=True needs groups: this persist does not group requests "
                f"(await_inprogress={self.options.await_inprogress!r}), so no worker "
                "could own one"
            )

    # -- closing -----------------------------------------------------------------

    async def _aclose(self) -> None:
        """Stop every worker (``on_idle`` bounded by the grace), end every flight."""
        core = self._core
        core.closed = True
        try:
            grace = core.options.shutdown_grace
            tasks = self._supervisor.stop_all()
            with trio.CancelScope(shield=True) as scope:
                if not math.isinf(grace):
                    scope.deadline = trio.current_time() + 2 * grace
                for task in tasks:
                    await task.wait_stopped()
        finally:
            # Whatever happened above, nothing of the persist may outlive its block.
            self._runners.close()
            core.nursery.cancel_scope.cancel()
            core.events.close()
            core.throttle.flush()


async def close(persist: Persist[Any, Any, Any]) -> None:
    """Close *persist* (what leaving its block does: see `open_persist`)."""
    await persist._aclose()
