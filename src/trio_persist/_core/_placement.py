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

from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import attrs
import trio

from .._backend import Placement, WorkerLease
from .._exceptions import WorkerMoved
from .._text import safe_repr
from ._activation import ACTIVATING
from ._job import UNNAMED, AskJob, Owner, leader_died, running
from ._state import Core
from ._worker import WorkerTask

__all__ = ["Here", "lease_worker", "reroute_placed"]


@attrs.define(eq=False)
class Here:
    """The workers of this process, as a placing backend sees them. Internal."""

    core: Core
    # The facade's: the group's worker (activating one; refusing a call that
    # would wait for itself), and listening for a job's answer.
    worker_for: Callable[[Hashable, Callable[[], Any] | None, Owner | None], WorkerTask]
    listen: Callable[[AskJob, WorkerTask, Owner | None], Awaitable[Any]]

    async def ask(
        self,
        group: Hashable,
        request: Any,
        default: Callable[[], Any] | None,
        request_id: str,
        lease: WorkerLease,
        *,
        routed: bool,
    ) -> Any:
        """Ask *group*'s worker here, activated under *lease* (see `LocalWorkers.ask`)."""
        job = AskJob(
            None,
            request,
            key=UNNAMED,
            group=group,
            default=default,
            request_id=request_id,
            routed=routed,
        )
        current = None if routed else running.get()
        while True:
            task = self.worker_for(group, default, current)
            lease_worker(task, lease)
            activation = task.activation
            if routed and (activation is None or activation.lease is not lease):
                # Accepted under a lease this worker does not run under: the
                # sender sends it again to the owner of now (never run twice).
                raise WorkerMoved("the group's worker here runs under another lease now")
            if activation is not None:
                if not activation.settled:
                    await activation.wait()  # its record says what was applied
                    continue  # (it may have stopped meanwhile)
                applied = activation.last_applied
                if applied is not None and applied[0] == request_id:
                    return applied[1]  # applied by a dead owner, never answered
                record = activation.record
                if record is not None and request_id in record.applied:
                    raise leader_died(
                        f"the request to group {safe_repr(group)} was applied by an owner "
                        "that died before answering, and its reply was not kept"
                    )
            if task.admit_nowait(job) or await task.admit(job):
                return await self.listen(job, task, current)
            if routed:
                raise WorkerMoved("the worker stopped while the request waited for room")

    def stop_lost(self, group: Hashable) -> None:
        """*group*'s lease was lost: its worker stops now, cancelled and unsaved."""
        owner: Owner | None = self.core.owners.get(group)
        if isinstance(owner, WorkerTask):
            owner.stop("unsaved", override=True)  # never saved over its successor
            owner.stop_nowait("unsaved", cancel=True)

    def has_worker(self, group: Hashable) -> bool:
        """Whether *group* has a worker here now."""
        return isinstance(self.core.owners.get(group), WorkerTask)


def lease_worker(task: WorkerTask, lease: WorkerLease) -> None:
    """*task*, activating now, runs under *lease*: its saves carry the lease's token."""
    activation = task.activation
    if activation is not None and activation.lease is None and task.state is ACTIVATING:
        activation.lease = lease


def reroute_placed(core: Core, placement: Placement, job: AskJob) -> None:
    """An ask whose worker stopped under it: a routed one goes back to its sender
    (`WorkerMoved`); a local one is asked again through *placement*."""
    if job.routed:
        job.fail(WorkerMoved("the group's worker stopped here: send the request again"))
        return
    core.nursery.start_soon(_ask_again, placement, job)


async def _ask_again(placement: Placement, job: AskJob) -> None:
    if job.done.is_set() or job.abandoned:
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
