"""What a backend is: the protocol a persist calls to span processes.

A backend (`trio_persist.redis.RedisBackend` is the one shipped) is started
once per persist with ``await nursery.start(backend.serve, persist)``, names
each execution with `Backend.key_of`, and runs it once across processes with
`Backend.run`. When the persist closes (or its block is cancelled) ``serve``
is cancelled, and cleans up after itself. It sees the persist only as an
`Observed` (its name, statistics and snapshot).

A backend may also *place* the persist's virtual workers across processes
(`place_workers`, optional): the persist then gives every ``ask`` to the
returned `Placement`, which either holds the group's worker lease here and
asks through `LocalWorkers`, or routes the request to the process that holds
it. docs/architecture.md tells the whole path.

A backend may also refuse new work at the door (`Admitting`): the persist asks
it before it builds a flight for a call that would go through the backend, so
that an overloaded backend sheds load for the price of a raised exception;
and say, without refusing anything, whether it would (`Admitting.overloaded`,
behind `trio_persist.Persist.overloaded`: a service's door check).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from contextlib import AbstractContextManager
from typing import Any, NamedTuple, Protocol, cast

import trio

from ._exceptions import InfiniteRecursion
from ._stats import Observed
from ._text import safe_repr

__all__ = [
    "CHAIN_LIMIT",
    "NO_CHAIN",
    "Admitting",
    "Backend",
    "Chain",
    "LocalWorkers",
    "Placement",
    "WorkerLease",
    "check_backend",
    "cycle_error",
    "overload_check_of",
    "placement_of",
    "refusal_of",
]

_METHODS = ("serve", "key_of", "run")

CHAIN_LIMIT = 256
"""The most groups a routed request's chain names (`LocalWorkers.chain_for`):
those waiting for it, in every process it passed. Nested asks across
processes deeper than this are refused, and so is a request this many groups
wait for at once (one flight many workers joined); docs/redis.md."""


class Chain(NamedTuple):
    """Who waits, in any process, for the execution a routed request leads to:
    the *groups* of the executions waiting for it (their digests, at most
    `CHAIN_LIMIT`), and the *workers* among them that hold a worker lease
    (the lease's id, `WorkerLease.name`: one worker's tenure of its group).

    A worker serves its requests one at a time, so a flight standing in here
    for a worker elsewhere (its request routed there) waits for whatever that
    worker serves: a call from an execution whose chain names that worker
    must not join or queue behind it (`InfiniteRecursion`)."""

    groups: tuple[str, ...] = ()
    workers: tuple[str, ...] = ()


NO_CHAIN = Chain()
"""The chain of a request nobody waits for in another process."""


def cycle_error(group: Hashable) -> InfiniteRecursion:
    """The error of a request to *group* that would wait for itself across processes."""
    return InfiniteRecursion(
        f"asking group {safe_repr(group)} would wait for an execution that is "
        "waiting for this call (a cycle of groups across processes)"
    )


class Backend(Protocol):
    """The methods a persist calls on its ``backend=``."""

    async def serve(self, persist: Observed, *, task_status: trio.TaskStatus[None] = ...) -> None:
        """Run the backend's connections and background work until cancelled.

        Cancelled when the persist closes; it cleans up (bounded) before it ends.
        """

    def key_of(self, group: Hashable, request: Any, group_is_request: bool) -> str | None:
        """The cluster-wide key of one execution, or None to execute locally."""

    async def run(
        self,
        key: str,
        base: Any,
        request: Any,
        resolve: Callable[[Any, Any], Awaitable[Any]],
        *,
        linger: float = 0.0,
    ) -> Any:
        """Execute ``resolve(base, request)`` once across processes for *key*.

        A success committed less than *linger* seconds ago answers at once.
        """


class Admitting(Protocol):
    """The optional methods of a backend that can refuse new work at the door."""

    def refusal(self) -> Exception | None:
        """An error for a call that would start on the backend now, if the backend
        refuses it (overloaded), else None; the call then goes to `Backend.run`.

        Synchronous, cheap, never a checkpoint: the persist asks it before it
        builds anything for the call, and raises the error after a checkpoint.
        """

    def overloaded(self) -> bool:
        """Whether `refusal` would refuse a new call now, asked without refusing,
        counting or letting in anything.

        Synchronous, O(1), never a checkpoint: a service asks it (through
        `trio_persist.Persist.overloaded`) before it spends anything on a request.
        """
        ...


def overload_check_of(backend: Backend | None) -> Callable[[], bool] | None:
    """*backend*'s `Admitting.overloaded`, or None if it has none."""
    check = getattr(backend, "overloaded", None)
    return cast("Callable[[], bool]", check) if callable(check) else None


