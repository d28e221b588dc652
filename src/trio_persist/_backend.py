"""What a backend is: the protocol a persist calls to span processes.

A backend (`trio_persist.redis.RedisBackend` is the one shipped) is started
once per persist with ``await nursery.start(backend.serve, persist)``, names
each execution with `Backend.key_of`, and runs it once across processes with
`Backend.run`. When the persist closes (or its block is cancelled) ``serve``
is cancelled, and cleans up after itself. It sees the persist only as an
`Observed` (its name, statistics and snapshot).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Protocol

import trio

from ._stats import Observed

__all__ = ["Backend", "check_backend"]

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
