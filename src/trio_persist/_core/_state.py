"""The state a persist's flights, workers and facade share, one level below them all.

A `Persist` is a facade over one `Core`, the way trio's channels sit over one
``MemoryChannelState``: the hooks and options, the nursery every task lives in,
the registry of owners, the event hub, the backend, the counters, and whether
the persist has closed. Flights and workers are handed the core, never the
persist, so nothing below the facade can reach back up into it. The one thing
they need from above, giving a request whose worker stopped to a new owner, is
the `Core.reroute` callback the facade installs.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any

import attrs
import trio

from .._backend import Backend
from .._logging import logger
from .._stats import (
    BOUNDARIES,
    DurationHistogram,
    PersistDurations,
    PersistStatistics,
    group_label,
)
from .._text import describe, literal, safe_repr
from ._device import DeviceHooks
from ._events import EventHub
from ._histogram import Histogram
from ._job import Job, Outcome
from ._observer import Observer
from ._options import PersistOptions
from ._registry import Registry

__all__ = ["LINGER_LIMIT", "MISS", "Core", "Observer", "Resolve"]

LABEL_WIDTH = 80
"""The longest label shown for a group."""

_DIGEST = re.compile(r"[0-9a-f]{32}")

SETTLE_EVERY = 256
"""Executions between two foldings of pending duration samples (bounded memory)."""

RECENT = 64
"""How many recent execution times each flight or worker keeps (for its snapshot)."""

LINGER_LIMIT = 65536
"""The most results that linger at once (the oldest go first)."""

MISS: Any = object()
"""No lingering result (and: a lingering result that answers any request of its group)."""

Resolve = Callable[[Any, Any], Awaitable[Any]]


def _no_reroute(job: Job) -> None:  # pragma: no cover - replaced by the facade at once
    raise AssertionError("Core.reroute was not installed")


@attrs.define(eq=False, repr=False)
class Core:
    """Shared state of one persist. Internal; `Persist` is its public face.

    Counters only grow; gauges (``in_flight``, ``waiting``) say what is true
    now. Everything here is touched from the persist's Trio thread only, and
    no method checkpoints.
    """

    hooks: DeviceHooks
    options: PersistOptions
    nursery: trio.Nursery
    backend: Backend | None = None
    # Which owner holds each group: a flight, or a worker's public handle.
    registry: Registry[Any] = attrs.field(factory=Registry)
    # The registry's live mapping, read on every resolve (a dict lookup is
    # cheaper than a method call on the hot path). Changed only through registry.
    owners: Mapping[Hashable, Any] = attrs.field(init=False)
    events: EventHub = attrs.field(factory=EventHub)
    reroute: Callable[[Job], None] = _no_reroute
    closed: bool = False
    requests: int = 0
    executions: int = 0
    remote: int = 0  # executions another process answered (moved out of executions)
    deduplicated: int = 0
    failures: int = 0
    crashes: int = 0
    abandoned: int = 0
    worker_timeouts: int = 0
    hook_failures: int = 0
    evictions: int = 0
    workers_started: int = 0
    in_flight: int = 0
    waiting: int = 0
    # Tasks in `Persist.wait_quiet`, made on first use (most persists never wait).
    quiet: trio.lowlevel.ParkingLot | None = None
    # Results lingering after their flight: group -> (request, value, expiry),
    # in order of expiry (the linger is one constant). Empty unless linger > 0.
    lingering: dict[Hashable, tuple[Any, Any, float]] = attrs.field(factory=dict)
    observers: list[Observer] = attrs.field(factory=list)
    execution_time: Histogram = attrs.field(factory=Histogram)
    wait_time: Histogram = attrs.field(factory=Histogram)
    # Executions left before the pending duration samples are folded in.
    unsettled: int = SETTLE_EVERY
    now: Callable[[], float] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.owners = self.registry.as_mapping()
        # The run's clock, read directly: half the cost of trio.current_time()
        # on the hot path, and the same (virtual) time under a MockClock.
        self.now = trio.lowlevel.current_clock().current_time

    def resolver(
        self, group: Hashable, request: Any, group_is_request: bool, resolve: Resolve
    ) -> Resolve:
        """What one execution of *group* runs: *resolve*, through the backend if any."""
        backend = self.backend
        if backend is None:
            return resolve
        linger = self.options.linger

        async def across_processes(base: Any, request: Any) -> Any:
            # The key is computed here, inside the job: a request the backend
            # cannot name fails (or runs locally) for its own callers only.
            key = backend.key_of(group, request, group_is_request)
            if key is None:
                return await resolve(base, request)
            ran = False

            async def here(base: Any, request: Any) -> Any:
                nonlocal ran
                ran = True
                return await resolve(base, request)

            try:
                return await backend.run(key, base, request, here, linger=linger)
            finally:
                if not ran:  # another process ran it: not an execution of ours
                    self.executions -= 1
                    self.remote += 1

        return across_processes

    def count_outcome(
        self, kind: str, group: Hashable | None, job: Job, outcome: Outcome | None
    ) -> None:
        """Count how one execution of a *kind* owner ended (None: abandoned), and say so."""
        events = self.events
        if outcome is Outcome.OK:
            events.emit("worker.served" if kind == "worker" else "flight.finished", group)
        elif outcome is None:
            self.abandoned += 1
            events.emit(f"{kind}.cancelled", group)
        else:
            self.failures += 1
            if outcome is Outcome.CRASHED:
                self.crashes += 1
            error = job.error
            detail = describe(error) if error is not None else ""
            events.emit(f"{kind}.failed", group, detail)
            if outcome is Outcome.CRASHED:
                logger.error(
                    "a %s of group %s crashed: %s",
                    kind,
                    group_label(group),
                    detail,
                    exc_info=error.__cause__ if error is not None else None,
                )
            else:
                logger.debug("an execution of group %s failed: %s", group_label(group), detail)

    def hook_failed(self, hook: str, group: Hashable | None, error: BaseException) -> None:
        """A device hook raised: count it, say so, and log it with its traceback."""
        self.hook_failures += 1
        detail = f"{hook}: {describe(error)}"
        self.events.emit("hook.failed", group, detail)
        logger.error(
            "the device's %s hook failed for group %s: %s",
            hook,
            group_label(group),
            describe(error),
            exc_info=error,
        )

    def linger(self, group: Hashable, request: Any, value: Any) -> None:
        """Keep a successful result answering identical calls for ``options.linger``."""
        seconds = self.options.linger
        if not seconds:
            return
        now = trio.current_time()
        lingering = self.lingering
        lingering.pop(group, None)  # re-inserted last: the order stays by expiry
        lingering[group] = (request, value, now + seconds)
        # Bounded: expired entries go now, and at most LINGER_LIMIT stay.
        while lingering:
            first = next(iter(lingering))
            if lingering[first][2] > now and len(lingering) <= LINGER_LIMIT:
                break
            del lingering[first]

    def lingered(self, group: Hashable, request: Any, same: Callable[[Any, Any], bool]) -> Any:
        """A result still lingering for *group* and *request*, or `MISS`."""
        entry = self.lingering.get(group)
        if entry is None:
            return MISS
        stored, value, expiry = entry
        if expiry <= trio.current_time():
            del self.lingering[group]
            return MISS
        if stored is not MISS and not same(stored, request):
            return MISS
        return value

    def label_of(self, group: Hashable, base: Any, request: Any) -> str:
        """What an operator sees for *group*: the ``label`` hook's text, or a short
        rendering of the request (the state, for a worker), or a readable group.

        Never raises: a failing hook is counted and logged, and the default used.
        """
        text = self.hook_label(group, base, request)
        if text is not None:
            return text
        if isinstance(group, str) and not _DIGEST.fullmatch(group):
            return literal(group, LABEL_WIDTH)  # a name a group hook chose
        return literal(safe_repr(base if request is None else request, LABEL_WIDTH), LABEL_WIDTH)

    def hook_label(self, group: Hashable | None, base: Any, request: Any) -> str | None:
        """The device's ``label`` hook's text for *group*, or None (no hook, or it failed).

        Only this text may name a group outside the process (spans, heartbeats).
        """
        hook = self.hooks.label
        if hook is None:
            return None
        try:
            text = hook(base, request)
            if not isinstance(text, str):
                raise TypeError(f"label() returned a {type(text).__name__}, not a str")
        except Exception as exc:
            self.hook_failed("label", group, exc)
            return None
        return literal(text, LABEL_WIDTH)

    def settle_durations(self) -> None:
        """Fold the pending duration samples in (every `SETTLE_EVERY` executions)."""
        self.unsettled = SETTLE_EVERY
        self.execution_time.settle()
        self.wait_time.settle()

    def durations(self) -> PersistDurations:
        """The duration histograms, exported at `BOUNDARIES`."""

        def export(histogram: Histogram) -> DurationHistogram:
            return DurationHistogram(
                count=histogram.count,
                sum=histogram.total,
                buckets=histogram.cumulative(BOUNDARIES),
            )

        return PersistDurations(execution=export(self.execution_time), wait=export(self.wait_time))

    def observe_start(self, kind: str, group: Hashable | None, job: Job) -> None:
        # What may leave the process: a wrapped function's name, or the label
        # hook's text; never a rendering of the request.
        if job.call is not None:
            label = job.call.__name__
        else:
            label = self.hook_label(group, job.base, job.request) or ""
        for observer in tuple(self.observers):
            self._tell(observer, "execution_started", group, kind, group, label, job)

    def observe_join(self, kind: str, group: Hashable | None, job: Job) -> None:
        for observer in tuple(self.observers):
            self._tell(observer, "joined", group, kind, group, job)

    def observe_end(
        self, kind: str, group: Hashable | None, job: Job, outcome: Outcome | None, seconds: float
    ) -> None:
        name = "abandoned" if outcome is None else outcome.value
        for observer in tuple(self.observers):
            self._tell(observer, "execution_ended", group, kind, group, job, name, seconds)

    def _tell(self, observer: Observer, method: str, group: Hashable | None, *args: Any) -> None:
        try:
            getattr(observer, method)(*args)
        except Exception as exc:
            self.hook_failed(f"observer {method}", group, exc)

    def maybe_quiet(self) -> None:
        """Wake `Persist.wait_quiet` callers if nothing runs and nobody waits now."""
        if self.quiet is not None and not self.in_flight and not self.waiting:
            self.quiet.unpark_all()

    def statistics(self, workers: int) -> PersistStatistics:
        """The counters and gauges as a frozen record (*workers*: alive now)."""
        return PersistStatistics(
            requests=self.requests,
            executions=self.executions,
            remote=self.remote,
            deduplicated=self.deduplicated,
            failures=self.failures,
            crashes=self.crashes,
            abandoned=self.abandoned,
            worker_timeouts=self.worker_timeouts,
            hook_failures=self.hook_failures,
            evictions=self.evictions,
            workers_started=self.workers_started,
            in_flight=self.in_flight,
            waiters=self.waiting,
            workers=workers,
            groups=len(self.owners),
            execution_p50=self.execution_time.quantile(0.5),
            execution_p90=self.execution_time.quantile(0.9),
            execution_p99=self.execution_time.quantile(0.99),
            execution_max=self.execution_time.maximum,
            wait_p50=self.wait_time.quantile(0.5),
            wait_p90=self.wait_time.quantile(0.9),
            wait_p99=self.wait_time.quantile(0.99),
            wait_max=self.wait_time.maximum,
        )
