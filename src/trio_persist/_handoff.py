"""Records taken on a persist's Trio thread for readers on other threads.

Exporters are read from threads of their own: Prometheus scrapes from its HTTP
server's thread, OpenTelemetry collects from its reader's thread. The persist's
counters and histograms belong to its Trio thread and are changed there without
locks, so another thread must never read them: a histogram folded from two
threads at once loses samples, or raises in the persist. A `Handoff` instead
asks the Trio thread to take a frozen `Reading` and hands the reader that: the
reader never touches a live structure, and every figure of one reading comes
from the same instant.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ._stats import FunctionStatistics, PersistDurations, PersistStatistics

__all__ = ["WAIT", "Handoff", "Reading", "take_reading"]

WAIT = 2.0
"""Seconds a reader on another thread waits for the Trio thread; past that (the
loop is stuck, or the run has ended) it gets the last reading taken."""


@attrs.frozen
class Reading:
    """Everything an exporter shows, taken at one instant on the Trio thread."""

    name: str
    statistics: PersistStatistics
    durations: PersistDurations
    backend: Any = None
    """The backend's ``statistics()`` record (an attrs record), or None."""
    functions: tuple[FunctionStatistics, ...] = ()
    """Each wrapped function's counts (``Persist.function_statistics``)."""


def take_reading(persist: Any) -> Reading:
    """Read *persist* now: its name, statistics, durations, its backend's record
    and its wrapped functions' counts.

    Call it on the persist's Trio thread only (it reads live structures).
    """
    backend = getattr(persist, "backend", None)
    backend_statistics = getattr(backend, "statistics", None)
    function_statistics: Any = getattr(persist, "function_statistics", None)
    functions: tuple[FunctionStatistics, ...] = (
        () if function_statistics is None else function_statistics()
    )
    return Reading(
        name=persist.name,
        statistics=persist.statistics(),
        durations=persist.durations(),
        backend=backend_statistics() if callable(backend_statistics) else None,
        functions=functions,
    )


def _current_token() -> trio.lowlevel.TrioToken | None:
    try:
        return trio.lowlevel.current_trio_token()
    except RuntimeError:
        return None  # not in a Trio run on this thread


@attrs.define(eq=False)
class Handoff:
    """Readings of one persist, taken on its Trio thread whoever asks.

    Create it on the persist's Trio thread (it remembers that run). `read`
    from that thread takes a reading at once; from any other thread it asks
    the Trio thread for one and waits at most `WAIT` seconds for it.
    """

    take: Callable[[], Reading]
    token: trio.lowlevel.TrioToken = attrs.field(init=False)
    last: Reading | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        token = _current_token()
        if token is None:
            raise RuntimeError(
                "create the exporter inside the persist's trio.run (after open_persist): "
                "it reads the persist on that run's thread"
            )
        self.token = token

    def read(self) -> Reading | None:
        """A reading taken now on the Trio thread; the last one if it cannot be had.

        None only if the Trio thread never answered (it was stuck, or the run
        ended, before the first reading).
        """
        if _current_token() is self.token:
            return self._take()
        done = threading.Event()
        failed: list[Exception] = []

        def on_trio_thread() -> None:
            # Nothing may escape a run_sync_soon callback: it would crash the run.
            try:
                self._take()
            except Exception as exc:
                failed.append(exc)
            finally:
                done.set()

        try:
            self.token.run_sync_soon(on_trio_thread)
        except trio.RunFinishedError:
            return self.last
        if done.wait(WAIT) and failed:
            raise failed[0]  # in the reader's thread: the scrape fails, not the persist
        return self.last

    def _take(self) -> Reading:
        # Only the Trio thread assigns `last`; readers elsewhere read a frozen record.
        self.last = reading = self.take()
        return reading
