"""What a backend is: the protocol a persist calls to span processes.

A backend (`trio_persist.redis.RedisBackend` is the one shipped) is started
once per persist with ``await nursery.start(backend.serve, persist)``, names
each execution with `Backend.key_of`, and runs it once across processes with
`Backend.run`. When the persist closes (or its block is cancelled) ``serve``
is cancelled, and cleans up after itself. It sees the persist only as an
`Observed` (its name, statistics and snapshot).

A backend may also refuse new work at the door (`Admitting`): the persist asks
it before it builds a flight for a call that would go through the backend, so
that an overloaded backend sheds load for the price of a raised exception.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Protocol, cast

import trio

from ._stats import Observed

__all__ = ["Admitting", "Backend", "check_backend", "refusal_of"]

_METHODS = ("serve", "key_of", "run")


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
    """The optional method of a backend that can refuse new work at the door."""

    def refusal(self) -> Exception | None:
        """An error for a call that would start on the backend now, if the backend
        refuses it (overloaded), else None; the call then goes to `Backend.run`.

        Synchronous, cheap, never a checkpoint: the persist asks it before it
        builds anything for the call, and raises the error after a checkpoint.
        """


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
