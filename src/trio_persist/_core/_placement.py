"""The engine's side of workers placed across processes by a backend.

With a backend that places workers (``RedisBackend(workers="cluster")``),
`Persist.ask` hands every request to the backend's `Placement`: the backend
holds a group's *worker lease* before a worker may be activated for it here,
and sends requests for groups leased by other processes to them. This module
is what the backend drives in this process (`Here`, a `LocalWorkers`):

* ``ask`` activates the group's worker under the lease (its token fences
  every save) and delivers the request; a request the loaded record says was
  applied is answered from the record instead of running again;
* ``stop_lost`` stops a worker whose lease was lost: cancelled, never saved;
* `reroute` takes a request whose worker stopped under it: a local one is
  asked again through the placement, one sent by another process is given
  back to it (`WorkerMoved`), which sends it again itself.

docs/redis.md states the guarantees; docs/architecture.md the path.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Awaitable, Callable, Hashable, Iterator
from typing import Any

import attrs
import trio

from .._backend import NO_CHAIN, Chain, Placement, WorkerLease, cycle_error
from .._exceptions import WorkerMoved
from .._grouping import canonical_encoding
from .._text import safe_repr
from ._activation import ACTIVATING, Activation
from ._chain import joins_across, serving_chain, waits_on_chain
from ._job import UNNAMED, AskJob, Job, Owner, leader_died, running
from ._state import Core
from ._worker import WorkerTask

__all__ = ["Here", "claim_started", "lease_worker", "reroute_placed", "resolve_placed"]


@attrs.define(eq=False)
class Here:
    """The workers of this process, as a placing backend sees them. Internal."""

    core: Core
    # The facade's: the group's worker (activating one; refusing a call that
    # would wait for itself), and listening for a job's answer.
    worker_for: Callable[[Hashable, Callable[[], Any] | None, Owner | None], WorkerTask]
    listen: Callable[[Job, WorkerTask, Owner | None], Awaitable[Any]]
    # Which owners each owner's execution waits for here (the facade's graph).
    awaiting: dict[Owner, list[Owner]]
    # The owners here waiting for a worker elsewhere (a request of theirs
    # routed there: a flight's, or a worker's own resolve), and the names of
    # those workers (`standing_in`; a worker's device may route several at once).
    stand_ins: dict[Owner, list[str]] = attrs.Factory(dict)
    # Requests served here now whose chain names workers: until one comes, no
    # call can close a cycle through other processes by joining, and none
    # looks for one (the facade reads it, O(1), before `closes`).
    carrying: int = 0

    def closes(self, owner: Owner, current: Owner) -> bool:
        """Whether a call from *current*'s execution that joins or queues behind
        *owner* would wait for itself through other processes (`joins_across`)."""
        return joins_across(owner, current, self.awaiting, self.stand_ins)

    @contextlib.contextmanager
    def standing_in(self, worker: str) -> Iterator[None]:
        """The calling task's owner (a flight, or a worker whose execution
        resolves a group owned elsewhere) waits for the worker named *worker*
        inside the block (see `LocalWorkers.standing_in`)."""
        owner = running.get()
        if owner is None:
            yield
            return
        names = self.stand_ins.setdefault(owner, [])
        names.append(worker)
        try:
            yield
        finally:
            names.remove(worker)
            if not names:
                del self.stand_ins[owner]

    async def ask(
        self,
        group: Hashable,
        request: Any,
        default: Callable[[], Any] | None,
        request_id: str,
        lease: WorkerLease,
        *,
        routed: bool,
        resolving: bool = False,
        join: bool = False,
        chain: Chain = NO_CHAIN,
    ) -> Any:
        """Ask *group*'s worker here, activated under *lease* (see `LocalWorkers.ask`)."""
        if resolving and not self.has_worker(group):
            raise WorkerMoved("the group has no worker here: resolve it where it is asked")
        job = AskJob(
            None,
            request,
            key=UNNAMED,
            group=group,
            default=default,
            request_id=request_id,
            routed=routed,
            chain=chain,
        )
        current = None if routed else running.get()
        carrying = int(bool(chain.workers))  # (nested calls look for cycles: `carrying`)
        self.carrying += carrying
        try:
            while True:
                task = self._leased_worker(group, default, current, lease, chain)
                if routed and task.lease is not lease:
                    # Accepted under a lease this worker does not run under: the
                    # sender sends it again to the owner of now (never run twice).
                    raise WorkerMoved("the group's worker here runs under another lease now")
                activation = task.activation
                if activation is not None:
                    if not activation.settled:
                        await activation.wait()  # its record says what was applied
                        continue  # (it may have stopped meanwhile)
                    answered = _from_record(activation, group, request_id)
                    if answered is not None:
                        return answered[0]
                joined = task.find(request, UNNAMED) if join else None
                if joined is not None:  # a static worker's identical queued request
                    self.core.counters.deduplicated += 1
                    return await self.listen(joined, task, current)
                if task.admit_nowait(job) or await task.admit(job):
                    return await self.listen(job, task, current)
                if routed:
                    raise WorkerMoved("the worker stopped while the request waited for room")
        finally:
            self.carrying -= carrying

    def chain_for(self, group: Hashable, digest: str) -> Chain:
        """The chain a request to *group* carries from the calling task (see
        `LocalWorkers.chain_for`)."""
        return serving_chain(running.get(), self.awaiting, group, digest)

    def _leased_worker(
        self,
        group: Hashable,
        default: Callable[[], Any] | None,
        current: Owner | None,
        lease: WorkerLease,
        chain: Chain = NO_CHAIN,
    ) -> WorkerTask:
        """*group*'s worker here (activated if need be), running under *lease* if
        it has none yet (one started with a state: the lease won now covers it).
        `InfiniteRecursion` if it waits for one of the groups or workers of
        *chain* (those waiting for a routed request), or, asked from *current*'s
        execution, for a worker elsewhere waiting for that execution."""
        task = self.worker_for(group, default, current)
        if (chain.groups or chain.workers) and waits_on_chain(
            task, self.awaiting, chain, self.stand_ins
        ):
            raise cycle_error(group)
        if current is not None and self.carrying and self.closes(task, current):
            raise cycle_error(group)
        lease_worker(task, lease)
        if task.activation is None and task.lease is None:
            task.run_under(lease)
        return task

    def lease_started(self, task: WorkerTask, lease: WorkerLease) -> None:
        """*task*, started with a state (`Persist.start_worker`), runs under *lease*."""
        task.run_under(lease)

    def stop_lost(self, group: Hashable) -> None:
        """*group*'s lease was lost: its worker stops now, cancelled and unsaved."""
        owner: Owner | None = self.core.owners.get(group)
        if isinstance(owner, WorkerTask):
            owner.stop("unsaved", override=True)  # never saved over its successor
            owner.stop_nowait("unsaved", cancel=True)

    def has_worker(self, group: Hashable) -> bool:
        """Whether *group* has a worker here now."""
        return isinstance(self.core.owners.get(group), WorkerTask)


