"""Worker supervision: starting workers, their order of use, and their ends.

The `Supervisor` starts workers (evicting the least recently used idle one
under ``max_workers``), activates workers that load their state first (see
`_activation`), hands a flight's group and queue to a worker, moves
advancing workers to their new state's group and, when a worker ends, frees
its group and gives what it still had queued to the group's next owner: the
worker's successor, with its live state (a hand-over), or the facade
(`Core.reroute`). It is each worker's `WorkerHost`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import attrs

from ._activation import ACTIVATING, Activation
from ._handle import Worker
from ._job import AskJob, Job, Owner, leader_died
from ._saving import durably
from ._serving import run_worker
from ._state import Core
from ._worker import WorkerTask

__all__ = ["Supervisor"]

# Groups whose stopped workers could be restored: remembered, but not forever.
RETIRED_LIMIT = 65536

# An ask whose workers stop this many times without serving anything fails
# (`LeaderDied`) instead of going round for ever (a serve loop that returns at once).
MAX_BOUNCES = 8

_EVENT_OF_REASON = {"timeout": "worker.timed_out", "crashed": "worker.crashed"}

# A worker stopping for these reasons hands its live state to the next worker
# of its group when requests are queued at it; after the others (forget, the
# "throw" strategy, a crash, a failed durable save) its group reloads its state.
_HANDS_OVER = frozenset({"timeout", "evicted", "stopped"})


@attrs.define(eq=False, repr=False)
class Supervisor:
    """The persist's side of its workers' lives. Internal."""

    core: Core
    # Every live worker (stopping ones included), least recently used first.
    workers: dict[WorkerTask, None] = attrs.field(factory=dict)
    # The live workers not stopping yet, least recently used first: the ones
    # max_workers counts and eviction chooses from.
    active: dict[WorkerTask, None] = attrs.field(factory=dict)
    # Groups whose worker stopped and that ``restore`` (or the store) may bring back.
    retired: dict[Hashable, None] = attrs.field(factory=dict)
    # Activations registered while the persist was crowded, launched as workers
    # end (see `crowded`): requests queue at them meanwhile.
    pending: deque[WorkerTask] = attrs.field(factory=deque)
    _last_touched: WorkerTask | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        if self.core.options.durable:
            self.core.worker_resolve = durably

    def new_worker(
        self,
        group: Hashable,
        state: Any,
        *,
        static: bool | None = None,
        timeout: float | None = None,
        activation: Activation | None = None,
    ) -> WorkerTask:
        """A worker (not yet registered or running); options default to the persist's.

        With *activation*, it loads its state first (*state* is then ignored).
        """
        options = self.core.options
        task = WorkerTask(
            core=self.core,
            host=self,
            group=group,
            state=state if activation is None else ACTIVATING,
            static=options.static_worker if static is None else static,
            timeout=options.worker_timeout if timeout is None else timeout,
            activation=activation,
        )
        task.give_handle(Worker(task=task))
        return task

    def start(self, task: WorkerTask) -> None:
        """Register *task* for its group and launch it (nothing, if the group is taken)."""
        if self.core.registry.register(task.group, task):
            self.launch(task)

    def activate(self, task: WorkerTask, *, nested: bool = False) -> WorkerTask:
        """Register *task* (made by `activating`) for its free group at once, and
        launch it to load its state (requests for the group queue at it
        meanwhile), or, if the persist is `crowded`, as soon as a worker ends;
        at once if *nested* (asked from inside an execution of this persist,
        which a crowding worker may be waiting for: waiting could deadlock).
        Never checkpoints."""
        self.retired.pop(task.group, None)
        registered = self.core.registry.register(task.group, task)
        assert registered, "activate() is for a free group"
        if self.crowded and not nested:
            self.pending.append(task)
            self.core.events.emit("worker.activating", task.group, "waiting for room")
        else:
            self.launch(task)
        return task

    def hurry(self, task: WorkerTask) -> None:
        """Launch *task* now if it waits for room: an ask from inside the persist
        joined it (see `activate`). Never checkpoints."""
        if task not in self.workers and task in self.pending:
            self.pending.remove(task)
            self.launch(task)

    def activating(
        self,
        group: Hashable,
        default: Callable[[], Any] | None,
        *,
        static: bool | None = None,
        timeout: float | None = None,
    ) -> WorkerTask:
        """A worker that will activate *group* (not registered or launched yet)."""
        activation = Activation(default=default)
        return self.new_worker(group, None, static=static, timeout=timeout, activation=activation)

    def take_over(
        self, group: Hashable, owner: Owner, task: WorkerTask, jobs: Iterable[Job]
    ) -> bool:
        """Make *task* the owner of *group* in *owner*'s place, with its queued *jobs*.

        A forgotten owner no longer holds its group: then *task* takes it if it
        is free. False if someone else holds it: *task* is dropped, and what
        was queued at it goes on to the group's owner.
        """
        registry = self.core.registry
        if not (registry.replace(group, owner, task) or registry.register(group, task)):
            self.drop(task)
            return False
        task.adopt(jobs)
        self.launch(task)
        return True

    def drop(self, task: WorkerTask) -> None:
        """*task* will never run (its flight's group went elsewhere, or the persist
        closed): what was queued at it goes on, and anyone waiting for it hears."""
        if task.activation is not None:
            task.activation.settle(leader_died("the worker never started: " + _why(self.core)))
        jobs = task.take_unanswered()
        task.never_ran()
        for job in jobs:
            self.core.reroute(job)

    def restoring(self, group: Hashable) -> WorkerTask:
        """Register and launch a worker that first loads a stopped worker's state (for
        a resolve: nothing saved means a plain execution; it follows its state's group)."""
        del self.retired[group]
        task = self.new_worker(group, None, activation=Activation(keeps_group=False))
        self.start(task)
        return task

    def launch(self, task: WorkerTask) -> None:
        """Start *task* in the persist's nursery (it is registered already)."""
        core = self.core
        self.workers[task] = None
        self.active[task] = None
        self._last_touched = task  # the most recently used now
        core.nursery.start_soon(run_worker, task)
        if task.state is ACTIVATING:
            core.events.emit("worker.activating", task.group)
        else:
            self.started(task)

    def started(self, task: WorkerTask) -> None:
        """*task* serves from now on (launched with a state, or activated): under
        ``max_workers``, one more than allowed stops the least recently used idle
        one (an activation that fails evicts nothing)."""
        core = self.core
        limit = core.options.max_workers
        if limit is not None and len(self.active) > limit:
            self._evict_one(task)
        core.counters.workers_started += 1
        core.events.emit("worker.started", task.group)

    @property
    def crowded(self) -> bool:
        """Whether twice ``max_workers`` workers live (activating, serving, or
        saving after a stop): then a new activation is launched only once one of
        them has ended, so memory stays bounded however slow the store and
        however many groups are asked for at once."""
        limit = self.core.options.max_workers
        return limit is not None and len(self.workers) >= 2 * limit

    def _launch_pending(self) -> None:
        pending = self.pending
        while pending and not self.crowded and not self.core.closed:
            self.launch(pending.popleft())

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

    def _evict_one(self, newcomer: WorkerTask) -> None:
        # The least recently used idle worker; if every one is busy, the least
        # recently used of all (never the one just started).
        victim = None
        for task in self.active:
            if task is newcomer:
                continue
            if not task.busy and not task.queue_length and task.state is not ACTIVATING:
                victim = task
                break
            if victim is None:
                victim = task
        if victim is not None:
            self.core.counters.evictions += 1
            victim.stop_nowait("evicted")
            self.core.events.emit("worker.evicted", victim.group)

    def stop_all(self) -> tuple[WorkerTask, ...]:
        """Stop every worker now, cancelling what they execute; return them.

        Activations still waiting to be launched never are: their callers hear why.
        """
        while self.pending:
            task = self.pending.popleft()
            self.core.registry.unregister(task.group, task)
            self.drop(task)
        tasks = tuple(self.workers)
        for task in tasks:
            task.stop_nowait("closed", cancel=True)
        return tasks

    # -- WorkerHost ----------------------------------------------------------------

    def touch(self, task: WorkerTask) -> None:
        if task is self._last_touched:
            return  # already the most recently used (one busy worker: the common case)
        for order in (self.workers, self.active):
            if task in order:
                del order[task]
                order[task] = None
        self._last_touched = task

    def stopping(self, task: WorkerTask) -> None:
        self.active.pop(task, None)

    def regroup(self, task: WorkerTask, state: Any) -> None:
        activation = task.activation
        if activation is not None and activation.keeps_group:
            return  # a virtual worker keeps its group for life
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
        self.active.pop(task, None)
        activation = task.activation
        if activation is not None and not activation.settled:
            activation.settle(leader_died("the worker stopped before it was activated"))
        if reason == "unactivated":
            self._activation_failed(task, unanswered)
            self._placed_ended(task)
            self._launch_pending()
            return
        self._report_end(task, crashed)
        # A resolve may rebuild a stopped worker's group from what was saved; a
        # virtual worker's group comes back through ask (not remembered: memory
        # stays bounded by the live workers, however many groups were asked for).
        keeps = core.hooks.restore is not None or core.store is not None
        if keeps and not core.closed and not task.virtual:
            self._retire(group)
        unanswered = self._bounce(task, unanswered)
        if unanswered and not self._hand_over(task, unanswered):
            for job in unanswered:
                core.reroute(job)
        self._placed_ended(task)
        self._launch_pending()

    def _placed_ended(self, task: WorkerTask) -> None:
        """A placed worker's lease goes when nothing took its group's place here."""
        core = self.core
        if core.placement is not None and task.group not in core.owners:
            core.placement.ended(task.group)

    def _report_end(self, task: WorkerTask, crashed: BaseException | None) -> None:
        core = self.core
        reason = task.stop_reason
        if reason == "timeout":
            core.counters.worker_timeouts += 1
        kind = _EVENT_OF_REASON.get(reason or "", "worker.stopped")
        detail = f"{type(crashed).__name__}: {crashed}" if crashed is not None else (reason or "")
        core.events.emit(kind, task.group, detail)

    def _activation_failed(self, task: WorkerTask, unanswered: list[Job]) -> None:
        """Its asks get the activation's error; anything else is routed on as usual."""
        activation = task.activation
        assert activation is not None
        error = activation.error
        for job in unanswered:
            if isinstance(job, AskJob) and error is not None:
                job.fail(error)
            else:
                self.core.reroute(job)

    def _bounce(self, task: WorkerTask, unanswered: list[Job]) -> list[Job]:
        """Count the asks *task* stopped with and served nothing of; fail those that
        went round too often (a broken serve loop), return the rest."""
        idle = not task.served and not task.answered
        kept = []
        for job in unanswered:
            if isinstance(job, AskJob) and (idle or job.in_service):
                job.bounces += 1
                if job.bounces > MAX_BOUNCES:
                    job.fail(
                        leader_died(
                            f"its group's workers stopped {MAX_BOUNCES} times without serving it"
                        )
                    )
                    continue
            kept.append(job)
        return kept

    def _hand_over(self, task: WorkerTask, unanswered: list[Job]) -> bool:
        """Give *task*'s live state and queue to a new worker of its group, if it
        stopped with a valid state and is virtual (or asks are queued at it)."""
        core = self.core
        if core.closed or task.stop_reason not in _HANDS_OVER or task.state is ACTIVATING:
            return False
        activation = task.activation
        virtual = activation is not None and activation.keeps_group
        if not virtual and not any(isinstance(job, AskJob) for job in unanswered):
            return False
        successor = self.new_worker(
            task.group,
            None,
            static=task.static,
            timeout=task.timeout,
            activation=Activation(
                handed=task.state,
                handed_dirty=task.dirty,
                record=activation.record if activation is not None else None,
                lease=activation.lease if activation is not None else None,
            ),
        )
        if not core.registry.register(task.group, successor):
            return False
        successor.adopt(unanswered)
        self.launch(successor)
        return True


def _why(core: Core) -> str:
    return "the persist closed" if core.closed else "its group went to another owner"
