"""The context a persist's flights, workers and facade share, one level below them all.

A `Persist` is a facade over one `Core`, the way trio's channels sit over one
``MemoryChannelState``: the hooks and options, the nursery every task lives in,
the registry of owners, the event hub, the backend, and whether the persist has
closed. Beside that context it holds four small records, each with one topic:
`Counters`, `Timings` (duration histograms), `Linger` (results that keep
answering) and `Observers`. Flights and workers are handed the core, never the
persist, so nothing below the facade can reach back up into it. The one thing
they need from above, giving a request whose worker stopped to a new owner, is
the `Core.reroute` callback the facade installs.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import attrs
import trio

from .._backend import Backend, Placement, refusal_of
from .._grouping import default_group
from .._logging import Throttle, logger
from .._stats import (
    BOUNDARIES,
    DurationHistogram,
    GroupSnapshot,
    PersistDurations,
    PersistStatistics,
    group_label,
)
from .._store import RecordStore, Store, record_store
from .._text import describe, literal
from ._device import DeviceHooks
from ._events import EventHub
from ._histogram import Histogram, recent_quantiles
from ._job import OK, Job, Outcome, Owner
from ._labels import LABEL_WIDTH, default_label
from ._linger import MISS, Linger
from ._observer import Observer
from ._options import PersistOptions
from ._registry import Registry

__all__ = ["MISS", "Core", "Counters", "Observers", "Timings", "describe_owner"]

SETTLE_EVERY = 256
"""Executions between two foldings of pending duration samples (bounded memory)."""


@attrs.define(eq=False)
class Counters:
    """The persist's counters and gauges (`PersistStatistics` publishes them).

    Counters only grow; the two gauges (``in_flight``, ``waiters``) say what is
    true now.
    """

    requests: int = 0
    executions: int = 0
    remote: int = 0  # executions another process answered for us
    deduplicated: int = 0
    failures: int = 0
    crashes: int = 0
    abandoned: int = 0
    worker_timeouts: int = 0
    hook_failures: int = 0
    evictions: int = 0
    workers_started: int = 0
    activations: int = 0
    activation_failures: int = 0
    handovers: int = 0
    saves: int = 0
    save_failures: int = 0
    checkpoints: int = 0
    fenced_saves: int = 0
    in_flight: int = 0
    waiters: int = 0


@attrs.define(eq=False)
class Timings:
    """Execution and wait times in bounded memory.

    Samples are appended on the hot path and folded into the histograms every
    `SETTLE_EVERY` executions, so the samples waiting to be folded stay few.
    """

    execution: Histogram = attrs.field(factory=Histogram)
    wait: Histogram = attrs.field(factory=Histogram)
    # Samples that are an execution's time and its first caller's wait at once
    # (a new flight's caller waits exactly its execution): kept once, folded
    # into both histograms (read them through `settle`).
    both: list[float] = attrs.field(factory=list)
    # Executions left before the pending samples are folded in.
    unsettled: int = SETTLE_EVERY

    def settle(self) -> None:
        """Fold the pending samples in."""
        self.unsettled = SETTLE_EVERY
        both = self.both
        if both:
            self.execution.fold(both, self.wait)
            both.clear()
        self.execution.settle()
        self.wait.settle()

    def durations(self) -> PersistDurations:
        """Both histograms, exported at `BOUNDARIES`."""
        self.settle()

        def export(histogram: Histogram) -> DurationHistogram:
            return DurationHistogram(
                count=histogram.count,
                sum=histogram.total,
                buckets=histogram.cumulative(BOUNDARIES),
            )

        return PersistDurations(execution=export(self.execution), wait=export(self.wait))


@attrs.define(eq=False)
class Observers:
    """The observers added with `Persist.add_observer` (check ``listening`` first:
    most persists have none).

    *failed* is told about an observer that raised (it is then skipped, never
    propagated).
    """

    failed: Callable[[str, Hashable | None, BaseException], None]
    listening: list[Observer] = attrs.field(factory=list)
    # Each observer's methods, looked up when it was added (not by name per
    # call), as tuples rebuilt on each change: an observer added or removed
    # while they are told is told from the next execution on. The hot paths
    # (`Core.tell_started`, `Core.finish`, a join) loop over them in their own frame.
    on_started: tuple[Callable[..., Any], ...] = ()
    on_joined: tuple[Callable[..., Any], ...] = ()
    on_ended: tuple[Callable[..., Any], ...] = ()

    def add(self, observer: Observer) -> None:
        self.listening.append(observer)
        self._bind()

    def remove(self, observer: Observer) -> None:
        if observer in self.listening:
            self.listening.remove(observer)
            self._bind()

    def _bind(self) -> None:
        listening = self.listening
        self.on_started = tuple(_method(each, "execution_started") for each in listening)
        self.on_joined = tuple(_method(each, "joined") for each in listening)
        self.on_ended = tuple(_method(each, "execution_ended") for each in listening)

    def ended(
        self, kind: str, group: Hashable | None, job: Job, outcome: Outcome | None, seconds: float
    ) -> None:
        name = "abandoned" if outcome is None else outcome.text
        for method in self.on_ended:
            try:
                method(kind, group, job, name, seconds)
            except Exception as exc:
                self.failed("observer execution_ended", group, exc)


def _method(observer: Observer, name: str) -> Callable[..., Any]:
    """*observer*'s method *name*; one it lacks fails when called (and is counted)."""
    try:
        found: Callable[..., Any] = getattr(observer, name)
    except Exception:

        def missing(*args: Any) -> Any:
            return getattr(observer, name)(*args)

        return missing
    return found


