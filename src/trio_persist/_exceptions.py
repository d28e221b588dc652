"""Every error trio-persist raises, one class each.

Each subclasses what a user would already catch: `PersistClosed` is a
`trio.ClosedResourceError`, `InfiniteRecursion` a `RecursionError`, and all of
them are `PersistError`.
"""

from __future__ import annotations

import trio


class PersistError(Exception):
    """Base class of every error raised by trio-persist itself.

    Errors raised by a device are not wrapped: a listener gets the device's own
    exception.
    """


class LeaderDied(PersistError):
    """The execution a caller was waiting for ended without an outcome.

    Raised only when it cannot be retried: the persist closed under a caller
    that waits from outside it, the device crashed with a `BaseException` that
    is not an `Exception` (the crash is this error's ``__cause__``), a worker
    serving the request crashed, or a remote leader vanished more often than the
    retry bound allows.
    """


class InfiniteRecursion(PersistError, RecursionError):
    """A resolve would wait for an execution that is waiting for it.

    Raised at once, instead of deadlocking, when a device resolves its own group
    (directly, or through a cycle of groups waiting for each other) and the
    persist was opened with ``allow_infinite=False``. With
    ``RedisBackend(workers="cluster")`` a cycle through other processes raises it
    too (closed by a request sent, or by a call that would join a flight on its
    way), and so do asks nested through other processes more than 256 groups
    deep (docs/redis.md).
    """


class PersistClosed(PersistError, trio.ClosedResourceError):
    """The persist's ``async with`` block has been left (or is being left)."""


class RemoteError(PersistError):
    """An execution in another process failed.

    Its ``str()`` holds the original exception's type name and message;
    ``type_name`` and ``message`` hold them separately.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str]]:
        return (type(self), (self.type_name, self.message))


class ActivationFailed(PersistError):
    """A worker could not be activated for `Persist.ask`: loading its state failed.

    Raised to every ``ask`` waiting for that activation; the failure (the
    store's error, such as `CorruptResult` or an `OSError`, or what the
    device's ``restore`` hook or ``default`` raised) is its ``__cause__``.
    Nothing was started and the group is free: the next ``ask`` tries again.
    """


class NoWorker(PersistError, LookupError):
    """`Persist.ask` found nothing to activate a worker from.

    The group has no live worker, no saved state (in the store, or from the
    device's ``restore`` hook), and the call gave no ``default``. The message
    names the group.
    """


class SaveFailed(PersistError):
    """With ``durable=True``, the new state of a request could not be saved.

    The request fails with this error (the store's error is its
    ``__cause__``) and its worker goes on from its last saved state: the
    change is not applied.
    """


class GroupTaken(PersistError):
    """`Registry.hold` was asked for a group that already has an owner."""


class BackendUnavailable(PersistError, ConnectionError):
    """The backend (Redis) did not answer within its timeout.

    Raised to callers within that bound instead of leaving them waiting; the
    backend reconnects by itself when the server is back. With
    ``fallback="local"`` the call executes locally instead.
    """


class CorruptResult(PersistError, ValueError):
    """A result read from the backend, or a state read from a store, cannot be
    trusted or understood.

    Garbage in a result key or a state file, a pickle with no signing key
    configured, a signature that does not match, a state sealed for another
    group: nothing is unpickled unless its HMAC checks out.
    """


class StaleOwner(PersistError):
    """A store refused a save: a newer owner of the group has saved since.

    Each save that carries a fencing token is compared with the token of the
    state it would replace; a lower one means this process no longer owns the
    group (its lease passed on while it stalled), so its state must not
    overwrite its successor's. ``token`` is the refused save's token and
    ``stored`` the newer one.
    """

    def __init__(self, message: str, token: int, stored: int) -> None:
        super().__init__(message)
        self.token = token
        self.stored = stored

    def __reduce__(self) -> tuple[type[StaleOwner], tuple[str, int, int]]:
        return (type(self), (str(self), self.token, self.stored))


class WorkerMoved(LeaderDied):
    """A request routed to a worker's owner found the group owned elsewhere now.

    Internal to a backend that places workers across processes: the caller's
    process routes the request again (to the group's new owner). A user never
    sees it.
    """
