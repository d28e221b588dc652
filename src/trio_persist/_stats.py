"""Frozen records that describe a persist: its statistics and its groups.

They are plain values, safe to keep, compare, and send across a socket
(`to_json` gives the monitor's frame representation). Nothing in here reads
live state; `Persist.statistics` and `Persist.snapshot` build them.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Protocol

import attrs

from ._text import cut, safe_repr

__all__ = [
    "BOUNDARIES",
    "DurationHistogram",
    "FunctionStatistics",
    "GroupSnapshot",
    "Observed",
    "PersistDurations",
    "PersistStatistics",
    "group_label",
]


@attrs.frozen
class PersistStatistics:
    """Counters of a `Persist`, as returned by `Persist.statistics`.

    Every counter only grows; the gauges (``in_flight``, ``waiters``,
    ``workers``, ``groups``) say what is true now.
    """

    requests: int
    """Calls to `Persist.resolve` that got past argument checks."""
    executions: int
    """Device calls started here (by flights, workers and direct executions)."""
    deduplicated: int
    """Calls answered by an execution that another call started."""
    failures: int
    """Executions that ended with an exception (crashes included)."""
    crashes: int
    """Executions that crashed with a non-`Exception` `BaseException`."""
    abandoned: int
    """Executions cancelled because every listener left."""
    worker_timeouts: int
    """Workers that stopped after their idle timeout."""
    hook_failures: int
    """Device hooks (``on_idle``, ``restore``, ``answers``, ...) that raised."""
    evictions: int
    """Idle workers stopped to make room under ``max_workers``."""
    workers_started: int
    """Workers started (explicitly, by ``spawn_worker`` or by recovery)."""
    in_flight: int
    """Flights running now (grouped or not)."""
    waiters: int
    """Callers waiting for an outcome now."""
    workers: int
    """Workers alive now."""
    groups: int
    """Groups registered now (flights and workers)."""
    execution_p50: float = 0.0
    """Median seconds a device call took (all executions so far, within ~3%)."""
    execution_p90: float = 0.0
    """90th percentile of execution time, in seconds."""
    execution_p99: float = 0.0
    """99th percentile of execution time, in seconds."""
    execution_max: float = 0.0
    """The longest execution, in seconds."""
    wait_p50: float = 0.0
    """Median seconds from a caller's arrival to its answer."""
    wait_p90: float = 0.0
    """90th percentile of wait time, in seconds."""
    wait_p99: float = 0.0
    """99th percentile of wait time, in seconds."""
    wait_max: float = 0.0
    """The longest wait, in seconds."""
    remote: int = 0
    """Executions answered by another process through the backend (the device did
    not run here; not counted in ``executions``)."""
    activations: int = 0
    """Workers activated with a state loaded from the store, the ``restore`` hook
    or a ``default()`` (`Persist.ask`, `Persist.get_worker`, recovery)."""
    activation_failures: int = 0
    """Activations that failed (`ActivationFailed`); nothing was started."""
    handovers: int = 0
    """Workers that took over a stopping worker's live state and queue, instead of
    loading it (see docs/virtual-workers.md)."""
    saves: int = 0
    """States saved through the store (at a stop, a checkpoint, or durably)."""
    save_failures: int = 0
    """Saves through the store that failed (also counted in ``hook_failures``)."""
    checkpoints: int = 0
    """Saves made on ``checkpoint_interval`` while a worker lived (also in ``saves``)."""

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (a monitor frame's ``statistics``)."""
        return attrs.asdict(self)


def group_label(group: Hashable | None) -> str:
    """A short text for a group: digests and strings as they are, others' repr.

    Never raises: a ``repr`` that fails gives a placeholder. Long text is cut.
    """
    if isinstance(group, str):
        return cut(group, 200)
    return safe_repr(group)


@attrs.frozen
class GroupSnapshot:
    """What one group's owner is doing, as returned by `Persist.snapshot`."""

    group: Hashable
    """The group's name."""
    kind: str
    """``"flight"`` or ``"worker"``."""
    listeners: int
    """Callers waiting on this group now."""
    queued: int
    """Executions (or worker requests) waiting behind the current one."""
    served: int
    """Executions this owner has finished."""
    started: float
    """`trio.current_time` when the owner started."""
    last_active: float
    """`trio.current_time` when it last started or finished an execution."""
    busy: bool = False
    """Whether an execution runs now."""
    label: str = ""
    """What an operator sees for the group: the device's ``label`` hook, or a
    short rendering of its request (see `Persist.snapshot`)."""
    execution_p50: float = 0.0
    """Median seconds of this owner's recent executions (its last 64)."""
    execution_p99: float = 0.0
    """99th percentile of this owner's recent executions, in seconds."""
    label_from_hook: bool = False
    """Whether `label` is what the device's ``label`` hook returned. Only such a
    label leaves the process (Redis heartbeats, spans); otherwise the group is
    named there by its digest, so nothing of a request is shown outside."""
    virtual: bool = False
    """Whether it is a virtual worker: activated by `Persist.ask` or
    `Persist.get_worker`, it keeps its group for life."""
    activating: bool = False
    """Whether the worker is still loading its state (requests queue meanwhile)."""

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (one group of a monitor frame's ``snapshot``),
        the group as text."""
        data = attrs.asdict(self)
        data["group"] = group_label(self.group)
        return data


BOUNDARIES = (
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""Seconds at which duration histograms are exported (Prometheus-style ``le``)."""


@attrs.frozen
class DurationHistogram:
    """A histogram of durations, as `Persist.durations` returns it."""

    count: int
    """Samples recorded."""
    sum: float
    """Their total, in seconds."""
    buckets: tuple[tuple[float, int], ...]
    """``(le, samples at most le seconds)`` for each of `BOUNDARIES`, cumulative."""


@attrs.frozen
class PersistDurations:
    """Execution and wait times of a persist, as `Persist.durations` returns them."""

    execution: DurationHistogram
    """Device calls, from start to outcome."""
    wait: DurationHistogram
    """Callers, from arrival to answer."""


@attrs.frozen
class FunctionStatistics:
    """Counts of one wrapped function (`Persist.wrap`, `trio_persist.deduplicated`).

    As `Persist.function_statistics` and a decorated function's ``statistics()``
    return them. Every counter only grows while the function is registered (a
    name released and registered again starts from zero).
    """

    name: str
    """The function's name: its module and qualified name, or the ``name=`` it was given."""
    requests: int
    """Calls that got past argument checks."""
    executions: int
    """Calls of the function started here."""
    remote: int
    """Executions another process answered through the backend."""
    deduplicated: int
    """Calls answered by an execution (or a lingering result) another call started."""
    failures: int
    """Executions that ended with an exception (crashes included)."""
    crashes: int
    """Executions that crashed with a non-`Exception` `BaseException`."""
    abandoned: int
    """Executions cancelled because every caller left."""
    execution_p50: float
    """Median seconds an execution took (within ~3%)."""
    execution_p99: float
    """99th percentile of execution time, in seconds."""
    execution_max: float
    """The longest execution, in seconds."""
    execution: DurationHistogram = attrs.field(repr=False)
    """Execution times, at `BOUNDARIES` (for metrics exporters)."""


class Observed(Protocol):
    """What observation reads: a persist, or anything shaped like one.

    The monitor server, frames and the Redis heartbeat read only these, so
    they depend on the records in this module and never on the persist.
    """

    @property
    def name(self) -> str:
        """The device's name."""
        ...

    @property
    def qualified_name(self) -> str:
        """The device's module-qualified name, which tells two applications'
        devices of one name apart (the Redis backend's default namespace)."""
        ...

    def statistics(self) -> PersistStatistics:
        """Its counters and gauges now (`Persist.statistics`)."""
        ...

    def snapshot(self) -> tuple[GroupSnapshot, ...]:
        """One record per group now (`Persist.snapshot`)."""
        ...
