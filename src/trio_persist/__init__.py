"""trio-persist: deduplicated execution and persistent workers for Trio.

Identical in-flight requests share one execution; long-lived workers keep a
group's state in memory and serve its requests; statistics, snapshots, an event
stream and a monitor show all of it. The implementation lives in private
modules; this module is the public API, re-exported once.
"""

from ._core._deduplicated import Deduplicated, DeduplicatedMethod, deduplicated
from ._core._device import Device
from ._core._events import EventSubscription, PersistEvent
from ._core._handle import Worker, WorkerRequest
from ._core._observer import Execution, Observer
from ._core._open import open_persist
from ._core._options import PersistOptions
from ._core._persist import Persist
from ._core._registry import Registry, RegistryStatistics, RegistryView
from ._core._worker import WorkerStatistics
from ._exceptions import (
    ActivationFailed,
    BackendUnavailable,
    CorruptResult,
    GroupTaken,
    InfiniteRecursion,
    LeaderDied,
    NoWorker,
    PersistClosed,
    PersistError,
    RemoteError,
    SaveFailed,
    StaleOwner,
)
from ._grouping import MAX_DEPTH, canonical_encoding, default_group
from ._stats import (
    DurationHistogram,
    FunctionStatistics,
    GroupSnapshot,
    Observed,
    PersistDurations,
    PersistStatistics,
)

__all__ = [
    "MAX_DEPTH",
    "ActivationFailed",
    "BackendUnavailable",
    "CorruptResult",
    "Deduplicated",
    "DeduplicatedMethod",
    "Device",
    "DurationHistogram",
    "EventSubscription",
    "Execution",
    "FunctionStatistics",
    "GroupSnapshot",
    "GroupTaken",
    "InfiniteRecursion",
    "LeaderDied",
    "NoWorker",
    "Observed",
    "Observer",
    "Persist",
    "PersistClosed",
    "PersistDurations",
    "PersistError",
    "PersistEvent",
    "PersistOptions",
    "PersistStatistics",
    "Registry",
    "RegistryStatistics",
    "RegistryView",
    "RemoteError",
    "SaveFailed",
    "StaleOwner",
    "Worker",
    "WorkerRequest",
    "WorkerStatistics",
    "canonical_encoding",
    "deduplicated",
    "default_group",
    "open_persist",
]

__version__ = "0.1.0"


def _fixup_module_metadata() -> None:
    # As trio does: tracebacks and reprs say trio_persist.X, not trio_persist._x.X.
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("trio_persist."):
            obj.__module__ = __name__


_fixup_module_metadata()
del _fixup_module_metadata
