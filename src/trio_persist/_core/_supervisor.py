"""Worker supervision: starting workers, their order of use, and their ends.

The `Supervisor` starts workers (evicting the least recently used idle one
under ``max_workers``), hands a flight's group and queue to a worker, rebuilds
stopped workers from the device's ``restore`` hook, moves advancing workers to
their new state's group and, when a worker ends, frees its group and gives
what it still had queued back to the facade (`Core.reroute`). It is each
worker's `WorkerHost`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

import attrs

from ._job import Job, Owner
from ._state import Core
from ._worker import WorkerTask

__all__ = ["Supervisor"]

# Groups whose stopped workers could be restored: remembered, but not forever.
RETIRED_LIMIT = 65536

_EVENT_OF_REASON = {"timeout": "worker.timed_out", "crashed": "worker.crashed"}


@attrs.define(eq=False, repr=False)
class Supervisor:
    """The persist's side of its workers' lives. Internal."""

    core: Core
    # Every live worker, least recently used first.
    workers: dict[WorkerTask, None] = attrs.field(factory=dict)
    # Groups whose worker stopped and that ``restore`` may bring back.
    retired: dict[Hashable, None] = attrs.field(factory=dict)
    _last_touched: WorkerTask | None = attrs.field(default=None, init=False)

    def new_worker(
        self,
        group: Hashable,
        state: Any,
        *,
        static: bool | None = None,
        timeout: float | None = None,
        restore_first: bool = False,
    ) -> WorkerTask:
        """A worker (not yet registered or running); options default to the persist's."""
        options = self.core.options
        return WorkerTask(
            core=self.core,
            host=self,
            group=group,
            state=state,
            static=options.static_worker if static is None else static,
            timeout=options.worker_timeout if timeout is None else timeout,
            restore_first=restore_first,
        )

    def start(self, task: WorkerTask) -> None:
        """Register *task* for its group and launch it (nothing, if the group is taken)."""
        if self.core.registry.register(task.group, task):
            self.launch(task)

    def take_over(
        self, group: Hashable, owner: Owner, task: WorkerTask, jobs: Iterable[Job]
    ) -> bool:
        """Make *task* the owner of *group* in *owner*'s place, with its queued *jobs*.

        A forgotten owner no longer holds its group: then *task* takes it if it
        is free. False if someone else holds it (nothing changes).
        """
        registry = self.core.registry
        if not (registry.replace(group, owner, task) or registry.register(group, task)):
            return False
        task.adopt(jobs)
        self.launch(task)
        return True

    def restoring(self, group: Hashable, base: Any) -> WorkerTask:
        """Register and launch a worker that first asks ``restore`` for its state."""
        del self.retired[group]
        task = self.new_worker(group, base, restore_first=True)
        self.start(task)
        return task

    def launch(self, task: WorkerTask) -> None:
        """Start *task* in the persist's nursery (it is registered already)."""
        core = self.core
        limit = core.options.max_workers
        if limit is not None:
            active = sum(1 for alive in self.workers if alive.stop_reason is None)
            if active >= limit:
                self._evict_one()
        self.workers[task] = None
        self._last_touched = task  # the most recently used now
        core.counters.workers_started += 1
        core.nursery.start_soon(task.main)
        core.events.emit("worker.started", task.group)

    def _retire(self, group: Hashable) -> None:
        try:
            self.retired[group] = None
        except Exception:
            return  # a group whose hash raises now cannot be restored later
        if len(self.retired) > RETIRED_LIMIT:
            del self.retired[next(iter(self.retired))]

    def forget_retired(self, group: Hashable) -> None:
        """*group* gets a fresh worker: its stopped one is no longer restored."""
        self.retired.pop(group, None)

    def _evict_one(self) -> None:
        # The least recently used idle worker; if every one is busy, the least
        # recently used of all.
        victim = None
        for task in self.workers:
            if task.stop_reason is not None:
                continue
            if not task.busy and not task.queue_length:
                victim = task
                break
            if victim is None:
                victim = task
        if victim is not None:
            self.core.counters.evictions += 1
            victim.stop_nowait("evicted")
            self.core.events.emit("worker.evicted", victim.group)

    def stop_all(self) -> tuple[WorkerTask, ...]:
        """Stop every worker now, cancelling what they execute; return them."""
        tasks = tuple(self.workers)
        for task in tasks:
            task.stop_nowait("closed", cancel=True)
        return tasks

    # -- WorkerHost ----------------------------------------------------------------

    def touch(self, task: WorkerTask) -> None:
        if task is self._last_touched:
            return  # already the most recently used (one busy worker: the common case)
        workers = self.workers
        if task in workers:
            del workers[task]
            workers[task] = None
            self._last_touched = task

    def regroup(self, task: WorkerTask, state: Any) -> None:
        try:
            new = self.core.group_of(state, None)
            moved = new != task.group
        except Exception:
            return  # a state the grouper cannot name (or compare) keeps the old group
        registry = self.core.registry
        if moved and registry.register(new, task):
            registry.unregister(task.group, task)
            task.move_to(new)

    def ended(self, task: WorkerTask, crashed: BaseException | None) -> None:
        core = self.core
        group = task.group
        reason = task.stop_reason
        unanswered = task.take_unanswered()
        core.registry.unregister(group, task)
        self.workers.pop(task, None)
        if reason == "timeout":
            core.counters.worker_timeouts += 1
        kind = _EVENT_OF_REASON.get(reason or "", "worker.stopped")
        detail = f"{type(crashed).__name__}: {crashed}" if crashed is not None else (reason or "")
        core.events.emit(kind, group, detail)
        if core.hooks.restore is not None and reason != "unrestored" and not core.closed:
            self._retire(group)
        for job in unanswered:
            core.reroute(job)
