"""A worker's saves: checkpoints between requests, durable saves, the save at its end.

With a store, a worker's state is saved through it when the worker stops (if
it changed), on ``checkpoint_interval`` between requests, and with
``durable=True`` after each request, before replying (`durably`). All of a
worker's saves run in its own task, so they never overlap; `WorkerTask.unsaved`
counts the changes the store does not have yet, and a save subtracts what it
covered (changes made while it ran stay unsaved). docs/virtual-workers.md
states the guarantees.
"""

from __future__ import annotations

from typing import Any

import trio

from .._exceptions import SaveFailed
from .._stats import group_label
from .._text import describe
from ._activation import count_save_failure, save_state
from ._job import AskJob, running
from ._worker import WorkerTask

__all__ = ["checkpoint", "checkpoint_due", "commit", "durably", "save_on_stop"]


def checkpoint_due(task: WorkerTask) -> bool:
    """Whether *task*'s changed state is due for its checkpoint save now."""
    at = task.checkpoint_at
    return at is not None and task.dirty and trio.current_time() >= at


async def checkpoint(task: WorkerTask) -> None:
    """Save *task*'s state if it changed (between requests); plan the next checkpoint."""
    core = task.core
    if task.dirty:
        saving = task.unsaved
        with trio.CancelScope() as task.saving:
            failed = await save_state(core, task.group, task.state, task.activation, "checkpoint")
            if failed is None:
                task.unsaved -= saving
        task.saving = None
    interval = core.options.checkpoint_interval
    assert interval is not None
    task.checkpoint_at = trio.current_time() + interval


async def commit(task: WorkerTask, value: Any) -> None:
    """With ``durable=True``: save the state a request made, before it is answered.

    Raises:
        SaveFailed: the save failed (its error is the cause): the request
            fails and is not applied. A static worker, whose device may have
            changed its state in place, then stops without saving, so its
            group goes on from the state last saved.
    """
    saving = task.unsaved
    new = task.state if task.static else value
    job = task.current
    rid = job.request_id if isinstance(job, AskJob) else None
    applied = None if rid is None else (rid, value)
    error = await save_state(task.core, task.group, new, task.activation, "durable", applied)
    if error is None:
        task.unsaved -= saving
        return
    if task.static:
        task.stop("unsaved", override=True)
    raise SaveFailed(
        f"the new state of group {group_label(task.group)} could not be saved "
        f"({describe(error)}): the request is not applied, and the worker goes on "
        "from its last saved state"
    ) from error


async def durably(state: Any, request: Any) -> Any:
    """A worker's device call under ``durable=True``: the request's new state is
    saved (`commit`) before the request is answered. Runs in the worker's task,
    which `running` names."""
    task: WorkerTask = running.get()
    value = await task.core.hooks.resolve(state, request)
    await commit(task, value)
    return value


async def save_on_stop(task: WorkerTask) -> None:
    """Save *task*'s state through the store (if it changed), then run ``on_idle``.

    Shielded, so closing the persist cannot cut a save short; bounded by
    the shutdown grace, so a hung store or hook cannot hang shutdown (a
    save cut short is counted as failed).
    """
    core = task.core
    saving = core.store is not None and task.dirty
    on_idle = core.hooks.on_idle
    if not saving and on_idle is None:
        return
    grace = core.options.shutdown_grace
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + grace
        if saving:
            changes = task.unsaved
            if await save_state(core, task.group, task.state, task.activation, "stop") is None:
                task.unsaved -= changes
        if on_idle is not None:
            try:
                await on_idle(task.group, task.state)
            except Exception as exc:
                core.hook_failed("on_idle", task.group, exc)
    if scope.cancelled_caught and saving and task.dirty:
        late = TimeoutError(f"it took longer than shutdown_grace ({grace} s)")
        count_save_failure(core, task.group, "stop", late)
