"""Opening a persist: `open_persist` checks its options and returns the block
that holds the persist's store, its nursery and its closing.

The block's exceptions propagate as themselves, never wrapped in a group the
user did not open: the rules are in `_opened`.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Hashable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, NoReturn, TypeVar, overload

import trio

from .._backend import Backend, check_backend
from .._store import Store, check_store, open_store
from ._device import NO_DEVICE, DeviceHooks, DeviceLike, adapt_device
from ._options import AwaitMode, ErrorStrategy, PersistOptions
from ._persist import Persist, close

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["open_persist"]

B = TypeVar("B")
R = TypeVar("R", contravariant=True)
T = TypeVar("T", covariant=True)


def _only_cancelled(error: BaseException) -> bool:
    if isinstance(error, BaseExceptionGroup):
        return error.split(trio.Cancelled)[1] is None
    return isinstance(error, trio.Cancelled)


def _is_exit(error: BaseException) -> bool:
    if isinstance(error, BaseExceptionGroup):
        return error.subgroup((KeyboardInterrupt, SystemExit)) is not None
    return isinstance(error, (KeyboardInterrupt, SystemExit))


@asynccontextmanager
async def _store_held(store: Store | None) -> AsyncIterator[Store | None]:
    """*store* held open for the persist's life (nothing without one)."""
    if store is None:
        yield None
        return
    async with open_store(store) as opened:
        yield opened


@overload
def open_persist(
    device: DeviceLike[B, R, T],
    *,
    await_inprogress: AwaitMode = True,
    worker_timeout: float | None = 10.0,
    static_worker: bool = False,
    error_strategy: ErrorStrategy = "ignore",
    allow_infinite: bool = False,
    max_workers: int | None = None,
    backend: object = None,
    worker_inbox: int = 64,
    shutdown_grace: float | None = 5.0,
    ignore_keys: Iterable[Hashable] = (),
    linger: float = 0.0,
    store: object = None,
    checkpoint_interval: float | None = None,
    durable: bool = False,
) -> AbstractAsyncContextManager[Persist[B, R, T]]: ...


@overload
def open_persist(
    *,
    await_inprogress: AwaitMode = True,
    worker_timeout: float | None = 10.0,
    static_worker: bool = False,
    error_strategy: ErrorStrategy = "ignore",
    allow_infinite: bool = False,
    max_workers: int | None = None,
    backend: object = None,
    worker_inbox: int = 64,
    shutdown_grace: float | None = 5.0,
    ignore_keys: Iterable[Hashable] = (),
    linger: float = 0.0,
) -> AbstractAsyncContextManager[Persist[NoReturn, NoReturn, NoReturn]]: ...


