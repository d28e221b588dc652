"""The ``trio_persist`` logger: what an operator must see, and never a flood of it.

The library installs no handler (configure it like any stdlib logger; see
docs/monitor.md). It logs hook failures and worker crashes at ERROR with the
traceback, and never logs an ordinary request error, which its callers
receive, above DEBUG.

Anything that can repeat at the rate of requests (a failing ``label`` hook,
garbage on a Redis channel) goes through a `Throttle`: the first occurrence of
each kind is logged in full, with its traceback; later ones are only counted,
and at most one summary line per kind and interval says how many there were.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import attrs
import trio

__all__ = ["SUMMARY_INTERVAL", "Throttle", "logger"]

logger = logging.getLogger("trio_persist")

SUMMARY_INTERVAL = 60.0
"""Seconds between two summary lines of one kind of repeated event."""


def _now() -> float:
    try:
        return trio.current_time()
    except RuntimeError:  # outside a Trio run (a thread, a finaliser)
        return time.monotonic()


@attrs.define(eq=False)
class _Kind:
    logged_at: float = -math.inf
    suppressed: int = 0
    level: int = logging.WARNING
    last: str = ""


@attrs.define(eq=False)
class Throttle:
    """Logs repeated events of one kind at most once per *interval* (then a summary).

    Every call counts (`Throttle.counts`); the first of a kind is logged as
    given, traceback included; those within *interval* of it are only
    counted; the first one after it logs a summary (how many were held back,
    and its own message) and opens a new interval. `flush` logs what is still
    held back (a persist flushes when it closes). Synchronous, O(1), and it
    never raises. Kinds are names chosen by the code ("label hook"), never
    per group, so their number stays bounded.
    """

    interval: float = SUMMARY_INTERVAL
    counts: dict[str, int] = attrs.field(factory=dict)
    _kinds: dict[str, _Kind] = attrs.field(factory=dict, init=False)

    def log(
        self,
        level: int,
        kind: str,
        message: str,
        *args: Any,
        exc_info: BaseException | None = None,
    ) -> None:
        """Count one *kind* event; log it unless one was logged less than *interval* ago."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        state = self._kinds.get(kind)
        if state is None:
            state = self._kinds[kind] = _Kind()
        now = _now()
        if now - state.logged_at < self.interval:
            state.suppressed += 1
            state.level = level
            state.last = _format(message, args)
            return
        if state.suppressed:
            logger.log(
                level,
                "%s (and %d more like it in the last %s s, not logged one by one)",
                _format(message, args),
                state.suppressed,
                f"{now - state.logged_at:.0f}",
            )
        else:
            logger.log(level, message, *args, exc_info=exc_info)
        state.logged_at = now
        state.suppressed = 0

    def flush(self) -> None:
        """Log a summary of every kind with events held back; then nothing is pending."""
        for kind, state in self._kinds.items():
            if state.suppressed:
                logger.log(
                    state.level,
                    "%s: %d more, not logged one by one (the last: %s)",
                    kind,
                    state.suppressed,
                    state.last,
                )
                state.suppressed = 0


def _format(message: str, args: tuple[Any, ...]) -> str:
    try:
        return message % args if args else message
    except Exception:
        return message
