"""Routing for `Persist.ask`: a request goes to its group's worker, activated if need be.

An ask never runs as a flight. Its group's owner decides where it waits:

* no owner: a worker is registered for the group at once and launched to
  load its state (`Supervisor.activate`): activation and delivery are one
  step, with no checkpoint between the lookup and the registration, so
  concurrent first asks share that one activation;
* a worker (live, activating, or stopping while it saves): the ask queues in
  its inbox; a stopping worker gives it to the group's next worker;
* a flight (a ``resolve`` running the group): the ask waits for the
  worker that takes the group over once the flight's current execution ends,
  with what was queued behind it (`Flight.hand_to`), activated then.

Everything here is synchronous: the facade awaits only the answer, or room
in a full inbox.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from ._flight import Flight
from ._job import Owner
from ._supervisor import Supervisor
from ._worker import WorkerTask

__all__ = ["worker_for"]


def worker_for(
    supervisor: Supervisor,
    group: Hashable,
    owner: Owner | None,
    default: Callable[[], Any] | None,
    *,
    static: bool | None = None,
    timeout: float | None = None,
    nested: bool = False,
) -> WorkerTask:
    """The worker an ask for *group* waits at, given its *owner* now; activating one
    (with *default*, and the *static* and *timeout* options) if it has none (at
    once if *nested*, or launching one that waits for room: see `Supervisor.activate`).

    An activating worker takes *default* if no earlier caller offered one.
    Never checkpoints.
    """
    if owner is None:
        return supervisor.activate(
            supervisor.activating(group, default, static=static, timeout=timeout), nested=nested
        )
    if isinstance(owner, WorkerTask):
        task = owner
        if nested:
            supervisor.hurry(task)
    else:
        assert isinstance(owner, Flight)
        task = owner.successor or owner.hand_to(
            supervisor.activating(group, default, static=static, timeout=timeout)
        )
    activation = task.activation
    if activation is not None and not activation.settled:
        activation.offer(default)
    return task