def describe_owner(
    owner: Any,
    group: Hashable,
    queued: int,
    label: tuple[str, bool] | None = None,
    *,
    virtual: bool = False,
    activating: bool = False,
) -> GroupSnapshot:
    """The `GroupSnapshot` of *owner* (a flight or a worker) for *group*; its
    ``label`` (text, and whether the hook chose it) must be made already,
    unless *label* is given."""
    p50, p99 = recent_quantiles(owner.recent)
    text, from_hook = owner.label if label is None else label
    return GroupSnapshot(
        group=group,
        kind=owner.kind,
        listeners=owner.listeners,
        queued=queued,
        served=owner.served,
        started=owner.started,
        last_active=owner.last_active,
        busy=owner.busy,
        label=text,
        execution_p50=p50,
        execution_p99=p99,
        label_from_hook=from_hook,
        virtual=virtual,
        activating=activating,
    )


@attrs.define(eq=False, repr=False)
class Core:
    """Shared context of one persist. Internal; `Persist` is its public face.

    Everything here is touched from the persist's Trio thread only, and no
    method checkpoints.
    """

    hooks: DeviceHooks
    options: PersistOptions
    nursery: trio.Nursery
    # Gives a job whose worker stopped to its group's next owner (the facade's).
    reroute: Callable[[Job], None]
    backend: Backend | None = None
    # The backend's early refusal of new work (`Admitting.refusal`), if it has one.
    refuse: Callable[[], Exception | None] | None = attrs.field(init=False)
    # Where workers' states are saved and activated from (None: nowhere).
    store: Store | None = None
    # The same store, if it keeps records (token, applied ids): then used through them.
    records: RecordStore | None = attrs.field(init=False, default=None)
    # Where virtual workers live when the backend places them across processes
    # (None: in this process); set by the facade.
    placement: Placement | None = None
    # Which owner (a flight or a worker) holds each group.
    registry: Registry[Owner] = attrs.field(factory=Registry)
    # The registry's live mapping, read on every resolve (a dict lookup is
    # cheaper than a method call on the hot path). Changed only through registry.
    owners: Mapping[Hashable, Owner] = attrs.field(init=False)
    events: EventHub = attrs.field(factory=EventHub)
    closed: bool = False
    counters: Counters = attrs.field(factory=Counters)
    timings: Timings = attrs.field(factory=Timings)
    linger: Linger = attrs.field(init=False)
    observers: Observers = attrs.field(init=False)
    # Repeated log lines (a label hook failing per snapshot) are throttled.
    throttle: Throttle = attrs.field(factory=Throttle)
    # Tasks in `Persist.wait_quiet`, made on first use (most persists never wait).
    quiet: trio.lowlevel.ParkingLot | None = None
    # The last label hook text found fit to show as it is: the same object
    # again (a constant label) is not checked again.
    label_seen: str = ""
    now: Callable[[], float] = attrs.field(init=False)
    # The group of ``(base, request)``: the device's ``group`` hook itself, or
    # the default grouper leaving out ``ignore_keys`` (no frame of ours between).
    # Raises what the hook raises, or `TypeError` for a value the default
    # grouper cannot encode.
    group_of: Callable[[Any, Any], Hashable] = attrs.field(init=False)
    # What a worker calls for each request: the device's resolve, or with
    # durable=True the same followed by a save (set by the supervisor).
    worker_resolve: Callable[[Any, Any], Any] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.worker_resolve = self.hooks.resolve
        hook = self.hooks.group
        self.group_of = (
            hook
            if hook is not None
            else functools.partial(default_group, ignore_keys=self.options.ignore_keys)
        )
        self.owners = self.registry.as_mapping()
        self.refuse = refusal_of(self.backend)
        if self.store is not None:
            self.records = record_store(self.store)
        self.linger = Linger(self.options.linger)
        self.observers = Observers(self.hook_failed)
        # The run's clock, read directly: half the cost of trio.current_time()
        # on the hot path, and the same (virtual) time under a MockClock.
        self.now = trio.lowlevel.current_clock().current_time

    def finish(self, owner: Owner, job: Job, outcome: Outcome, began: float) -> float:
        """End one execution of *owner*'s that began at *began*: time it, tell the
        observers, count and announce its outcome. Returns the end time."""
        job.finished = now = self.now()
        elapsed = now - began
        timings = self.timings
        if job.leads:
            # Its first caller waited exactly this long and is answered now: one
            # sample for both histograms, and it waits no more (see `Job.leads`).
            timings.both.append(elapsed)
            self.counters.waiters -= 1
        else:
            timings.execution.add(elapsed)
        timings.unsettled -= 1
        if not timings.unsettled:
            timings.settle()
        if self.observers.listening:  # told from this frame: no call of ours between
            group = owner.group
            for method in self.observers.on_ended:
                try:
                    method(owner.kind, group, job, outcome.text, elapsed)
                except Exception as exc:
                    self.hook_failed("observer execution_ended", group, exc)
        if job.call is not None:  # a wrapped function times its own too
            job.call.ended(elapsed)
        if outcome is not OK or self.events.listening:  # no call when silent
            self.count_outcome(owner.kind, owner.group, job, outcome)
        return now

    def abandoned(self, owner: Owner, job: Job, began: float) -> None:
        """*job*'s execution was cancelled because every listener left."""
        if self.observers.listening:
            self.observers.ended(owner.kind, owner.group, job, None, self.now() - began)
        if job.call is not None:
            job.call.abandoned += 1
        self.count_outcome(owner.kind, owner.group, job, None)

    def count_outcome(
        self, kind: str, group: Hashable | None, job: Job, outcome: Outcome | None
    ) -> None:
        """Count how one execution of a *kind* owner ended (None: abandoned), and say so."""
        events = self.events
        if outcome is OK:
            events.emit("worker.served" if kind == "worker" else "flight.finished", group)
        elif outcome is None:
            self.counters.abandoned += 1
            events.emit(f"{kind}.cancelled", group)
        else:
            self._count_failure(kind, group, job, outcome)

    def _count_failure(self, kind: str, group: Hashable | None, job: Job, outcome: Outcome) -> None:
        counters = self.counters
        counters.failures += 1
        call = job.call
        if call is not None:
            call.failures += 1
        error = job.error
        detail = describe(error) if error is not None else ""
        self.events.emit(f"{kind}.failed", group, detail)
        if outcome is Outcome.CRASHED:
            counters.crashes += 1
            if call is not None:
                call.crashes += 1
            logger.error(
                "a %s of group %s crashed: %s",
                kind,
                group_label(group),
                detail,
                exc_info=error.__cause__ if error is not None else None,
            )
        else:
            logger.debug("an execution of group %s failed: %s", group_label(group), detail)

    def hook_failed(
        self, hook: str, group: Hashable | None, error: BaseException, *, throttled: bool = False
    ) -> None:
        """A device hook raised: count it, say so, and log it with its traceback.

        With *throttled* (a hook that can fail at the rate of snapshots), the
        first failure is logged in full and later ones at most once a minute.
        """
        self.counters.hook_failures += 1
        self.events.emit("hook.failed", group, f"{hook}: {describe(error)}")
        message = "the device's %s hook failed for group %s: %s"
        args = (hook, group_label(group), describe(error))
        if throttled:
            self.throttle.log(logging.ERROR, f"{hook} hook", message, *args, exc_info=error)
        else:
            logger.error(message, *args, exc_info=error)

    def label_of(self, group: Hashable | None, base: Any, request: Any) -> tuple[str, bool]:
        """What an operator sees for *group*, and whether the ``label`` hook chose it.

        Without a hook (or when it fails: counted, and logged at most once a
        minute), a name a group hook chose or a bounded rendering of the
        request (the state, for a worker: *request* None). Never raises.
        """
        hook = self.hooks.label
        if hook is not None:
            text = self._hook_label(hook, group, base, request)
            if text is not None:
                return text, True
        return default_label(group, base if request is None else request), False

    def _hook_label(
        self, hook: Callable[[Any, Any], Any], group: Hashable | None, base: Any, request: Any
    ) -> str | None:
        """The ``label`` hook's text for *request*, fit to show; None if it failed."""
        try:
            text = hook(base, request)
        except Exception as exc:
            self.hook_failed("label", group, exc, throttled=True)
            return None
        if type(text) is str and len(text) <= LABEL_WIDTH and text.isprintable():
            # Nothing to cut or replace (`literal` replaces only characters
            # `str.isprintable` refuses): no regex per label.
            return text
        return self._fit_label(group, text)

    def _fit_label(self, group: Hashable | None, text: Any) -> str | None:
        """A label hook's *text* cut and made printable; None (counted) if not a str."""
        if not isinstance(text, str):
            error = TypeError(f"label() returned a {type(text).__name__}, not a str")
            self.hook_failed("label", group, error, throttled=True)
            return None
        # A str subclass's own methods (``__len__``, ``__getitem__``) are the
        # user's code: its plain text is taken first, and read from then on.
        return literal(str.__str__(text), LABEL_WIDTH)

    def tell_started(
        self, owner: Owner, base: Any, job: Job, label: tuple[str, bool] | None
    ) -> None:
        """Tell the observers *job*'s execution by *owner* starts (check
        ``observers.listening`` first), named by `observer_label`. One frame of
        ours calls them (a new flight's own frame tells them itself:
        `Flight._begin`).
        """
        text = self.observer_label(owner, base, job, label)
        group = owner.group
        for method in self.observers.on_started:
            try:
                method(owner.kind, group, text, job)
            except Exception as exc:
                self.hook_failed("observer execution_started", group, exc)

    def observer_label(
        self, owner: Owner, base: Any, job: Job, label: tuple[str, bool] | None
    ) -> str:
        """What may name *job*'s execution by *owner* outside the process, as
        observers are told it: a wrapped function's name, or the ``label``
        hook's text (*label*: the owner's own for this job, if made already);
        never a rendering of the request (``""`` then). No label record is made.
        """
        if job.call is not None:
            return job.call.name
        if label is not None:
            return label[0] if label[1] else ""
        hook = self.hooks.label
        if hook is None:
            return ""  # the default label is never shown outside: not made
        request = None if base is not job.base else job.request
        try:
            text = hook(base, request)
        except Exception as exc:
            return self.label_failed(owner.group, exc)
        return text if text is self.label_seen else self.told_label(owner.group, text)

    def label_failed(self, group: Hashable | None, error: Exception) -> str:
        """The ``label`` hook raised *error* for observers: counted, logged at
        most once a minute; they are told ``""``."""
        self.hook_failed("label", group, error, throttled=True)
        return ""

    def told_label(self, group: Hashable | None, text: Any) -> str:
        """The ``label`` hook's *text* (not the last one seen) as observers are
        told it: fit to show, or ``""`` when it is not a str (counted)."""
        if type(text) is str and len(text) <= LABEL_WIDTH and text.isprintable():
            self.label_seen = text  # the next identical object is known at once
            return text
        return self._fit_label(group, text) or ""

    def maybe_quiet(self) -> None:
        """Wake `Persist.wait_quiet` callers if nothing runs and nobody waits now."""
        counters = self.counters
        if self.quiet is not None and not counters.in_flight and not counters.waiters:
            self.quiet.unpark_all()

    def statistics(self, workers: int) -> PersistStatistics:
        """The counters and gauges as a frozen record (*workers*: alive now)."""
        counters = self.counters
        self.timings.settle()
        execution, wait = self.timings.execution, self.timings.wait
        return PersistStatistics(
            requests=counters.requests,
            executions=counters.executions,
            remote=counters.remote,
            deduplicated=counters.deduplicated,
            failures=counters.failures,
            crashes=counters.crashes,
            abandoned=counters.abandoned,
            worker_timeouts=counters.worker_timeouts,
            hook_failures=counters.hook_failures,
            evictions=counters.evictions,
            workers_started=counters.workers_started,
            activations=counters.activations,
            activation_failures=counters.activation_failures,
            handovers=counters.handovers,
            saves=counters.saves,
            save_failures=counters.save_failures,
            checkpoints=counters.checkpoints,
            fenced_saves=counters.fenced_saves,
            in_flight=counters.in_flight,
            waiters=counters.waiters,
            workers=workers,
            groups=len(self.owners),
            execution_p50=execution.quantile(0.5),
            execution_p90=execution.quantile(0.9),
            execution_p99=execution.quantile(0.99),
            execution_max=execution.maximum,
            wait_p50=wait.quantile(0.5),
            wait_p90=wait.quantile(0.9),
            wait_p99=wait.quantile(0.99),
            wait_max=wait.maximum,
        )