def _from_record(activation: Activation, group: Hashable, request_id: str) -> tuple[Any] | None:
    """The reply to *request_id* if the loaded record says a dead owner applied it:
    ``(reply,)``, `LeaderDied` if its reply was not kept; None if never applied."""
    applied = activation.last_applied
    if applied is not None and applied[0] == request_id:
        return (applied[1],)  # applied by a dead owner, never answered
    record = activation.record
    if record is not None and request_id in record.applied:
        raise leader_died(
            f"the request to group {safe_repr(group)} was applied by an owner "
            "that died before answering, and its reply was not kept"
        )
    return None


def lease_worker(task: WorkerTask, lease: WorkerLease) -> None:
    """*task*, activating now, runs under *lease*: its saves carry the lease's token."""
    activation = task.activation
    if activation is not None and activation.lease is None and task.state is ACTIVATING:
        activation.lease = lease
        task.run_under(lease)


async def claim_started(placement: Placement | None, group: Hashable) -> WorkerLease | None:
    """The lease a worker started with a state runs under: *group*'s, won here
    (`~trio_persist.NoWorker` if another process owns it); None without placement
    or for a group no other process can name."""
    if placement is None:
        return None
    try:
        canonical_encoding(group)
    except TypeError:
        return None
    return await placement.claim(group)


async def resolve_placed(
    core: Core, group: Hashable, request: Any, share: bool, spawn_worker: bool = False
) -> tuple[Any] | None:
    """A `resolve` of *group*, which has no owner here, sent to its worker in
    another process: ``(reply,)``; None if no other process has one (or the
    backend's `run` is to look, see `Placement.resolve_elsewhere`)."""
    if core.placement is None or group in core.owners:
        return None
    return await core.placement.resolve_elsewhere(
        group, request, secrets.token_hex(16), share=share, spawn_worker=spawn_worker
    )


def reroute_placed(core: Core, placement: Placement, job: AskJob) -> None:
    """An ask whose worker stopped under it: a routed one goes back to its sender
    (`WorkerMoved`); a local one is asked again through *placement*."""
    if job.routed:
        job.fail(WorkerMoved("the group's worker stopped here: send the request again"))
        return
    core.nursery.start_soon(_ask_again, placement, job)


async def _ask_again(placement: Placement, job: AskJob) -> None:
    if job.done or job.abandoned:
        return
    assert job.request_id is not None
    try:
        value = await placement.ask(job.group, job.request, job.default, job.request_id)
    except trio.Cancelled:
        job.fail(leader_died("the persist closed before this request was served"))
        raise
    except Exception as exc:
        job.fail(exc)
        return
    job.succeed(value)
