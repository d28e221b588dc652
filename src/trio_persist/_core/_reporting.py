"""What a persist tells about itself: `Reporting`, a base class of `Persist`.

Statistics, durations, snapshots, events, observers, the monitor's socket, and
the door check: reads of the persist's `Core` and supervisor, no state of its
own (`Persist` declares and sets what it uses), between the facade and its
wrapped functions (`Wrapping`). A slot-less base: a call pays no extra frame.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable

import trio

from .._monitor import serve_monitor
from .._stats import FunctionStatistics, GroupSnapshot, PersistDurations, PersistStatistics
from ._events import EventSubscription
from ._observer import Observer
from ._state import Core
from ._supervisor import Supervisor
from ._wrapped import WrappedFunction
from ._wrapping import Wrapping

__all__ = ["Reporting"]


class Reporting(Wrapping):
    """The reporting half of `Persist`: what it tells about itself."""

    __slots__ = ()

    # What `Persist` declares and sets.
    _core: Core
    _supervisor: Supervisor
    _wrapped: weakref.WeakValueDictionary[str, WrappedFunction]
    # The backend's door check (`Admitting.overloaded`), if it has one.
    _backend_overloaded: Callable[[], bool] | None

    @property
    def name(self) -> str:
        """The device's name (its qualified name), as the monitor shows it."""
        return self._core.hooks.name

    @property
    def qualified_name(self) -> str:
        """The device's module-qualified name, ``module.name``.

        What tells apart two applications whose devices share a name: a
        backend's default namespace is made from it.
        """
        hooks = self._core.hooks
        return f"{hooks.module}.{hooks.name}" if hooks.module else hooks.name

    def function_statistics(self) -> tuple[FunctionStatistics, ...]:
        """Return the counts of every function wrapped now (`wrap`, and
        `trio_persist.deduplicated` in the persist it runs in), by name.

        A function's counts go when its name is released.
        """
        functions = sorted(self._wrapped.items())
        return tuple(function.statistics() for _, function in functions)

    def add_observer(self, observer: Observer) -> None:
        """Tell *observer* about every execution from now on (for instrumentation).

        See `trio_persist.opentelemetry` for one. Costs nothing without observers.
        """
        self._core.observers.add(observer)

    def remove_observer(self, observer: Observer) -> None:
        """Stop telling *observer* (added with `add_observer`)."""
        self._core.observers.remove(observer)

    async def wait_quiet(self) -> None:
        """Wait until no flight runs and no caller waits (workers may live on).

        Always a checkpoint; it never polls. Useful in tests, and before a
        graceful shutdown.
        """
        core = self._core
        await trio.lowlevel.checkpoint()
        while core.counters.in_flight or core.counters.waiters:
            if core.quiet is None:
                core.quiet = trio.lowlevel.ParkingLot()
            await core.quiet.park()

    def overloaded(self) -> bool:
        """Whether new work would now be refused for load, or wait for room:
        the door check a service asks before it spends anything on a request
        (docs/redis.md, "Overload").

        Synchronous, O(1), never a checkpoint, and without side effects:
        nothing is counted and nobody is let in, so an accept loop can answer
        "busy" before it starts a task or reads a body. True while the backend
        would refuse a new call at its door (its line for a slot is long:
        `trio_persist.redis.RedisBackend.overloaded`), or while ``max_workers``
        is full twice over (workers saving after a stop included), so that a
        worker activated now would wait for one to end. A persist without a
        backend and without ``max_workers`` is never overloaded, and neither
        is a closed one (its calls raise `PersistClosed`).

        Coarse by design: it does not know the request. A call that would join
        an execution in flight here, be answered by a lingering result, or
        not need a new worker (in one process, a flight, or an ``ask`` to a
        live worker) is served at once even while this says True.
        """
        if self._core.closed:
            return False
        check = self._backend_overloaded
        return (check is not None and check()) or self._supervisor.crowded

    def subscribe(self, max_buffer: int = 256) -> EventSubscription:
        """Subscribe to this persist's events.

        Use the result as a ``with`` block and iterate it. Up to *max_buffer*
        events wait for a slow subscriber; beyond that they are dropped (and
        counted), never slowing a flight or a worker.
        """
        return self._core.events.subscribe(max_buffer)

    async def serve_monitor(
        self,
        path: str | os.PathLike[str],
        *,
        interval: float = 1.0,
        max_groups: int = 200,
        max_clients: int = 64,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve this persist's frames on a Unix socket, for ``trio-persist monitor``.

        Start it with ``await nursery.start(persist.serve_monitor, path)``. The
        socket is created with mode 0600 and is read-only: each client gets a
        frame (newline-delimited JSON with ``"version"``, ``"statistics"`` and
        ``"snapshot"``) as soon as it connects, then every *interval* seconds.
        One frame is built per interval whatever the number of clients; at
        most *max_clients* are served (one more is refused with a line saying
        so); *max_groups* of the busiest groups go in each frame. A socket
        file left by a killed process is replaced; the file is removed when
        the server is cancelled, if it is still this server's.

        Raises:
            TypeError, ValueError: an option is wrong (the message names it).
            FileExistsError: *path* is a file, or a socket in use.
            FileNotFoundError, PermissionError: its directory is missing or not
                writable.
        """
        await serve_monitor(
            self,
            path,
            interval=interval,
            max_groups=max_groups,
            max_clients=max_clients,
            task_status=task_status,
        )

    def statistics(self) -> PersistStatistics:
        """Return a frozen snapshot of this persist's counters and gauges."""
        return self._core.statistics(workers=len(self._supervisor.workers))

    def durations(self) -> PersistDurations:
        """Return the execution and wait-time histograms (for metrics exporters).

        `statistics` has their quantiles; this has their buckets, cumulative at
        fixed boundaries from 0.1 ms to 60 s, as Prometheus and OpenTelemetry
        histograms want them.
        """
        return self._core.timings.durations()

    def snapshot(self) -> tuple[GroupSnapshot, ...]:
        """Return one frozen record per registered group, in registration order.

        Empty when all is quiet and no worker lives.
        """
        owners = self._core.owners
        return tuple(owner.describe(group) for group, owner in owners.items())
