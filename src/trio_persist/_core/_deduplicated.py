"""``@trio_persist.deduplicated``: a function deduplicated in any Trio run, with no block.

A decorated function needs no ``async with``: each Trio run gets persists of
its own, opened on first use. One persist per run serves every decorated
function without a backend (so one monitor, one collector and one recursion
check cover them all, and a call from one decorated function into another that
waits for it is seen); each backend factory gets a persist of its own per run,
because a persist has one backend. A function's ``linger`` is its own.

Each persist is opened (``open_persist()``, no device) in a Trio system task, so
no caller owns it: an execution belongs to no caller, and outlives the one
that started it while anyone else waits. "The run ends" for a system task when
the main task has returned: Trio then cancels system tasks, and the persist's
block closes as any block does (its backend's ``serve``, which runs in the
persist's own nursery inside that task, cleans up under its own bounded,
shielded scope). Nothing is kept between runs: what a run holds lives in
`trio.lowlevel.RunVar` values, so two runs in a row, or at once on two threads,
share nothing.

A system task must not raise (Trio turns that into `trio.TrioInternalError`),
so the task that owns a persist logs a failure of it, lets the next call open
a new one, and answers the callers waiting for it; and executions run with
``KeyboardInterrupt`` protection, so Ctrl-C reaches the main task as usual
instead of landing inside a decorated function.
"""

from __future__ import annotations

import copy
import functools
import inspect
import sys
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any, Concatenate, Generic, NoReturn, ParamSpec, TypeAlias, TypeVar, overload

import attrs
import trio

from .._logging import logger
from .._stats import FunctionStatistics
from ._open import open_persist
from ._options import check_linger
from ._persist import Persist
from ._wrapped import WrappedFunction, function_name
from ._wrapping import CallWrapped, register_function

__all__ = ["Deduplicated", "DeduplicatedMethod", "deduplicated"]

P = ParamSpec("P")
Q = ParamSpec("Q")
V = TypeVar("V")
S = TypeVar("S")

# A string: an alias made at import would keep the engine's module in its name.
AnyPersist: TypeAlias = "Persist[NoReturn, NoReturn, NoReturn]"

# This run's persists for decorated functions, by backend factory (None: none).
_PERSISTS: trio.lowlevel.RunVar[dict[object, _Owned]] = trio.lowlevel.RunVar(
    "trio_persist.deduplicated"
)


@attrs.define(eq=False)
class _Owned:
    """A persist of this run, owned by a system task (being opened, open, or failed)."""

    opened: trio.Event = attrs.field(factory=trio.Event)
    persist: AnyPersist | None = None
    error: BaseException | None = None


@attrs.frozen
class _Options:
    """A decorated function's checked options (see `deduplicated`)."""

    name: str | None
    share: bool
    linger: float
    backend: object
    instance_key: Callable[[Any], Hashable] | None

    @classmethod
    def check(
        cls,
        name: object,
        share: object,
        linger: object,
        backend: object,
        instance_key: object,
    ) -> _Options:
        if not isinstance(share, bool):
            raise TypeError(f"share must be True or False, got {type(share).__name__}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be None or a str, got {type(name).__name__}")
        if instance_key is not None and not callable(instance_key):
            raise TypeError(
                f"instance_key must be None or a callable, got {type(instance_key).__name__}"
            )
        return cls(name, share, check_linger(linger), _check_backend(backend), instance_key)


@attrs.frozen(eq=False)
class _InRun:
    """What a decorated function has in one run: its registration, and what calls it."""

    persist: AnyPersist
    function: WrappedFunction
    call: CallWrapped


async def _own(persists: dict[object, _Owned], factory: object, owned: _Owned) -> None:
    """The system task that owns one persist of this run, until the run ends.

    Never raises but cancellation (Trio does not let a system task raise): a
    persist that cannot open, or fails later, is logged, its waiting callers
    get the error, and the next call opens a new one.
    """
    try:
        backend = None if factory is None else factory()  # type: ignore[operator]
        async with open_persist(backend=backend) as persist:
            owned.persist = persist
            owned.opened.set()
            await trio.sleep_forever()
    except Exception as exc:
        owned.error = exc
        if owned.persist is not None:
            logger.error("the persist of deduplicated functions failed", exc_info=exc)
    finally:
        if persists.get(factory) is owned:
            del persists[factory]
        owned.opened.set()


