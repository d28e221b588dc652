"""Worker supervision: the persist's side of its workers' lives.

`Persist` inherits this mixin. It starts workers (evicting the least
recently used idle one under ``max_workers``), hands a flight's group and queue
to a worker, rebuilds stopped workers from ``restore``, moves advancing workers
to their new state's group, runs ``on_idle`` within the shutdown grace, and,
when a worker ends, frees its group and re-routes what it still had queued.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, cast

import trio

from ._grouping import default_group
from ._worker import Worker

if TYPE_CHECKING:
    from ._device import DeviceHooks
    from ._events import EventHub
    from ._flight import Flight
    from ._job import Job
    from ._options import PersistOptions
    from ._persist import Persist
    from ._registry import Registry

__all__ = ["WorkerSupervision"]

# Groups whose stopped workers could be restored: remembered, but not forever.
_RETIRED_LIMIT = 65536


class WorkerSupervision:
    """Mixin of `Persist`: everything it does for and about its workers."""

    if TYPE_CHECKING:  # provided by Persist
        _hooks: DeviceHooks
        options: PersistOptions
        registry: Registry[Any]
        _owners: dict[Hashable, Any]
        _events: EventHub
        _nursery: trio.Nursery
        _workers: dict[Worker, None]
        _retired: dict[Hashable, None]
        _closed: bool
        _evictions: int
        _workers_started: int
        _worker_timeouts: int

        def group(self, base: Any, request: Any = None) -> Hashable: ...
        def _reroute(self, job: Job) -> None: ...

    def _launch(self, worker: Worker) -> None:
        limit = self.options.max_workers
        if limit is not None:
            active = sum(1 for alive in self._workers if alive._stop_reason is None)
            if active >= limit:
                self._evict_one()
        self._workers[worker] = None
        self._workers_started += 1
        self._nursery.start_soon(worker.run)
        self._events.emit("worker.started", worker.group)

    def _evict_one(self) -> None:
        victim = None
        for worker in self._workers:
            if worker._stop_reason is not None:
                continue
            if not worker.busy and not worker.queued:
                victim = worker
                break
            if victim is None:
                victim = worker
        if victim is not None:
            self._evictions += 1
            victim.stop_nowait("evicted")
            self._events.emit("worker.evicted", victim.group)

    def _touch(self, worker: Worker) -> None:
        workers = self._workers
        if worker in workers:
            del workers[worker]
            workers[worker] = None

    def _worker(self, group: Hashable, state: Any, *, restore: bool = False) -> Worker:
        """A worker with the persist's default options (not yet registered or running)."""
        return Worker(
            persist=cast("Persist", self),
            group=group,
            state=state,
            static=self.options.static_worker,
            timeout=self.options.worker_timeout,
            restore=restore,
        )

    def _spawn_worker_from(self, flight: Flight, job: Job) -> bool:
        """After a successful spawn_worker job; True if *flight* handed its group over."""
        if self._closed or flight.group is None:
            return False
        state = job.value
        if self._hooks.group is None:  # the default grouper: the worker owns group(state, None)
            try:
                group: Hashable = default_group(state, None)
            except TypeError:
                return False  # a result the default grouper cannot name has no worker
            if group in self._owners:
                return False
            worker = self._worker(group, state)
            self.registry.register(group, worker)
            self._launch(worker)
            return False
        if flight.successor is None:
            flight.successor = self._worker(flight.group, state)
        return self._hand_over(flight, flight.successor)

    def _hand_over(self, flight: Flight, worker: Worker) -> bool:
        """Make *worker* the owner of *flight*'s group, with the jobs queued behind it."""
        flight.successor = None
        assert flight.group is not None
        registry = self.registry
        # A forgotten flight no longer owns its group: the worker takes it if free.
        if not (
            registry.replace(flight.group, flight, worker)
            or registry.register(flight.group, worker)
        ):
            return False
        for job in flight.pending:
            if not job.abandoned:
                job.owner = worker
                worker._backlog.append(job)
        flight.pending.clear()
        self._launch(worker)
        return True

    def _restoring_worker(self, group: Hashable, base: Any) -> Worker:
        del self._retired[group]
        worker = self._worker(group, base, restore=True)
        self.registry.register(group, worker)
        self._launch(worker)
        return worker

    async def _restore_state(self, worker: Worker) -> Any:
        restore = self._hooks.restore
        assert restore is not None
        try:
            return await restore(worker.group)
        except Exception as exc:
            self._events.emit("worker.crashed", worker.group, f"restore failed: {exc!r}")
            return None

    def _regroup(self, worker: Worker, state: Any) -> None:
        """A non-static worker advanced: move it to its new state's group if that is free."""
        try:
            new = self.group(state, None)
        except Exception:
            return  # a state the grouper cannot name keeps the old group
        old = worker.group
        if new != old and self.registry.register(new, worker):
            self.registry.unregister(old, worker)
            worker._set_group(new)

    async def _run_on_idle(self, worker: Worker) -> None:
        on_idle = self._hooks.on_idle
        if on_idle is None:
            return
        # Shielded, so closing the persist cannot cut the save short; bounded, so
        # a hung hook cannot hang shutdown.
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self.options.shutdown_grace
            try:
                await on_idle(worker.group, worker.state)
            except Exception as exc:
                self._events.emit("worker.crashed", worker.group, f"on_idle failed: {exc!r}")

    def _worker_ended(self, worker: Worker, crashed: BaseException | None) -> None:
        group = worker.group
        reason = worker._stop_reason
        unanswered = worker._take_unanswered()
        self.registry.unregister(group, worker)
        self._workers.pop(worker, None)
        if reason == "timeout":
            self._worker_timeouts += 1
        kind = {
            "timeout": "worker.timed_out",
            "crashed": "worker.crashed",
        }.get(reason or "", "worker.stopped")
        detail = f"{type(crashed).__name__}: {crashed}" if crashed is not None else (reason or "")
        self._events.emit(kind, group, detail)
        if self._hooks.restore is not None and reason != "unrestored" and not self._closed:
            self._retired[group] = None
            if len(self._retired) > _RETIRED_LIMIT:
                del self._retired[next(iter(self._retired))]
        for job in unanswered:
            self._reroute(job)
