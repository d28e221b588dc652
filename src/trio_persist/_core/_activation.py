"""Where a worker's state comes from and where it goes: activation and saving.

A worker made by `Persist.ask` (or `Persist.get_worker`, or for a resolve
whose group's worker stopped) is *activated*: it is registered for its group
at once, and its task first loads the state from the first of the persist's
store, the device's ``restore`` hook and the caller's ``default()``, while
the requests for the group queue in its inbox. An `Activation` is that
worker's record of how it got its state and what the callers waiting for it
learn.

With a store, a worker's state is saved through it: when the worker stops
(for any reason but a crash), on ``checkpoint_interval``, and after every
request with ``durable=True``. All of a worker's saves run in its own task,
one after another, so one group's saves never overlap; and a stopping worker
keeps its group until its last save has finished, so the group's next
activation loads what it saved. docs/virtual-workers.md states all of it.

A store that keeps records (`RecordStore`) is read and written through them:
the record's fencing token, applied request ids and reply are carried from
the load to every later save, so a save is fenced by the token it was loaded
with (a worker in another process sets its own lease token here).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Hashable
from typing import Any

import attrs
import trio

from .._exceptions import ActivationFailed, NoWorker
from .._logging import logger
from .._stats import group_label
from .._store import StateRecord
from .._text import describe, safe_repr
from ._state import Core

__all__ = [
    "ACTIVATING",
    "NOTHING",
    "Activation",
    "count_save_failure",
    "load_state",
    "save_state",
]


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


ACTIVATING: Any = _Marker("<activating>")
"""A worker's state while it is being loaded."""
NOTHING: Any = _Marker("<nothing>")
"""No state handed over."""


@attrs.define(eq=False, repr=False)
class Activation:
    """How one worker gets its state, and the outcome its waiters read. Internal."""

    # Makes a fresh state when nothing is saved: the first default any waiting
    # ask offered (`offer`).
    default: Callable[[], Any] | None = None
    # Whether the worker keeps its group for life (made by ask or get_worker),
    # rather than moving with its state (a resolve's restored worker).
    keeps_group: bool = True
    # A stopping predecessor's live state, handed over instead of a load.
    handed: Any = NOTHING
    # Whether the handed state still needs saving (its last save failed).
    handed_dirty: bool = False
    # The record the state was loaded with (a store that keeps records), or
    # None: its token, applied ids and reply go with every later save.
    record: StateRecord | None = None
    # Where the state came from: "store", "restore", "default" or "handover".
    source: str = ""
    # An evicted worker still serves the request it was activated for (so
    # workers taking turns under max_workers always make progress).
    owes_first: bool = True
    settled: bool = False
    error: BaseException | None = None
    _done: trio.Event | None = None

    def offer(self, default: Callable[[], Any] | None) -> None:
        """A waiting caller's *default*, used if none was offered before it."""
        if self.default is None:
            self.default = default

    def settle(self, error: BaseException | None) -> None:
        """The activation ended: with a state (*error* None), or failed."""
        if self.settled:
            return
        self.settled = True
        self.error = error
        if self._done is not None:
            self._done.set()

    async def wait(self) -> None:
        """Wait until it has settled; raise its error if it failed."""
        if not self.settled:
            if self._done is None:
                self._done = trio.Event()
            await self._done.wait()
        else:
            await trio.lowlevel.checkpoint()
        if self.error is not None:
            raise self.error


async def load_state(core: Core, group: Hashable, activation: Activation) -> tuple[Any, bool]:
    """Load *group*'s state for *activation*; return it and whether it needs saving.

    From the first of: a handed-over state, the store, the device's
    ``restore`` hook, ``default()``. A state of None means "nothing there".

    Raises:
        ActivationFailed: a step raised (the store's `CorruptResult` too):
            its error is the cause. Counted and logged.
        NoWorker: nothing to activate from, and no default.
    """
    if activation.handed is not NOTHING:
        activation.source = "handover"
        return activation.handed, activation.handed_dirty
    try:
        state = await _load_saved(core, group, activation)
        if state is not None:
            return state, activation.source == "restore" and core.store is not None
        if activation.default is not None:
            activation.source = "default"
            return _fresh(activation.default), True
    except Exception as exc:
        raise _failed(core, group, activation, exc) from exc
    raise NoWorker(
        f"group {safe_repr(group)} has no worker and nothing to restore it from "
        "(nothing saved, and no default): pass default= to start one with a fresh state"
    )