def refusal_of(backend: Backend | None) -> Callable[[], Exception | None] | None:
    """*backend*'s `Admitting.refusal`, or None if it has none."""
    refusal = getattr(backend, "refusal", None)
    return cast("Callable[[], Exception | None]", refusal) if callable(refusal) else None


def check_backend(backend: object) -> Backend | None:
    """Return *backend* typed as a `Backend`, or raise a clear `TypeError`."""
    if backend is None:
        return None
    missing = [name for name in _METHODS if not callable(getattr(backend, name, None))]
    if missing:
        raise TypeError(
            "backend must be None or a trio-persist backend such as "
            f"trio_persist.redis.RedisBackend, got {type(backend).__name__} "
            f"(it has no {', '.join(missing)})"
        )
    return backend  # type: ignore[return-value]


class WorkerLease(Protocol):
    """The lease under which this process runs one group's worker."""

    @property
    def token(self) -> int:
        """Its fencing token: every save of the worker's state carries it."""
        ...

    @property
    def name(self) -> str:
        """Its id (32 hex digits, unique to this tenure of the group): what a
        `Chain` names the worker by."""
        ...

    def valid(self) -> bool:
        """Whether the lease is surely still held now (a durable reply needs it)."""
        ...


class LocalWorkers(Protocol):
    """What a persist offers a backend that places its workers (the engine's side)."""

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
        """Ask *group*'s worker in this process, activating it under *lease*.

        A request whose id the loaded record lists as applied is answered from
        the record, not run again. A *routed* request (from another process)
        whose worker stops under it raises `~trio_persist.WorkerMoved`. A
        *resolving* one (a routed `resolve`) never activates a worker (no
        worker here: `~trio_persist.WorkerMoved`); with *join* it joins an
        identical request queued at a static worker. A routed request's
        *chain* (its sender's, see `chain_for`) goes on with it, to the asks
        its execution makes; `~trio_persist.InfiniteRecursion` if the group's
        worker here waits for one of those groups or workers.
        """

    def chain_for(self, group: Hashable, digest: str) -> Chain:
        """The chain to send with a request to *group* (digest *digest*) from
        the calling task's execution: its own owner, the owners waiting for it
        here, and the chains their requests came with from other processes
        (empty outside any execution).

        Raises:
            trio_persist.InfiniteRecursion: *group* is one of them (the request
                would wait for itself), or they are more than `CHAIN_LIMIT`.
        """
        ...

    def standing_in(self, worker: str) -> AbstractContextManager[None]:
        """Inside the block, the calling task's owner (a flight, or a worker
        whose execution resolves a group owned elsewhere) waits for the worker
        named *worker* (`WorkerLease.name`: its request was routed there): a
        call from an execution whose chain names that worker is refused
        rather than joining or queueing behind that owner."""
        ...

    def stop_lost(self, group: Hashable) -> None:
        """*group*'s lease was lost: stop its worker now, cancelled, unsaved."""

    def has_worker(self, group: Hashable) -> bool:
        """Whether *group* has a worker in this process now."""
        ...


class Placement(Protocol):
    """A backend's placement of virtual workers (what `place_workers` returns)."""

    async def ask(
        self, group: Hashable, request: Any, default: Callable[[], Any] | None, request_id: str
    ) -> Any:
        """Deliver *request* to *group*'s worker, wherever it lives; return its reply."""

    async def resolve_elsewhere(
        self,
        group: Hashable,
        request: Any,
        request_id: str,
        *,
        share: bool,
        spawn_worker: bool = False,
    ) -> tuple[Any] | None:
        """Deliver a `resolve` of *group* to its worker in another process:
        ``(reply,)``, or None when no other process holds its worker lease
        (resolve here). With *share* it may join an identical queued request;
        a shared call without *spawn_worker* may be left to the backend's
        `Backend.run`, which then sends it to the worker itself (None)."""

    async def claim(self, group: Hashable) -> WorkerLease:
        """*group*'s worker lease for this process (held already, or won now).

        Raises:
            trio_persist.NoWorker: another process owns the group's worker.
        """
        ...

    def ended(self, group: Hashable) -> None:
        """*group*'s worker here ended and nothing took its place: release its lease."""


def placement_of(backend: Backend | None, local: LocalWorkers) -> Placement | None:
    """The placement *backend* offers for *local*'s workers, or None (per process)."""
    place = getattr(backend, "place_workers", None)
    if place is None:
        return None
    placement: Placement | None = place(local)
    return placement