def open_persist(
    device: DeviceLike[Any, Any, Any] | None = None,
    *,
    await_inprogress: AwaitMode = True,
    worker_timeout: float | None = 10.0,
    static_worker: bool = False,
    error_strategy: ErrorStrategy = "ignore",
    allow_infinite: bool = False,
    max_workers: int | None = None,
    backend: object = None,
    worker_inbox: int = 64,
    shutdown_grace: float | None = 5.0,
    ignore_keys: Iterable[Hashable] = (),
    linger: float = 0.0,
    store: object = None,
    checkpoint_interval: float | None = None,
    durable: bool = False,
) -> AbstractAsyncContextManager[Persist[Any, Any, Any]]:
    """Open a persist for *device* (or, without one, for wrapped functions only);
    every flight and worker lives inside the block.

    Leaving the block stops every worker (each runs its ``on_idle`` first,
    bounded by *shutdown_grace*), cancels every flight, and frees every group;
    callers still waiting from outside get `LeaderDied`, and later calls get
    `PersistClosed`. An exception from the block propagates as itself, not
    wrapped in an exception group, even if a task of the persist failed at the
    same time (that failure is then its ``__context__``). A backend that
    cannot start raises its own error from ``open_persist`` (the block never
    runs); a task of the persist that fails while the block runs cancels the
    block, and its failure propagates.

    Args:
        device: An ``async def resolve(base, request)``, or an object with an
            async ``resolve`` method and optional hooks (see the concepts page).
            Without one, the persist runs functions wrapped with `Persist.wrap`
            only (`Persist.resolve` and workers are a `TypeError`), and is named
            ``functions``.
        await_inprogress: True deduplicates every call; ``"named"`` only when
            the device has a ``group`` hook; False never (each call executes on
            its own and nothing is registered).
        worker_timeout: Seconds a worker may wait for a request before it stops
            (None: never).
        static_worker: Whether workers keep their state rather than advance it.
        error_strategy: ``"ignore"``: a worker whose request fails goes on;
            ``"throw"``: it stops after answering with the error.
        allow_infinite: Execute a recursive resolve directly instead of raising
            `InfiniteRecursion` (the device on the call's own base, in this
            process, for a cycle through other processes too: docs/redis.md).
            A recursive ask is always refused.
        max_workers: Most workers alive at once (None: no limit); one more
            stops the least recently used idle one.
        backend: None (in-process), or a backend such as
            `trio_persist.redis.RedisBackend`.
        worker_inbox: Requests a worker's inbox holds before callers wait.
        shutdown_grace: Seconds each ``on_idle`` may take (None: no bound).
        ignore_keys: Top-level mapping keys the default grouper leaves out of
            ``base`` and ``request``. Calls that differ only there share one
            execution and so one result (a lingering one too, for the whole
            *linger* window, whoever's call made it): pass ``("priv",)`` for
            the original's behaviour only if those keys never change what the
            device returns.
        linger: Seconds a successful result keeps answering identical calls
            after its execution ended (0: not at all). Failures never linger,
            writes (``share=False``) neither; `Persist.forget` drops a lingering
            result; at most 64 MiB of results (estimated) linger at once, the
            oldest going first. Not a cache: there is no per-key configuration.
            With a backend, it holds across processes.
        store: None, or a state store (`trio_persist.stores`, or any object
            with async ``load``, ``save`` and ``delete``): workers' states are
            saved through it when they stop, and `Persist.ask` activates workers from
            it. Entered when the block opens (if it is an async context
            manager) and left after the last save. See
            docs/virtual-workers.md.
        checkpoint_interval: Seconds: a worker's changed state is also saved
            at most this long after it changed, while the worker lives
            (None: only when it stops). Needs a store.
        durable: A worker replies only once the state its request made is
            saved; if the save fails the request fails (`SaveFailed`) and is
            not applied. Needs a store.

    Raises:
        TypeError: an option has the wrong type, or *device* is not a device
            (the message names it).
        ValueError: an option has a wrong value (the message names it).
    """
    options = PersistOptions.check(
        await_inprogress=await_inprogress,
        worker_timeout=worker_timeout,
        static_worker=static_worker,
        error_strategy=error_strategy,
        allow_infinite=allow_infinite,
        max_workers=max_workers,
        worker_inbox=worker_inbox,
        shutdown_grace=shutdown_grace,
        ignore_keys=ignore_keys,
        linger=linger,
        checkpoint_interval=checkpoint_interval,
        durable=durable,
        has_store=store is not None,
    )
    hooks = NO_DEVICE if device is None else adapt_device(device)
    return _opened(hooks, options, check_backend(backend), check_store(store))


@asynccontextmanager
async def _opened(
    hooks: DeviceHooks, options: PersistOptions, backend: Backend | None, store: Store | None
) -> AsyncIterator[Persist[Any, Any, Any]]:
    """The block `open_persist` returns: the persist's store, nursery and closing."""
    body_error: BaseException | None = None
    try:
        async with _store_held(store) as opened, trio.open_nursery() as nursery:
            persist: Persist[Any, Any, Any] = Persist(
                hooks=hooks, options=options, nursery=nursery, backend=backend, store=opened
            )
            try:
                if backend is not None:
                    await nursery.start(backend.serve, persist)
            except BaseException as exc:
                # The backend could not start: its own error is raised from
                # open_persist (below), not wrapped in a group, and the block never runs.
                body_error = exc
                await close(persist)
            else:
                try:
                    yield persist
                except BaseException as exc:
                    # Re-raised below, outside the nursery, so the user's exception is
                    # not wrapped in an ExceptionGroup by a nursery they never opened.
                    body_error = exc
                finally:
                    await close(persist)
    except BaseException as failure:
        # A task of the persist failed. If the block was only cancelled because of
        # that (its error is Cancelled, or a group of nothing else), or the failure
        # is the program exiting (KeyboardInterrupt, SystemExit), the failure
        # propagates; otherwise the block's own exception does, with the failure
        # as its context. Neither is dropped.
        if body_error is None or _only_cancelled(body_error):
            raise
        if _is_exit(failure):
            if failure.__context__ is None:
                failure.__context__ = body_error
            raise
        raise body_error  # noqa: B904 - the context is the point
    if body_error is not None:
        raise body_error