def _fresh(default: Callable[[], Any]) -> Any:
    state = default()
    if inspect.iscoroutine(state):  # an async default: its coroutine is no state
        state.close()
        raise TypeError(
            "default() returned a coroutine: default= takes a plain function that makes a "
            "fresh state (such as dict), not an async function"
        )
    return state


async def _load_saved(core: Core, group: Hashable, activation: Activation) -> Any:
    records, store = core.records, core.store
    if records is not None:
        record = await records.load_record(group)
        if record is not None:
            if record.token is not None or record.applied:  # kept for the saves
                activation.record = attrs.evolve(record, state=None)
            activation.source = "store"
            return record.state
    elif store is not None:
        state = await store.load(group)
        if state is not None:
            activation.source = "store"
            return state
    restore = core.hooks.restore
    if restore is None:
        return None
    activation.source = "restore"
    return await restore(group)


def _failed(
    core: Core, group: Hashable, activation: Activation, error: Exception
) -> ActivationFailed:
    core.counters.activation_failures += 1
    core.events.emit("worker.activation_failed", group, describe(error))
    step = activation.source or "the store"
    if step == "restore":
        core.hook_failed("restore", group, error, throttled=True)
    elif step == "default":
        logger.debug("default() failed for group %s: %s", group_label(group), describe(error))
    else:
        core.throttle.log(
            logging.ERROR,
            "activation",
            "loading the state of group %s from the store failed: %s",
            group_label(group),
            describe(error),
            exc_info=error,
        )
    where = {"restore": "the restore hook", "default": "default()"}.get(step, "the store")
    # A store's TypeError is about the group (it cannot be named): no retry helps.
    unnamed = isinstance(error, TypeError) and where == "the store"
    then = "asking again fails the same way" if unnamed else "the next ask tries again"
    return ActivationFailed(
        f"activating a worker for group {safe_repr(group)} failed in {where}: "
        f"{describe(error)}. Nothing was started; {then}"
    )


async def save_state(
    core: Core, group: Hashable, state: Any, activation: Activation | None, reason: str
) -> BaseException | None:
    """Save *state* as *group*'s through the store; return the error if it failed.

    A failure is counted (``save_failures`` and ``hook_failures``), announced
    and logged (at most one line a minute per kind, then a summary), and
    hurts nothing else. *reason* says why: ``"stop"``, ``"checkpoint"`` or
    ``"durable"``. Cancellation propagates (the store keeps its previous
    state then).
    """
    store = core.store
    assert store is not None
    record = activation.record if activation is not None else None
    try:
        if record is not None and core.records is not None:
            await core.records.save_record(group, attrs.evolve(record, state=state))
        else:
            await store.save(group, state)
    except Exception as exc:
        count_save_failure(core, group, reason, exc)
        return exc
    counters = core.counters
    counters.saves += 1
    if reason == "checkpoint":
        counters.checkpoints += 1
    core.events.emit("worker.saved", group, reason)
    return None


def count_save_failure(core: Core, group: Hashable, reason: str, error: BaseException) -> None:
    """A save of *group*'s state failed: count it, say so, log it (throttled)."""
    counters = core.counters
    counters.save_failures += 1
    counters.hook_failures += 1
    core.events.emit("worker.save_failed", group, f"{reason}: {describe(error)}")
    core.throttle.log(
        logging.ERROR,
        "store save",
        "saving the state of group %s through the store failed (%s): %s",
        group_label(group),
        reason,
        describe(error),
        exc_info=error,
    )