async def _run_persist(factory: object) -> AnyPersist:
    """This run's persist for *factory*'s backend, opened if need be (a checkpoint)."""
    try:
        persists = _PERSISTS.get()
    except LookupError:
        persists = {}
        _PERSISTS.set(persists)
    owned = persists.get(factory)
    if owned is None:
        owned = persists[factory] = _Owned()
        trio.lowlevel.spawn_system_task(_own, persists, factory, owned, name=_own.__qualname__)
    await owned.opened.wait()
    if owned.persist is None or owned.persist.closed:
        error = owned.error
        if error is None:  # the run is ending: its persists are closing
            raise trio.RunFinishedError("the run is ending: deduplicated functions are closed")
        raise error
    return owned.persist


def _check_function(fn: object) -> None:
    if isinstance(fn, (staticmethod, classmethod)):
        raise TypeError(
            "put @deduplicated below @staticmethod or @classmethod, on the function itself"
        )
    if not callable(fn):
        raise TypeError(f"@deduplicated decorates an async function, got {type(fn).__name__}")
    if not (
        inspect.iscoroutinefunction(fn)
        or inspect.iscoroutinefunction(type(fn).__call__)  # an object with an async __call__
    ):
        name = getattr(fn, "__qualname__", type(fn).__name__)
        raise TypeError(
            f"@deduplicated needs an async function, and {name} is not one: make it "
            "async def (for blocking work, await trio.to_thread.run_sync(...) inside it)"
        )


def _check_backend(backend: object) -> object:
    if backend is None:
        return None
    if callable(getattr(backend, "serve", None)) and not isinstance(backend, type):
        raise TypeError(
            "backend= takes what makes a backend, not a backend: a backend serves one "
            "persist, and a decorated function gets one per Trio run; pass the class or "
            "a function, e.g. backend=functools.partial(RedisBackend, url)"
        )
    if not callable(backend):
        raise TypeError(f"backend must be None or a callable, got {type(backend).__name__}")
    return backend


def _mark_async(obj: object) -> None:
    """Let frameworks that ask whether *obj* is an async function (Quart, before it
    decides to run a view in a thread) see that it is: `inspect.iscoroutinefunction`
    from Python 3.12, `asyncio.iscoroutinefunction` before (its marker needs asyncio
    imported: only there, and only once something is decorated)."""
    if sys.version_info >= (3, 12):  # pragma: no cover - Python 3.12 and later
        inspect.markcoroutinefunction(obj)  # type: ignore[arg-type,unused-ignore]
    else:
        import asyncio.coroutines

        obj._is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]


def _protected(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """*fn*, run with KeyboardInterrupt protection (Ctrl-C goes to the main task)."""

    @trio.lowlevel.enable_ki_protection
    async def protected(*args: Any, **kwargs: Any) -> Any:
        return await fn(*args, **kwargs)

    return protected


class Deduplicated(Generic[P, V]):
    """An async function deduplicated in any Trio run (made by `deduplicated`, with
    the same arguments).

    Call it as the function it decorates (same signature, same result): concurrent
    identical calls share one execution. Used as a method, it is bound like one
    (a `DeduplicatedMethod`).
    """

    # Copied from the function (`functools.update_wrapper`).
    __wrapped__: Callable[P, Awaitable[V]]
    __name__: str
    __qualname__: str

    def __init__(
        self,
        fn: Callable[P, Awaitable[V]],
        *,
        linger: float = 0.0,
        share: bool = True,
        backend: Callable[[], object] | None = None,
        name: str | None = None,
        instance_key: Callable[[Any], Hashable] | None = None,
    ) -> None:
        options = _Options.check(name, share, linger, backend, instance_key)
        _check_function(fn)
        functools.update_wrapper(self, fn)
        _mark_async(self)
        self._fn = _protected(fn)
        self._name = function_name(fn, options.name)
        self._share = options.share
        self._linger = options.linger
        self._backend = options.backend
        self._instance_key = options.instance_key
        self._method = False  # accessed through its class: args[0] is the instance
        self._run: trio.lowlevel.RunVar[_InRun | None] = trio.lowlevel.RunVar(
            self._name, default=None
        )

    def __repr__(self) -> str:
        return f"<trio_persist.deduplicated {self._name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, V]:
        """Call the function, sharing an identical call in flight (see `deduplicated`).

        Raises:
            RuntimeError: called outside a Trio run.
        """
        here = self._here()
        if here is None or here.persist.closed:  # the first call in this run
            return self._first(args, kwargs, self._method)
        return here.call(here.function, args, kwargs, self._share, self._method)

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> Deduplicated[P, V]: ...

    @overload
    def __get__(
        self: Deduplicated[Concatenate[S, Q], V], instance: S, owner: type[Any] | None = None
    ) -> DeduplicatedMethod[Q, V]: ...

    def __get__(self, instance: Any, owner: type[Any] | None = None) -> Any:
        if instance is None:  # through the class: Class.method(instance, ...)
            unbound = copy.copy(self)
            unbound._method = True
            return unbound
        return DeduplicatedMethod(self, instance)

    def statistics(self) -> FunctionStatistics:
        """Return this function's counts in the current Trio run (zeros before its
        first call in the run).

        Raises:
            RuntimeError: called outside a Trio run.
        """
        here = self._here()
        if here is None:
            return WrappedFunction(self._name, self._fn, self._linger).statistics()
        return here.function.statistics()

    def forget(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Make the next call with these arguments start afresh, as `Persist.forget`
        does for its group: a running execution goes on for its callers (nobody
        new joins it), a lingering result is dropped. Never blocks.

        Returns:
            Whether the call had an execution running or a result lingering.

        Raises:
            TypeError: an argument cannot be encoded.
            RuntimeError: called outside a Trio run.
        """
        return self._forget(args, kwargs, self._method)

    async def persist(self) -> Persist[NoReturn, NoReturn, NoReturn]:
        """Return the persist this function runs in during the current Trio run,
        opening it if need be (always a checkpoint).

        Every decorated function without a backend shares it, so one monitor
        serves them all: ``await nursery.start((await fn.persist()).serve_monitor,
        path)``; ``PersistCollector(await fn.persist())`` exports their metrics.
        """
        return (await self._enter()).persist

    # -- in a run ------------------------------------------------------------------

    def _here(self) -> _InRun | None:
        try:
            return self._run.get()
        except RuntimeError:
            raise RuntimeError(
                f"{self._name} is deduplicated in a Trio run: call it inside trio.run"
            ) from None

    async def _enter(self) -> _InRun:
        persist = await _run_persist(self._backend)
        here = self._here()
        if here is None or here.persist is not persist:
            function, call = register_function(
                persist, self._fn, self._name, self._linger, self._instance_key
            )
            here = _InRun(persist, function, call)
            self._run.set(here)
        return here

    async def _first(self, args: Any, kwargs: Any, method: bool) -> Any:
        here = await self._enter()
        return await here.call(here.function, args, kwargs, self._share, method)

    def _forget(self, args: Any, kwargs: Any, method: bool) -> bool:
        here = self._here()
        if here is None:
            return False
        function = here.function
        named = function.name_method_call if method else function.name_call
        return here.persist.forget(named(args, kwargs)[0])


class DeduplicatedMethod(Generic[P, V]):
    """A `Deduplicated` method bound to an instance (``instance.method``).

    Calls are grouped by the instance's identity (calls on one instance share an
    execution, calls on two never do), unless ``instance_key=`` names instances
    by a value instead.
    """

    __slots__ = ("__self__", "_is_coroutine", "_is_coroutine_marker", "_of")

    def __init__(self, of: Deduplicated[Any, V], instance: object) -> None:
        self._of = of
        self.__self__ = instance
        _mark_async(self)

    def __repr__(self) -> str:
        return f"<bound {self._of!r} of {self.__self__!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, V]:
        """Call the method, sharing an identical call in flight on the same instance."""
        of = self._of
        here = of._here()
        if here is None or here.persist.closed:
            return of._first((self.__self__, *args), kwargs, True)
        return here.call(here.function, (self.__self__, *args), kwargs, of._share, True)

    def statistics(self) -> FunctionStatistics:
        """Return the method's counts in the current Trio run (all instances)."""
        return self._of.statistics()

    def forget(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """As `Deduplicated.forget`, for a call on this instance."""
        return self._of._forget((self.__self__, *args), kwargs, True)

    async def persist(self) -> Persist[NoReturn, NoReturn, NoReturn]:
        """As `Deduplicated.persist`."""
        return await self._of.persist()


@overload
def deduplicated(fn: Callable[P, Awaitable[V]], /) -> Deduplicated[P, V]: ...


@overload
def deduplicated(
    *,
    linger: float = 0.0,
    share: bool = True,
    backend: Callable[[], object] | None = None,
    name: str | None = None,
    instance_key: Callable[[Any], Hashable] | None = None,
) -> Callable[[Callable[P, Awaitable[V]]], Deduplicated[P, V]]: ...


def deduplicated(
    fn: Callable[P, Awaitable[V]] | None = None,
    /,
    *,
    linger: float = 0.0,
    share: bool = True,
    backend: Callable[[], object] | None = None,
    name: str | None = None,
    instance_key: Callable[[Any], Hashable] | None = None,
) -> Deduplicated[P, V] | Callable[[Callable[P, Awaitable[V]]], Deduplicated[P, V]]:
    """Deduplicate an async function in any Trio run: ``@deduplicated`` or
    ``@deduplicated(linger=..., share=..., backend=..., name=...)``.

    Inside any ``trio.run``, concurrent identical calls share one execution,
    with `Persist.resolve`'s semantics: every caller gets the same result
    object, or the same exception in its own task; the execution belongs to
    no caller (one caller's cancellation, the first one's included, never
    cancels it while another waits), and the last caller to leave cancels it.
    It needs no block: the run's persist is opened on the first call and closed
    when the run ends (see the tutorial). Calls are grouped by the function's
    name and its arguments, as `Persist.wrap` groups them: every argument must
    be one the default grouper encodes (`TypeError` at the call otherwise);
    frozen dataclass and attrs instances are encoded by their type and fields
    (docs/concepts.md). A recursive call that would wait for itself raises
    `InfiniteRecursion`.

    On a method, calls are grouped by the instance's identity (two instances
    never share an execution, and such calls never go through a backend);
    ``instance_key=lambda self: ...`` names instances by a value instead (calls
    on instances with the same key share one, across processes too).

    The decorated function has the same signature, plus ``statistics()`` (its
    counts in the current run), ``forget(*args, **kwargs)`` (the next call
    with these arguments starts afresh) and ``await persist()`` (the run's
    persist: serve its monitor or export its metrics).

    Args:
        fn: The async function (or method) to deduplicate.
        linger: Seconds a success keeps answering identical calls after its
            execution ended (0: not at all); failures never linger.
        share: False for a function that writes: every call executes on its
            own, one after another per group of arguments.
        backend: What makes a backend, called once per run (a backend serves
            one persist): for example ``functools.partial(RedisBackend, url)``.
            Functions given the same one share a persist in each run.
        name: The name calls are grouped under, instead of the function's
            module and qualified name (it must mean one function in a run, and
            in every process on a backend).
        instance_key: For a method: the value naming an instance in the group,
            instead of its identity (it must be one the default grouper encodes).

    Raises:
        TypeError: *fn* is not an async function (a plain function, say), has
            no qualified name (a ``functools.partial``) and no *name*, or an
            option has the wrong type.
        ValueError: *linger* is negative or not finite.
    """

    _Options.check(name, share, linger, backend, instance_key)  # now, not when applied

    def decorate(fn: Callable[P, Awaitable[V]]) -> Deduplicated[P, V]:
        return Deduplicated(
            fn,
            linger=linger,
            share=share,
            backend=backend,
            name=name,
            instance_key=instance_key,
        )

    if fn is None:
        return decorate
    return decorate(fn)
